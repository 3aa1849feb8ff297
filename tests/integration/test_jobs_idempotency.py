"""POST /v1/jobs with an Idempotency-Key: a repeat is the same job, never a second one.

No worker runs here, so a job stays queued unless a test moves it in SQL.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from common.contracts.job_kinds import DEMO_COUNTDOWN
from tests.fixtures.api import MakeUser, RegisteredUser
from tests.fixtures.jobs import (
    SUMMARY,
    count_jobs,
    error_locations,
    post_job,
)
from tests.fixtures.problems import assert_problem


class TestIdempotencyKey:
    """The same Idempotency-Key and body give the same job, never a second one."""

    async def test_repeat_answers_200_with_the_same_job(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        key = uuid.uuid4().hex
        first = await post_job(client, user, key=key)
        second = await post_job(client, user, key=key)
        assert first.status_code == 202
        assert second.status_code == 200, second.text
        assert second.json()["id"] == first.json()["id"]
        assert second.headers["location"] == first.headers["location"]

    async def test_params_in_another_order_are_the_same_body(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        key = uuid.uuid4().hex
        first = await post_job(
            client, user, {"kind": DEMO_COUNTDOWN, "params": {"steps": 2, "interval": 1}}, key=key
        )
        second = await post_job(
            client, user, {"kind": DEMO_COUNTDOWN, "params": {"interval": 1, "steps": 2}}, key=key
        )
        assert (first.status_code, second.status_code) == (202, 200)
        assert second.json()["id"] == first.json()["id"]

    async def test_concurrent_repeats_create_exactly_one_job(
        self, client: httpx.AsyncClient, user: RegisteredUser, db_engine: AsyncEngine
    ) -> None:
        key = uuid.uuid4().hex
        responses = await asyncio.gather(*(post_job(client, user, key=key) for _ in range(20)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 19 + [202], [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        assert await count_jobs(db_engine, user.id) == 1

    async def test_same_key_with_another_body_is_422(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        key = uuid.uuid4().hex
        assert (await post_job(client, user, key=key)).status_code == 202
        other = {"kind": DEMO_COUNTDOWN, "params": {"steps": 4, "interval": 0.5}}
        assert_problem(await post_job(client, user, other, key=key), 422)
        assert_problem(await post_job(client, user, SUMMARY, key=key), 422)

    async def test_another_user_may_use_the_same_key(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        alice, bob = await make_user(), await make_user()
        key = uuid.uuid4().hex
        theirs = await post_job(client, alice, key=key)
        mine = await post_job(client, bob, key=key)
        assert (theirs.status_code, mine.status_code) == (202, 202)
        assert mine.json()["id"] != theirs.json()["id"]

    @pytest.mark.parametrize(
        "key", ["k" * 256, "has spaces", "tab\there"], ids=["too-long", "space", "tab"]
    )
    async def test_invalid_key_is_422(
        self, client: httpx.AsyncClient, user: RegisteredUser, key: str
    ) -> None:
        problem = assert_problem(await post_job(client, user, key=key), 422)
        assert ["header", "Idempotency-Key"] in error_locations(problem)

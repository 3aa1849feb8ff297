"""POST /v1/jobs/{id}/cancel: a queued job at once, a running one asked to stop, a
finished one refused.

No worker runs here, so a job stays queued unless a test moves it in SQL.
"""

from __future__ import annotations

from datetime import datetime

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from common.contracts import events
from tests.fixtures.api import MakeUser, RegisteredUser
from tests.fixtures.jobs import JOB_FIELDS, JobBody, UserEvents, read_job, set_job_state
from tests.fixtures.problems import assert_problem


class TestCancel:
    """POST /v1/jobs/{id}/cancel: queued at once, running at its next checkpoint, finished 409."""

    async def test_queued_job_is_cancelled_at_once_with_an_event(
        self, client: httpx.AsyncClient, user: RegisteredUser, queued_job: JobBody,
        user_events: UserEvents,
    ) -> None:  # fmt: skip
        response = await client.post(f"/v1/jobs/{queued_job['id']}/cancel", headers=user.headers)
        assert response.status_code == 200, response.text
        cancelled = response.json()
        assert set(cancelled) == JOB_FIELDS
        assert cancelled["state"] == "cancelled"
        assert datetime.fromisoformat(cancelled["finished_at"]) >= datetime.fromisoformat(
            cancelled["created_at"]
        )
        types = [e["type"] for _, e in await user_events() if e["job_id"] == queued_job["id"]]
        assert types == [events.JOB_QUEUED, events.JOB_CANCELLED]
        fetched = await client.get(f"/v1/jobs/{queued_job['id']}", headers=user.headers)
        assert fetched.json() == cancelled

    async def test_cancel_twice_is_409(
        self, client: httpx.AsyncClient, user: RegisteredUser, queued_job: JobBody
    ) -> None:
        url = f"/v1/jobs/{queued_job['id']}/cancel"
        assert (await client.post(url, headers=user.headers)).status_code == 200
        assert_problem(await client.post(url, headers=user.headers), 409)

    async def test_running_job_is_asked_to_stop(
        self, client: httpx.AsyncClient, user: RegisteredUser, queued_job: JobBody,
        db_engine: AsyncEngine, user_events: UserEvents,
    ) -> None:  # fmt: skip
        await set_job_state(db_engine, queued_job["id"], "running")
        response = await client.post(f"/v1/jobs/{queued_job['id']}/cancel", headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "running"
        row = await read_job(db_engine, queued_job["id"])
        assert row["cancel_requested"] is True
        assert row["state"] == "running"
        assert events.JOB_CANCELLED not in [e["type"] for _, e in await user_events()]

    @pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
    async def test_finished_job_is_409_and_unchanged(
        self, client: httpx.AsyncClient, user: RegisteredUser, queued_job: JobBody,
        db_engine: AsyncEngine, state: str,
    ) -> None:  # fmt: skip
        await set_job_state(db_engine, queued_job["id"], state)
        cancel = await client.post(f"/v1/jobs/{queued_job['id']}/cancel", headers=user.headers)
        assert_problem(cancel, 409)
        row = await read_job(db_engine, queued_job["id"])
        assert row["state"] == state
        assert row["cancel_requested"] is False

    async def test_another_users_job_is_404_and_untouched(
        self, client: httpx.AsyncClient, make_user: MakeUser, queued_job: JobBody,
        db_engine: AsyncEngine,
    ) -> None:  # fmt: skip
        stranger = await make_user()
        url = f"/v1/jobs/{queued_job['id']}/cancel"
        assert_problem(await client.post(url, headers=stranger.headers), 404)
        assert (await read_job(db_engine, queued_job["id"]))["state"] == "queued"

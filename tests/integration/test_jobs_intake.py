"""POST /v1/jobs against real Postgres and Redis: a job accepted, committed and sent
(its message queued, its event streamed), its body validated, the active limit, the kinds.

No worker runs here, so a job stays queued unless a test moves it in SQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import uuid
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.jobs import intake as intake_module
from api.jobs.intake import JobIntake, JobRow, NewJob
from api.settings import ApiSettings
from common import jobs_repository
from common.contracts import events
from common.contracts.job_kinds import DEMO_COUNTDOWN, REPORT_JOBS_SUMMARY
from common.contracts.tasks import JOBS_QUEUE, RUN_JOB_TASK
from devharness.polling import eventually
from tests.fixtures.api import AppClient, RegisteredUser
from tests.fixtures.jobs import (
    JOB_FIELDS,
    SUMMARY,
    JobBody,
    UserEvents,
    count_jobs,
    create_job,
    error_locations,
    message_for,
    post_job,
    read_job,
    set_job_state,
    stream_events,
)
from tests.fixtures.problems import assert_problem


def _noop_job(user: RegisteredUser) -> NewJob:
    """A one-step countdown of `user`'s, as the intake takes it from a request."""
    return NewJob(
        owner_id=uuid.UUID(user.id),
        kind=DEMO_COUNTDOWN,
        params={"steps": 1, "interval": 0},
        idempotency_key=None,
        request_hash="h",
        request_id=None,
        traceparent=None,
    )


class TestAccept:
    """POST /v1/jobs answers 202 with Location and the job, commits it and sends its message."""

    async def test_countdown_is_accepted_with_location_and_the_job(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await post_job(client, user)
        assert response.status_code == 202, response.text
        job = response.json()
        assert set(job) == JOB_FIELDS
        assert response.headers["location"] == f"/v1/jobs/{job['id']}"
        assert uuid.UUID(job["id"]).version == 4
        assert job["kind"] == DEMO_COUNTDOWN
        assert job["state"] == "queued"
        assert job["progress"] == 0
        assert job["params"] == {"steps": 3, "interval": 0.5}
        assert job["result"] is None
        assert job["error"] is None
        assert job["started_at"] is None
        assert job["finished_at"] is None
        assert datetime.fromisoformat(job["created_at"]).utcoffset() == timedelta(0)

    async def test_location_returns_the_same_job(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        created = await post_job(client, user)
        fetched = await client.get(created.headers["location"], headers=user.headers)
        assert fetched.status_code == 200
        assert fetched.json() == created.json()

    async def test_accepted_job_is_marked_sent_and_its_message_is_in_the_queue(
        self, user: RegisteredUser, queued_job: JobBody, db_engine: AsyncEngine, redis: Redis,
        settings: ApiSettings,
    ) -> None:  # fmt: skip
        # Marked by the intake's next round, after the 202 went out.
        async def marked() -> Any:
            row = await read_job(db_engine, queued_job["id"])
            return row if row["sent_at"] is not None else None

        row = await eventually(marked, within=10)
        assert str(row["owner_id"]) == user.id
        prefix = settings.redis_key_prefix
        assert await redis.llen(f"{prefix}{JOBS_QUEUE}") >= 1
        message = await message_for(redis, prefix, queued_job["id"])
        assert message is not None, "no message in the queue names the job"
        assert message["headers"]["task"] == RUN_JOB_TASK
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == [queued_job["id"]]
        assert kwargs == {}

    async def test_an_intake_closed_right_after_its_answers_has_marked_every_job_sent(
        self, user: RegisteredUser, settings: ApiSettings, db_engine: AsyncEngine, redis: Redis
    ) -> None:
        """The 202 does not wait for the `sent_at` mark; `close` (the shutdown) does,
        or the relay would send each of these jobs a second time."""
        intake = JobIntake(
            db_engine, redis, redis, key_prefix=settings.redis_key_prefix, max_active=20
        )
        job = _noop_job(user)
        answers = await asyncio.gather(*(intake.submit(job) for _ in range(8)))
        await intake.close()
        assert all(created for _, created in answers)
        rows = [await read_job(db_engine, str(row.id)) for row, _ in answers]
        assert all(row["sent_at"] is not None for row in rows), "left for the relay to resend"

    async def test_a_round_s_marks_ride_with_the_next_insert_or_go_alone_after_the_delay(
        self, user: RegisteredUser, settings: ApiSettings, db_engine: AsyncEngine, redis: Redis,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:  # fmt: skip
        """A trickle of jobs costs one statement each, not two: a round's `sent_at`
        marks wait for the next round's insert, up to `MARK_DELAY`; then they go in
        a round of their own, and `close` sends what is still waiting."""
        statements: list[tuple[str, list[uuid.UUID]]] = []
        real_statement = intake_module._statement

        async def observed(engine: AsyncEngine, sql: str, args: tuple[Any, ...]) -> Any:
            if sql == jobs_repository.MARK_SENT:
                statements.append(("mark", list(args[0])))
            else:
                statements.append(("insert", list(args[1])))
            return await real_statement(engine, sql, args)

        async def sent_at(row: JobRow) -> Any:
            return (await read_job(db_engine, str(row.id)))["sent_at"]

        monkeypatch.setattr(intake_module, "_statement", observed)
        job = _noop_job(user)
        waiting = JobIntake(
            db_engine, redis, redis, key_prefix=settings.redis_key_prefix, max_active=20
        )
        monkeypatch.setattr(intake_module, "MARK_DELAY", 3600)
        try:
            first, _ = await waiting.submit(job)
            # A read of the row is a round trip: long enough for a round of its own.
            assert await sent_at(first) is None
            assert statements == [("insert", [])]
            second, _ = await waiting.submit(job)
            assert await sent_at(first) is not None
            assert statements == [("insert", []), ("insert", [first.id])]
        finally:
            await waiting.close()
        assert statements[2:] == [("mark", [second.id])]
        assert await sent_at(second) is not None

        statements.clear()
        monkeypatch.setattr(intake_module, "MARK_DELAY", 0.2)
        alone = JobIntake(
            db_engine, redis, redis, key_prefix=settings.redis_key_prefix, max_active=20
        )
        try:
            third, _ = await alone.submit(job)
            # No job follows: the mark goes by itself once the delay has passed.
            assert await eventually(lambda: sent_at(third), within=10) is not None
            assert statements == [("insert", []), ("mark", [third.id])]
        finally:
            await alone.close()

    async def test_job_queued_event_lands_in_the_owner_stream(
        self, user: RegisteredUser, queued_job: JobBody, user_events: UserEvents
    ) -> None:
        queued = [(sid, e) for sid, e in await user_events() if e["job_id"] == queued_job["id"]]
        assert len(queued) == 1
        _, event = queued[0]
        assert event["type"] == events.JOB_QUEUED
        assert event["user_id"] == user.id
        assert event["data"]["state"] == "queued"
        assert set(event) == {"type", "ts", "user_id", "job_id", "data", "request_id"}
        assert datetime.fromisoformat(event["ts"]).utcoffset() == timedelta(0)

    async def test_live_copy_of_the_event_carries_the_stream_id(
        self, client: httpx.AsyncClient, user: RegisteredUser, redis: Redis,
        settings: ApiSettings,
    ) -> None:  # fmt: skip
        prefix = settings.redis_key_prefix
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(events.user_channel(prefix, user.id))
            job = await create_job(client, user)

            async def next_message() -> dict[str, Any] | None:
                message: dict[str, Any] | None = await pubsub.get_message(
                    ignore_subscribe_messages=True, timeout=0.1
                )
                return message

            message = await eventually(next_message)
        finally:
            await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        live = json.loads(message["data"])
        assert set(live) == {"id", "type", "ts", "user_id", "job_id", "data", "request_id"}
        assert live["type"] == events.JOB_QUEUED
        assert live["job_id"] == job["id"]
        stream = await stream_events(redis, prefix, user.id)
        assert [sid for sid, e in stream if e["job_id"] == job["id"]] == [live["id"]]

    async def test_jobs_summary_with_empty_params_is_accepted(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        job = await create_job(client, user, SUMMARY)
        assert job["kind"] == REPORT_JOBS_SUMMARY
        assert job["params"] == {}


class TestValidation:
    """A bad job is a 422 problem whose field errors name the field."""

    @pytest.mark.parametrize(
        ("body", "loc"),
        [
            ({"kind": "no.such.kind", "params": {}}, ["body", "kind"]),
            ({"params": {"steps": 1, "interval": 0}}, ["body", "kind"]),
            ({"kind": DEMO_COUNTDOWN, "params": [1, 2]}, ["body", "params"]),
            ({"kind": DEMO_COUNTDOWN, "params": "steps=3"}, ["body", "params"]),
            (
                {"kind": DEMO_COUNTDOWN, "params": {"steps": 0, "interval": 1}},
                ["body", "params", "steps"],
            ),
            (
                {"kind": DEMO_COUNTDOWN, "params": {"steps": 1001, "interval": 1}},
                ["body", "params", "steps"],
            ),
            (
                {"kind": DEMO_COUNTDOWN, "params": {"steps": 3, "interval": -1}},
                ["body", "params", "interval"],
            ),
            (
                {"kind": DEMO_COUNTDOWN, "params": {"steps": 3, "interval": 61}},
                ["body", "params", "interval"],
            ),
            ({"kind": DEMO_COUNTDOWN, "params": {"interval": 1}}, ["body", "params", "steps"]),
            (
                {"kind": DEMO_COUNTDOWN, "params": {"steps": 3, "interval": 0, "speed": 9}},
                ["body", "params", "speed"],
            ),
            (
                {"kind": DEMO_COUNTDOWN, "params": {"steps": 3, "interval": 0, "fail_at_step": 4}},
                ["body", "params"],
            ),
            (
                {"kind": REPORT_JOBS_SUMMARY, "params": {"since": "2024"}},
                ["body", "params", "since"],
            ),
        ],
        ids=[
            "unknown-kind",
            "missing-kind",
            "params-a-list",
            "params-a-string",
            "steps-0",
            "steps-1001",
            "interval-negative",
            "interval-61",
            "steps-missing",
            "unknown-param",
            "fail-at-step-past-steps",
            "summary-with-params",
        ],
    )
    async def test_bad_job_is_422_naming_the_field(
        self, client: httpx.AsyncClient, user: RegisteredUser, db_engine: AsyncEngine,
        body: dict[str, Any], loc: list[str],
    ) -> None:  # fmt: skip
        problem = assert_problem(await post_job(client, user, body), 422)
        assert loc in error_locations(problem)
        assert await count_jobs(db_engine, user.id) == 0

    async def test_params_at_the_limits_are_accepted(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        for params in (
            {"steps": 1, "interval": 0},
            {"steps": 1000, "interval": 60, "fail_at_step": 1000},
        ):
            job = await create_job(client, user, {"kind": DEMO_COUNTDOWN, "params": params})
            assert job["params"] == params


class TestActiveLimit:
    """A user may have at most jobs_max_active_per_user queued or running jobs."""

    async def test_job_over_the_limit_is_429_until_one_is_cancelled(
        self, app_client: AppClient, user: RegisteredUser
    ) -> None:
        limited = await app_client(jobs_max_active_per_user=3)
        jobs = [await create_job(limited, user) for _ in range(3)]
        response = await post_job(limited, user)
        assert_problem(response, 429)
        assert int(response.headers["retry-after"]) >= 1
        cancelled = await limited.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=user.headers)
        assert cancelled.status_code == 200
        assert (await post_job(limited, user)).status_code == 202

    async def test_finished_jobs_do_not_count(
        self, app_client: AppClient, user: RegisteredUser, db_engine: AsyncEngine
    ) -> None:
        limited = await app_client(jobs_max_active_per_user=1)
        job = await create_job(limited, user)
        await set_job_state(db_engine, job["id"], "running")
        assert_problem(await post_job(limited, user), 429)
        await set_job_state(db_engine, job["id"], "failed")
        assert (await post_job(limited, user)).status_code == 202


class TestKinds:
    """GET /v1/jobs/kinds lists the registered kinds with the JSON schema of their params."""

    async def test_kinds_list_countdown_and_summary_with_schemas(
        self, client: httpx.AsyncClient
    ) -> None:
        response = await client.get("/v1/jobs/kinds")
        assert response.status_code == 200
        kinds = {kind["name"]: kind for kind in response.json()}
        assert {DEMO_COUNTDOWN, REPORT_JOBS_SUMMARY} <= set(kinds)
        for kind in kinds.values():
            assert set(kind) == {"name", "description", "params_schema"}
            assert kind["description"]
            assert kind["params_schema"]["type"] == "object"
            assert kind["params_schema"]["additionalProperties"] is False
        countdown = kinds[DEMO_COUNTDOWN]["params_schema"]
        assert set(countdown["required"]) == {"steps", "interval"}
        assert countdown["properties"]["steps"]["minimum"] == 1
        assert countdown["properties"]["steps"]["maximum"] == 1000
        assert countdown["properties"]["interval"]["maximum"] == 60
        assert kinds[REPORT_JOBS_SUMMARY]["params_schema"].get("properties", {}) == {}

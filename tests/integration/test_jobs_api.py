"""/v1/jobs against real Postgres and Redis: accept, outbox, events, read, list, cancel.

No worker runs here, so a job stays queued unless a test moves it in SQL.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlalchemy import RowMapping, create_engine, func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.main import create_app
from api.settings import ApiSettings
from common.broker import create_celery
from common.contracts import events
from common.contracts.job_kinds import DEMO_COUNTDOWN, REPORT_JOBS_SUMMARY
from common.contracts.tasks import JOBS_QUEUE, RUN_JOB_TASK
from common.models import Job
from devharness.polling import eventually
from devservices import free_port
from tests.fixtures.api import ClientFactory, RegisteredUser
from tests.fixtures.problems import assert_problem
from worker.maintenance import relay

MakeUser = Callable[[], Awaitable[RegisteredUser]]

COUNTDOWN: dict[str, Any] = {"kind": DEMO_COUNTDOWN, "params": {"steps": 3, "interval": 0.5}}
SUMMARY: dict[str, Any] = {"kind": REPORT_JOBS_SUMMARY, "params": {}}
JOB_FIELDS = {
    "id",
    "kind",
    "state",
    "progress",
    "params",
    "result",
    "error",
    "created_at",
    "started_at",
    "finished_at",
}


@pytest.fixture(scope="module")
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    """A client on the run's Redis, to look at the broker queue and the event streams."""
    client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    await client.aclose()


async def _create(
    client: httpx.AsyncClient,
    user: RegisteredUser,
    body: dict[str, Any] = COUNTDOWN,
    *,
    key: str | None = None,
) -> httpx.Response:
    headers = dict(user.headers)
    if key is not None:
        headers["Idempotency-Key"] = key
    return await client.post("/v1/jobs", json=body, headers=headers)


async def _create_job(
    client: httpx.AsyncClient, user: RegisteredUser, body: dict[str, Any] = COUNTDOWN
) -> dict[str, Any]:
    response = await _create(client, user, body)
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def _row(engine: AsyncEngine, job_id: str) -> RowMapping:
    async with engine.connect() as connection:
        result = await connection.execute(select(Job.__table__).where(Job.id == uuid.UUID(job_id)))
        return result.mappings().one()


async def _set_state(engine: AsyncEngine, job_id: str, state: str) -> None:
    async with engine.begin() as connection:
        await connection.execute(update(Job).where(Job.id == uuid.UUID(job_id)).values(state=state))


async def _queued_messages(redis: Redis, prefix: str) -> list[dict[str, Any]]:
    """The Celery messages waiting in the jobs queue (kombu's JSON envelopes)."""
    raw = await redis.lrange(f"{prefix}{JOBS_QUEUE}", 0, -1)
    return [json.loads(item) for item in raw]


async def _message_for(redis: Redis, prefix: str, job_id: str) -> dict[str, Any] | None:
    for message in await _queued_messages(redis, prefix):
        if message["headers"]["id"] == job_id:
            return message
    return None


async def _stream_events(
    redis: Redis, prefix: str, user_id: str
) -> list[tuple[str, dict[str, Any]]]:
    """(stream id, event JSON) of every event in the user's stream, oldest first."""
    found: list[tuple[str, dict[str, Any]]] = []
    for entry_id, fields in await redis.xrange(events.user_stream(prefix, user_id)) or []:
        assert isinstance(entry_id, bytes)
        assert fields is not None
        found.append((entry_id.decode(), json.loads(fields[b"event"])))
    return found


def _errors_at(body: dict[str, Any]) -> list[list[Any]]:
    return [error["loc"] for error in body["errors"]]


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


class TestAccept:
    """POST /v1/jobs answers 202 with Location and the job, commits it and sends its message."""

    async def test_countdown_is_accepted_with_location_and_the_job(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        response = await _create(client, user)
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
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        created = await _create(client, user)
        fetched = await client.get(created.headers["location"], headers=user.headers)
        assert fetched.status_code == 200
        assert fetched.json() == created.json()

    async def test_accepted_job_is_marked_sent_and_its_message_is_in_the_queue(
        self,
        client: httpx.AsyncClient,
        make_user: MakeUser,
        db_engine: AsyncEngine,
        redis: Redis,
        settings: ApiSettings,
    ) -> None:
        user = await make_user()
        job = await _create_job(client, user)
        row = await _row(db_engine, job["id"])
        assert row["sent_at"] is not None
        assert str(row["owner_id"]) == user.id
        prefix = settings.redis_key_prefix
        assert await redis.llen(f"{prefix}{JOBS_QUEUE}") >= 1
        message = await _message_for(redis, prefix, job["id"])
        assert message is not None, "no message in the queue names the job"
        assert message["headers"]["task"] == RUN_JOB_TASK
        args, kwargs, _ = json.loads(base64.b64decode(message["body"]))
        assert args == [job["id"]]
        assert kwargs == {}

    async def test_job_queued_event_lands_in_the_owner_stream(
        self,
        client: httpx.AsyncClient,
        make_user: MakeUser,
        redis: Redis,
        settings: ApiSettings,
    ) -> None:
        user = await make_user()
        job = await _create_job(client, user)
        stream = await _stream_events(redis, settings.redis_key_prefix, user.id)
        queued = [(sid, e) for sid, e in stream if e["job_id"] == job["id"]]
        assert len(queued) == 1
        _, event = queued[0]
        assert event["type"] == events.JOB_QUEUED
        assert event["user_id"] == user.id
        assert event["data"]["state"] == "queued"
        assert set(event) == {"type", "ts", "user_id", "job_id", "data", "request_id"}
        assert datetime.fromisoformat(event["ts"]).utcoffset() == timedelta(0)

    async def test_live_copy_of_the_event_carries_the_stream_id(
        self,
        client: httpx.AsyncClient,
        make_user: MakeUser,
        redis: Redis,
        settings: ApiSettings,
    ) -> None:
        user = await make_user()
        prefix = settings.redis_key_prefix
        pubsub = redis.pubsub()
        try:
            await pubsub.subscribe(events.user_channel(prefix, user.id))
            job = await _create_job(client, user)

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
        stream = await _stream_events(redis, prefix, user.id)
        assert [sid for sid, e in stream if e["job_id"] == job["id"]] == [live["id"]]

    async def test_jobs_summary_with_empty_params_is_accepted(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        job = await _create_job(client, user, SUMMARY)
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
        self,
        client: httpx.AsyncClient,
        make_user: MakeUser,
        db_engine: AsyncEngine,
        body: dict[str, Any],
        loc: list[str],
    ) -> None:
        user = await make_user()
        problem = assert_problem(await _create(client, user, body), 422)
        assert loc in _errors_at(problem)
        async with db_engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(Job).where(Job.owner_id == uuid.UUID(user.id))
            )
        assert count == 0

    async def test_params_at_the_limits_are_accepted(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        for params in (
            {"steps": 1, "interval": 0},
            {"steps": 1000, "interval": 60, "fail_at_step": 1000},
        ):
            job = await _create_job(client, user, {"kind": DEMO_COUNTDOWN, "params": params})
            assert job["params"] == params


class TestIdempotencyKey:
    """The same Idempotency-Key and body give the same job, never a second one."""

    async def test_repeat_answers_200_with_the_same_job(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        key = uuid.uuid4().hex
        first = await _create(client, user, key=key)
        second = await _create(client, user, key=key)
        assert first.status_code == 202
        assert second.status_code == 200, second.text
        assert second.json()["id"] == first.json()["id"]
        assert second.headers["location"] == first.headers["location"]

    async def test_params_in_another_order_are_the_same_body(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        key = uuid.uuid4().hex
        first = await _create(
            client, user, {"kind": DEMO_COUNTDOWN, "params": {"steps": 2, "interval": 1}}, key=key
        )
        second = await _create(
            client, user, {"kind": DEMO_COUNTDOWN, "params": {"interval": 1, "steps": 2}}, key=key
        )
        assert (first.status_code, second.status_code) == (202, 200)
        assert second.json()["id"] == first.json()["id"]

    async def test_concurrent_repeats_create_exactly_one_job(
        self, client: httpx.AsyncClient, make_user: MakeUser, db_engine: AsyncEngine
    ) -> None:
        user = await make_user()
        key = uuid.uuid4().hex
        responses = await asyncio.gather(*(_create(client, user, key=key) for _ in range(20)))
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 19 + [202], [r.text for r in responses]
        assert len({r.json()["id"] for r in responses}) == 1
        async with db_engine.connect() as connection:
            count = await connection.scalar(
                select(func.count()).select_from(Job).where(Job.owner_id == uuid.UUID(user.id))
            )
        assert count == 1

    async def test_same_key_with_another_body_is_422(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        key = uuid.uuid4().hex
        assert (await _create(client, user, key=key)).status_code == 202
        other = {"kind": DEMO_COUNTDOWN, "params": {"steps": 4, "interval": 0.5}}
        assert_problem(await _create(client, user, other, key=key), 422)
        assert_problem(await _create(client, user, SUMMARY, key=key), 422)

    async def test_another_user_may_use_the_same_key(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        alice, bob = await make_user(), await make_user()
        key = uuid.uuid4().hex
        theirs = await _create(client, alice, key=key)
        mine = await _create(client, bob, key=key)
        assert (theirs.status_code, mine.status_code) == (202, 202)
        assert mine.json()["id"] != theirs.json()["id"]

    @pytest.mark.parametrize(
        "key", ["k" * 256, "has spaces", "tab\there"], ids=["too-long", "space", "tab"]
    )
    async def test_invalid_key_is_422(
        self, client: httpx.AsyncClient, make_user: MakeUser, key: str
    ) -> None:
        user = await make_user()
        problem = assert_problem(await _create(client, user, key=key), 422)
        assert ["header", "Idempotency-Key"] in _errors_at(problem)


class TestActiveLimit:
    """A user may have at most jobs_max_active_per_user queued or running jobs."""

    async def test_job_over_the_limit_is_429_until_one_is_cancelled(
        self,
        client_factory: ClientFactory,
        settings_factory: Callable[..., ApiSettings],
        make_user: MakeUser,
    ) -> None:
        limited = await client_factory(create_app(settings_factory(jobs_max_active_per_user=3)))
        user = await make_user()
        jobs = [await _create_job(limited, user) for _ in range(3)]
        response = await _create(limited, user)
        assert_problem(response, 429)
        assert int(response.headers["retry-after"]) >= 1
        cancelled = await limited.post(f"/v1/jobs/{jobs[0]['id']}/cancel", headers=user.headers)
        assert cancelled.status_code == 200
        assert (await _create(limited, user)).status_code == 202

    async def test_finished_jobs_do_not_count(
        self,
        client_factory: ClientFactory,
        settings_factory: Callable[..., ApiSettings],
        make_user: MakeUser,
        db_engine: AsyncEngine,
    ) -> None:
        limited = await client_factory(create_app(settings_factory(jobs_max_active_per_user=1)))
        user = await make_user()
        job = await _create_job(limited, user)
        await _set_state(db_engine, job["id"], "running")
        assert_problem(await _create(limited, user), 429)
        await _set_state(db_engine, job["id"], "failed")
        assert (await _create(limited, user)).status_code == 202


class TestBrokerDown:
    """With the broker unreachable a job is still accepted and left for the relay."""

    async def test_job_is_accepted_unsent_and_the_relay_sends_it(
        self,
        client_factory: ClientFactory,
        settings_factory: Callable[..., ApiSettings],
        settings: ApiSettings,
        make_user: MakeUser,
        db_engine: AsyncEngine,
        redis: Redis,
    ) -> None:
        down = settings_factory(
            broker_url=f"redis://127.0.0.1:{free_port()}/0", redis_socket_timeout=0.5
        )
        api = await client_factory(create_app(down))
        user = await make_user()
        started = time.monotonic()
        response = await _create(api, user)
        assert response.status_code == 202, response.text
        # kombu's connect retry loop alone used to sleep 2 s here.
        assert time.monotonic() - started < 1.5
        job_id = response.json()["id"]
        assert (await _row(db_engine, job_id))["sent_at"] is None
        prefix = settings.redis_key_prefix
        assert await _message_for(redis, prefix, job_id) is None

        engine = create_engine(settings.sync_database_url)
        celery = create_celery(settings, main="t")
        try:
            sent, failed = await asyncio.to_thread(relay, engine, celery, grace=0, resend_after=300)
        finally:
            celery.close()
            engine.dispose()
        assert sent >= 1
        assert failed == 0
        assert (await _row(db_engine, job_id))["sent_at"] is not None
        message = await _message_for(redis, prefix, job_id)
        assert message is not None
        assert message["headers"]["task"] == RUN_JOB_TASK


class TestOwnership:
    """A user sees only their own jobs; someone else's is indistinguishable from none."""

    async def test_another_users_job_is_404_like_a_missing_one(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        owner, stranger = await make_user(), await make_user()
        job = await _create_job(client, owner)
        missing_id = str(uuid.uuid4())
        theirs = assert_problem(
            await client.get(f"/v1/jobs/{job['id']}", headers=stranger.headers), 404
        )
        missing = assert_problem(
            await client.get(f"/v1/jobs/{missing_id}", headers=stranger.headers), 404
        )
        for body in (theirs, missing):
            body.pop("request_id")
        assert json.dumps(theirs).replace(job["id"], "ID") == json.dumps(missing).replace(
            missing_id, "ID"
        )

    async def test_list_never_shows_another_users_jobs(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        owner, stranger = await make_user(), await make_user()
        await _create_job(client, owner)
        mine = await _create_job(client, stranger)
        page = await client.get("/v1/jobs", headers=stranger.headers)
        assert page.status_code == 200
        assert [item["id"] for item in page.json()["items"]] == [mine["id"]]

    async def test_malformed_job_id_is_422(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        problem = assert_problem(await client.get("/v1/jobs/not-a-uuid", headers=user.headers), 422)
        assert ["path", "job_id"] in _errors_at(problem)


class TestList:
    """GET /v1/jobs pages the caller's jobs newest first, filtered by state and kind."""

    async def test_pages_walk_every_job_newest_first_once(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        created = [(await _create_job(client, user))["id"] for _ in range(7)]
        seen: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/v1/jobs", params=params, headers=user.headers)
            assert response.status_code == 200, response.text
            page = response.json()
            assert set(page) == {"items", "next_cursor"}
            sizes.append(len(page["items"]))
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sizes == [3, 3, 1]
        assert seen == list(reversed(created))

    async def test_exactly_full_last_page_has_no_next_cursor(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        for _ in range(3):
            await _create_job(client, user)
        page = (await client.get("/v1/jobs", params={"limit": 3}, headers=user.headers)).json()
        assert len(page["items"]) == 3
        assert page["next_cursor"] is None

    async def test_filter_by_state(
        self, client: httpx.AsyncClient, make_user: MakeUser, db_engine: AsyncEngine
    ) -> None:
        user = await make_user()
        done, waiting = await _create_job(client, user), await _create_job(client, user)
        await _set_state(db_engine, done["id"], "succeeded")
        succeeded = await client.get(
            "/v1/jobs", params={"state": "succeeded"}, headers=user.headers
        )
        queued = await client.get("/v1/jobs", params={"state": "queued"}, headers=user.headers)
        assert [j["id"] for j in succeeded.json()["items"]] == [done["id"]]
        assert succeeded.json()["items"][0]["state"] == "succeeded"
        assert [j["id"] for j in queued.json()["items"]] == [waiting["id"]]

    async def test_filter_by_kind(self, client: httpx.AsyncClient, make_user: MakeUser) -> None:
        user = await make_user()
        countdown = await _create_job(client, user)
        summary = await _create_job(client, user, SUMMARY)
        for kind, expected in ((REPORT_JOBS_SUMMARY, summary), (DEMO_COUNTDOWN, countdown)):
            page = await client.get("/v1/jobs", params={"kind": kind}, headers=user.headers)
            assert [j["id"] for j in page.json()["items"]] == [expected["id"]]

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 0},
            {"limit": 101},
            {"state": "sleeping"},
            {"cursor": "not-a-cursor"},
            {"cursor": _cursor({"created": "2024-01-01"})},
            {"cursor": _cursor(["yesterday", str(uuid.uuid4())])},
            {"cursor": _cursor(["2024-01-01T00:00:00+00:00", "not-a-uuid"])},
            {"cursor": _cursor([1, 2])},
            # From issue 15: a list where the id goes raised AttributeError (500).
            {"cursor": "WyIyMDI0LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgWyJ4Il1d"},
            {"cursor": _cursor(["2024-01-01T00:00:00", str(uuid.uuid4())])},
            {"cursor": _cursor(["2024-01-01T00:00:00+00:00", 12345678])},
            {"kind": "demo\x00countdown"},
        ],
        ids=[
            "limit-0",
            "limit-101",
            "unknown-state",
            "cursor-not-base64-json",
            "cursor-an-object",
            "cursor-bad-time",
            "cursor-bad-id",
            "cursor-numbers",
            "cursor-list-id",
            "cursor-naive-time",
            "cursor-numeric-id",
            "kind-with-nul",
        ],
    )
    async def test_bad_query_is_422(
        self, client: httpx.AsyncClient, make_user: MakeUser, params: dict[str, Any]
    ) -> None:
        user = await make_user()
        problem = assert_problem(
            await client.get("/v1/jobs", params=params, headers=user.headers), 422
        )
        assert ["query", next(iter(params))] in _errors_at(problem)


class TestCancel:
    """POST /v1/jobs/{id}/cancel: queued at once, running at its next checkpoint, finished 409."""

    async def test_queued_job_is_cancelled_at_once_with_an_event(
        self,
        client: httpx.AsyncClient,
        make_user: MakeUser,
        redis: Redis,
        settings: ApiSettings,
    ) -> None:
        user = await make_user()
        job = await _create_job(client, user)
        response = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
        assert response.status_code == 200, response.text
        cancelled = response.json()
        assert set(cancelled) == JOB_FIELDS
        assert cancelled["state"] == "cancelled"
        assert datetime.fromisoformat(cancelled["finished_at"]) >= datetime.fromisoformat(
            cancelled["created_at"]
        )
        stream = await _stream_events(redis, settings.redis_key_prefix, user.id)
        types = [e["type"] for _, e in stream if e["job_id"] == job["id"]]
        assert types == [events.JOB_QUEUED, events.JOB_CANCELLED]
        fetched = await client.get(f"/v1/jobs/{job['id']}", headers=user.headers)
        assert fetched.json() == cancelled

    async def test_cancel_twice_is_409(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        job = await _create_job(client, user)
        url = f"/v1/jobs/{job['id']}/cancel"
        assert (await client.post(url, headers=user.headers)).status_code == 200
        assert_problem(await client.post(url, headers=user.headers), 409)

    async def test_running_job_is_asked_to_stop(
        self,
        client: httpx.AsyncClient,
        make_user: MakeUser,
        db_engine: AsyncEngine,
        redis: Redis,
        settings: ApiSettings,
    ) -> None:
        user = await make_user()
        job = await _create_job(client, user)
        await _set_state(db_engine, job["id"], "running")
        response = await client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers)
        assert response.status_code == 200, response.text
        assert response.json()["state"] == "running"
        row = await _row(db_engine, job["id"])
        assert row["cancel_requested"] is True
        assert row["state"] == "running"
        stream = await _stream_events(redis, settings.redis_key_prefix, user.id)
        assert events.JOB_CANCELLED not in [e["type"] for _, e in stream]

    @pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
    async def test_finished_job_is_409_and_unchanged(
        self,
        client: httpx.AsyncClient,
        make_user: MakeUser,
        db_engine: AsyncEngine,
        state: str,
    ) -> None:
        user = await make_user()
        job = await _create_job(client, user)
        await _set_state(db_engine, job["id"], state)
        assert_problem(await client.post(f"/v1/jobs/{job['id']}/cancel", headers=user.headers), 409)
        row = await _row(db_engine, job["id"])
        assert row["state"] == state
        assert row["cancel_requested"] is False

    async def test_another_users_job_is_404_and_untouched(
        self, client: httpx.AsyncClient, make_user: MakeUser, db_engine: AsyncEngine
    ) -> None:
        owner, stranger = await make_user(), await make_user()
        job = await _create_job(client, owner)
        assert_problem(
            await client.post(f"/v1/jobs/{job['id']}/cancel", headers=stranger.headers), 404
        )
        assert (await _row(db_engine, job["id"]))["state"] == "queued"


class TestAuthentication:
    """Every jobs endpoint that touches jobs needs a bearer token."""

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs"),
            ("GET", f"/v1/jobs/{uuid.uuid4()}"),
            ("POST", f"/v1/jobs/{uuid.uuid4()}/cancel"),
        ],
    )
    async def test_without_a_token_is_401(
        self, client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        response = await client.request(method, path, json=COUNTDOWN if method == "POST" else None)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


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

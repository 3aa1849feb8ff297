"""The scheduled work against real Postgres and Redis: sweep, relay and purge."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select

from common.contracts import events
from common.models import Job
from tests.fixtures.api import MakeUser, RegisteredUser
from tests.fixtures.workers import WorkerResourcesFactory
from worker.maintenance import purge, sweep
from worker.resources import Resources


@pytest.fixture(scope="module")
def resources(worker_resources_factory: WorkerResourcesFactory) -> Resources:
    """The worker's engine and Redis client on this run's services, max 3 attempts."""
    return worker_resources_factory(job_max_attempts=3)


def _insert_job(resources: Resources, owner_id: str, **values: Any) -> uuid.UUID:
    job_id = uuid.uuid4()
    row = {"id": job_id, "owner_id": uuid.UUID(owner_id), "kind": "demo.countdown"}
    row["params"] = {"steps": 1, "interval": 0}
    row.update(values)
    with resources.engine.begin() as connection:
        connection.execute(insert(Job).values(**row))
    return job_id


def _row(resources: Resources, job_id: uuid.UUID) -> Any:
    with resources.engine.connect() as connection:
        return connection.execute(select(Job).where(Job.id == job_id)).one()


def _stream_types(resources: Resources, owner_id: str, job_id: uuid.UUID) -> list[str]:
    stream = events.user_stream(resources.settings.redis_key_prefix, owner_id)
    entries: list[Any] = resources.redis.xrange(stream) or []
    found = [events.Event.model_validate_json(fields[b"event"]) for _, fields in entries]
    return [event.type for event in found if event.job_id == job_id]


def _lapsed(minutes: int = 1) -> datetime:
    return datetime.now(UTC) - timedelta(minutes=minutes)


def _swept(resources: Resources, owner_id: str, **values: Any) -> tuple[Any, list[str]]:
    """Insert a running job with `values`, sweep once: its row and its events after."""
    job_id = _insert_job(resources, owner_id, state="running", **values)
    sweep(resources)
    return _row(resources, job_id), _stream_types(resources, owner_id, job_id)


class TestSweep:
    """A running job whose lease lapsed is requeued, cancelled or failed; a live one is left."""

    async def test_lapsed_lease_is_requeued_for_the_relay(
        self, resources: Resources, user: RegisteredUser
    ) -> None:
        row, types = _swept(
            resources, user.id, attempt=1, run_id=uuid.uuid4(), lease_expires_at=_lapsed(),
            sent_at=_lapsed(5),
        )  # fmt: skip
        assert (row.state, row.run_id, row.lease_expires_at, row.sent_at) == (
            "queued", None, None, None
        )  # fmt: skip
        assert row.attempt == 1
        assert types == [events.JOB_REQUEUED]

    @pytest.mark.parametrize(
        ("values", "state", "error", "event"),
        [
            ({"attempt": 3}, "failed", "worker lost 3 times", events.JOB_FAILED),
            ({"attempt": 1, "cancel_requested": True}, "cancelled", None, events.JOB_CANCELLED),
        ],
        ids=["at-max-attempts-fails", "with-a-cancel-request-cancels"],
    )
    async def test_lapsed_lease_that_cannot_run_again_ends_the_job(
        self, resources: Resources, user: RegisteredUser, values: dict[str, Any], state: str,
        error: str | None, event: str,
    ) -> None:  # fmt: skip
        row, types = _swept(
            resources, user.id, run_id=uuid.uuid4(), lease_expires_at=_lapsed(), **values
        )
        assert (row.state, row.error) == (state, error)
        assert row.finished_at is not None
        assert types == [event]

    async def test_live_lease_is_left_alone(
        self, resources: Resources, user: RegisteredUser
    ) -> None:
        run_id = uuid.uuid4()
        lease = datetime.now(UTC) + timedelta(minutes=5)
        row, types = _swept(resources, user.id, attempt=1, run_id=run_id, lease_expires_at=lease)
        assert (row.state, row.run_id, row.attempt) == ("running", run_id, 1)
        assert types == []


class TestPurge:
    """Finished jobs older than the retention are deleted; everything else stays."""

    # --8<-- [start:scheduled-task]
    async def test_only_old_finished_jobs_are_deleted(
        self, resources: Resources, make_user: MakeUser
    ) -> None:
        user = await make_user()
        old = datetime.now(UTC) - timedelta(days=40)
        old_done = [
            _insert_job(resources, user.id, state=state, finished_at=old, created_at=old)
            for state in ("succeeded", "failed", "cancelled")
        ]
        recent_done = _insert_job(
            resources, user.id, state="succeeded", finished_at=datetime.now(UTC)
        )
        old_queued = _insert_job(resources, user.id, state="queued", created_at=old)
        deleted = purge(resources.engine, retention_seconds=30 * 86400)
        assert deleted >= 3
        with resources.engine.connect() as connection:
            left = set(
                connection.scalars(select(Job.id).where(Job.owner_id == uuid.UUID(user.id))).all()
            )
        assert left == {recent_done, old_queued}
        assert not left & set(old_done)

    # --8<-- [end:scheduled-task]

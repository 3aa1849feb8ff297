"""The per-user running cap in Postgres: exact under concurrent claims, and one hand-off per slot.

`claim` defers a job whose owner is at `JOBS_MAX_RUNNING_PER_USER`; the finish of
one of the owner's jobs takes the oldest deferred job (and only a deferred one)
for the worker to send; a release or a lapsed lease frees a slot the same way.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import Any

import pytest
from celery import Celery
from sqlalchemy import func, insert, select, update

from common.broker import create_celery
from common.contracts.jobs import JobState
from common.contracts.tasks import JOBS_QUEUE
from common.models import Job
from tests.fixtures.api import RegisteredUser
from tests.fixtures.workers import WorkerResourcesFactory
from worker.maintenance import run_once
from worker.resources import Resources
from worker.runner import Deferred, JobRun, claim, hand_off

MakeUser = Callable[[], Awaitable[RegisteredUser]]
CAP = 2


@pytest.fixture(scope="module")
def resources(worker_resources_factory: WorkerResourcesFactory, redis_key_prefix: str) -> Resources:
    """The worker's engine and Redis on this run's services, with a cap of two running jobs."""
    return worker_resources_factory(
        redis_key_prefix=f"{redis_key_prefix}cap:",
        jobs_max_running_per_user=CAP,
        db_pool_size=CAP + 10,
    )


@pytest.fixture(scope="module")
def celery(resources: Resources) -> Celery:
    return create_celery(resources.settings, main="test-cap", sender=True)


@pytest.fixture
def owner(make_user: MakeUser) -> Callable[[], Awaitable[uuid.UUID]]:
    async def make() -> uuid.UUID:
        return uuid.UUID((await make_user()).id)

    return make


def _queue(resources: Resources, owner_id: uuid.UUID, count: int) -> list[uuid.UUID]:
    """`count` queued jobs of `owner_id`, oldest first, their messages counted as sent."""
    ids = [uuid.uuid4() for _ in range(count)]
    with resources.engine.connect() as connection:
        for job_id in ids:  # a transaction each: created_at is its transaction's now()
            connection.execute(
                insert(Job).values(
                    id=job_id, owner_id=owner_id, kind="demo.countdown",
                    params={"steps": 1, "interval": 0}, sent_at=func.now(),
                )
            )  # fmt: skip
            connection.commit()
    return ids


def _rows(resources: Resources, ids: list[uuid.UUID]) -> dict[uuid.UUID, Any]:
    with resources.engine.connect() as connection:
        rows = connection.execute(select(Job.__table__).where(Job.id.in_(ids))).all()
    return {row.id: row for row in rows}


def _claim(resources: Resources, job_id: uuid.UUID) -> JobRun | None:
    return claim(resources.engine, resources.redis, resources.settings, job_id=job_id)


def _messages(resources: Resources) -> list[str]:
    """The job ids of the Celery messages waiting in the jobs queue."""
    key = f"{resources.settings.redis_key_prefix}{JOBS_QUEUE}"
    return [json.loads(raw)["headers"]["id"] for raw in resources.redis.lrange(key, 0, -1)]


def _drain(resources: Resources) -> None:
    resources.redis.delete(f"{resources.settings.redis_key_prefix}{JOBS_QUEUE}")


def _at_the_cap(resources: Resources, owner_id: uuid.UUID) -> tuple[JobRun, uuid.UUID]:
    """Two of the owner's jobs running (the first one's run returned) and a third deferred."""
    first, second, third = _queue(resources, owner_id, 3)
    run = _claim(resources, first)
    assert run is not None
    assert _claim(resources, second) is not None
    with pytest.raises(Deferred):
        _claim(resources, third)
    return run, third


class TestClaimWithinTheCap:
    async def test_a_claim_beyond_the_cap_defers_and_the_finish_takes_the_oldest_deferred(
        self, resources: Resources, owner: Callable[[], Awaitable[uuid.UUID]]
    ) -> None:
        first, second, third, fourth = _queue(resources, await owner(), 4)
        runs = [_claim(resources, first), _claim(resources, second)]
        assert all(runs), "two claims fit a cap of two"
        for job_id in (fourth, third):  # deferred in the reverse of their age
            with pytest.raises(Deferred):
                _claim(resources, job_id)
        rows = _rows(resources, [third, fourth])
        assert [(rows[j].state, rows[j].deferred) for j in (third, fourth)] == [
            ("queued", True),
            ("queued", True),
        ]

        run = runs[0]
        assert run is not None
        assert run.finish(JobState.SUCCEEDED, result={"ok": True})
        assert run.next_job is not None
        assert (run.next_job.id, run.next_job.kind) == (third, "demo.countdown"), "oldest deferred"
        after = _rows(resources, [first, third, fourth])
        assert after[first].state == "succeeded"
        assert after[first].progress == 100
        assert not after[third].deferred
        assert after[fourth].deferred
        assert after[third].sent_at > rows[third].sent_at, "marked sent again"
        assert _claim(resources, third) is not None, "the freed slot is the handed-off job's"

    async def test_a_finish_with_nothing_held_back_hands_off_nothing(
        self, resources: Resources, owner: Callable[[], Awaitable[uuid.UUID]]
    ) -> None:
        # The second job's message is still on its way: sending it again would run twice.
        first, second = _queue(resources, await owner(), 2)
        run = _claim(resources, first)
        assert run is not None
        assert run.finish(JobState.FAILED, error="asked to")
        assert run.next_job is None
        assert not _rows(resources, [second])[second].deferred

    async def test_a_finish_that_is_no_longer_the_runs_changes_nothing(
        self, resources: Resources, owner: Callable[[], Awaitable[uuid.UUID]]
    ) -> None:
        run, third = _at_the_cap(resources, await owner())
        with resources.engine.begin() as connection:  # the lease lapsed; another run took it
            connection.execute(update(Job).where(Job.id == run.job_id).values(run_id=uuid.uuid4()))
        assert not run.finish(JobState.SUCCEEDED)
        assert run.next_job is None
        assert _rows(resources, [third])[third].deferred

    async def test_concurrent_claims_of_one_owner_never_exceed_the_cap(
        self, resources: Resources, owner: Callable[[], Awaitable[uuid.UUID]]
    ) -> None:
        ids = _queue(resources, await owner(), 12)
        start = threading.Barrier(len(ids))

        def attempt(job_id: uuid.UUID) -> str:
            start.wait()
            try:
                return "claimed" if _claim(resources, job_id) else "gone"
            except Deferred:
                return "deferred"

        with ThreadPoolExecutor(len(ids)) as pool:
            outcomes = list(pool.map(attempt, ids))
        assert outcomes.count("claimed") == CAP, outcomes
        assert outcomes.count("deferred") == len(ids) - CAP
        states = [row.state for row in _rows(resources, ids).values()]
        assert states.count("running") == CAP


class TestOtherFreedSlots:
    async def test_a_release_for_a_retry_sends_the_oldest_deferred_job(
        self, resources: Resources, celery: Celery, owner: Callable[[], Awaitable[uuid.UUID]]
    ) -> None:
        _drain(resources)
        run, third = _at_the_cap(resources, await owner())
        assert run.release()
        hand_off(resources.engine, celery, run)
        assert _messages(resources) == [str(third)]
        assert not _rows(resources, [third])[third].deferred

    async def test_a_lapsed_lease_frees_its_owners_slot_in_the_sweep(
        self, resources: Resources, celery: Celery, owner: Callable[[], Awaitable[uuid.UUID]]
    ) -> None:
        _drain(resources)
        run, third = _at_the_cap(resources, await owner())
        with resources.engine.begin() as connection:  # its worker died: the lease lapsed
            connection.execute(
                update(Job)
                .where(Job.id == run.job_id)
                .values(lease_expires_at=func.now() - timedelta(minutes=1))
            )
        tally = run_once(resources, celery)
        assert tally.requeued == 1
        rows = _rows(resources, [run.job_id, third])
        assert rows[run.job_id].state == "queued"
        assert not rows[third].deferred
        assert str(third) in _messages(resources), "the deferred job went back to the queue"

    async def test_a_broker_that_refuses_the_hand_off_leaves_the_job_to_the_relay(
        self, resources: Resources, owner: Callable[[], Awaitable[uuid.UUID]]
    ) -> None:
        run, third = _at_the_cap(resources, await owner())
        nowhere = resources.settings.model_copy(update={"redis_url": "redis://127.0.0.1:1/0"})
        assert run.finish(JobState.SUCCEEDED)
        hand_off(resources.engine, create_celery(nowhere, main="nowhere", sender=True), run)
        row = _rows(resources, [third])[third]
        assert (row.state, row.sent_at) == ("queued", None), "unsent: the relay sends it"

"""The lease keeper renews every running job's lease, including one added while it sleeps."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime

import pytest
from sqlalchemy import func, insert, select

from common.models import Job
from devharness.polling import eventually
from tests.fixtures.api import RegisteredUser
from tests.fixtures.workers import WorkerResourcesFactory
from worker.resources import Resources
from worker.runner import Heartbeat, JobRun, claim

MakeUser = Callable[[], Awaitable[RegisteredUser]]
HEARTBEAT = 0.2


@pytest.fixture(scope="module")
def resources(worker_resources_factory: WorkerResourcesFactory) -> Resources:
    """Leases of 30 s renewed every 0.2 s: only the keeper moves `lease_expires_at`."""
    return worker_resources_factory(job_heartbeat_seconds=HEARTBEAT, job_lease_seconds=30)


async def _running(resources: Resources, make_user: MakeUser) -> JobRun:
    owner_id = uuid.UUID((await make_user()).id)
    job_id = uuid.uuid4()
    with resources.engine.begin() as connection:
        connection.execute(
            insert(Job).values(
                id=job_id, owner_id=owner_id, kind="demo.countdown",
                params={"steps": 1, "interval": 0}, sent_at=func.now(),
            )
        )  # fmt: skip
    run = claim(resources.engine, resources.redis, resources.settings, job_id=job_id)
    assert run is not None
    return run


def _lease(resources: Resources, run: JobRun) -> datetime:
    with resources.engine.connect() as connection:
        lease = connection.execute(
            select(Job.lease_expires_at).where(Job.id == run.job_id)
        ).scalar_one()
    assert lease is not None
    return lease


async def _renewed(resources: Resources, run: JobRun, times: int) -> None:
    """Wait until the run's lease moved forward `times` times."""
    seen = [_lease(resources, run)]

    async def moved() -> bool:
        lease = _lease(resources, run)
        if lease > seen[-1]:
            seen.append(lease)
        return len(seen) > times

    await eventually(moved, within=20 * HEARTBEAT * times)


class TestLeaseKeeper:
    async def test_it_renews_runs_side_by_side_and_one_added_while_it_sleeps(
        self, resources: Resources, make_user: MakeUser
    ) -> None:
        first, second = await _running(resources, make_user), await _running(resources, make_user)
        with Heartbeat(first), Heartbeat(second):
            await _renewed(resources, first, 2)
            await _renewed(resources, second, 2)
        # Idle now: the keeper sleeps a heartbeat at a time and is not woken for a new run.
        third = await _running(resources, make_user)
        with Heartbeat(third):
            await _renewed(resources, third, 2)

    async def test_a_removed_run_is_renewed_no_more(
        self, resources: Resources, make_user: MakeUser
    ) -> None:
        run, other = await _running(resources, make_user), await _running(resources, make_user)
        with Heartbeat(run):
            await _renewed(resources, run, 1)
        last = _lease(resources, run)
        with Heartbeat(other):  # the keeper goes on for another run meanwhile
            await _renewed(resources, other, 3)
        assert _lease(resources, run) == last

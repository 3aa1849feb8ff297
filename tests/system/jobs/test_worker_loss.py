"""A worker killed mid-job loses nothing; a live worker's long job is never taken from it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest

from tests.fixtures.workers import JobRow, JobsStack

pytestmark = pytest.mark.system

# The guarantee under test: a dead worker's job runs again within a minute.
RECOVERY_LIMIT = 60.0


class TestWorkerKilledMidJob:
    """SIGKILL of a worker's whole process group mid-job: the lease lapses and the job reruns."""

    async def test_job_of_killed_worker_succeeds_exactly_once_within_a_minute(
        self, stack: JobsStack, job_row: JobRow
    ) -> None:
        user, doomed = await asyncio.gather(stack.new_user(), stack.start_worker())
        job = await user.post_job("demo.countdown", {"steps": 20, "interval": 0.25})
        await user.wait_for_job(job["id"], lambda j: j["progress"] >= 10, within=20)

        doomed.kill()
        killed_at = time.monotonic()
        assert await doomed.wait_exit(10) is not None
        await asyncio.gather(stack.start_worker(), stack.start_scheduler())
        done = await user.wait_until_final(job["id"], within=RECOVERY_LIMIT)
        recovery = time.monotonic() - killed_at
        print(f"\nrecovered after SIGKILL: succeeded {recovery:.1f}s after the kill")

        assert done["state"] == "succeeded", done
        assert done["result"] == {"steps": 20}
        assert recovery < RECOVERY_LIMIT
        row = await job_row(job["id"])
        assert row["attempt"] == 2
        # One more full round of the sweep and relay cannot move a finished job.
        await stack.run_scheduler_once()
        assert (await user.get_job(job["id"]))["state"] == "succeeded"
        stream = await stack.stream(user, job["id"])
        types = [event["type"] for event in stream]
        assert types.count("job.succeeded") == 1, types
        assert types.count("job.requeued") == 1, types
        assert types.count("job.started") == 2, types
        assert types[-1] == "job.succeeded", types


def _children(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [int(child) for child in children]


class TestBrokerRedelivery:
    """Late acks and reject-on-worker-lost, alone: no scheduler, so no lease sweep (#15 §8).

    A pool process killed mid-job must not take its message with it: the main
    process rejects it back to the queue and its next pool process receives it
    again. (It then finds the job still leased and leaves it to the sweep.)
    """

    async def test_a_killed_pool_process_gives_its_message_back(self, stack: JobsStack) -> None:
        user, worker = await asyncio.gather(stack.new_user(), stack.start_worker())
        job = await user.post_job("demo.countdown", {"steps": 40, "interval": 0.25})
        await user.wait_for_job(job["id"], lambda j: j["progress"] >= 5, within=20)
        ignored = f"job {job['id']} is not queued; message ignored"
        assert ignored not in worker.log()

        (child,) = _children(worker.pid)
        os.kill(child, signal.SIGKILL)
        # Only the broker can deliver it again: nothing else sends while no scheduler runs.
        await worker.wait_for_log(ignored, within=30)
        assert "WorkerLostError" in worker.log()


class TestLiveWorkerKeepsItsJob:
    """A job longer than the lease, on a live worker, is never requeued by the sweep."""

    async def test_job_longer_than_lease_runs_once(self, stack: JobsStack, job_row: JobRow) -> None:
        user, *_ = await asyncio.gather(
            stack.new_user(), stack.start_worker(), stack.start_scheduler()
        )
        # 8 x 0.5 s = 4 s, longer than the 3 s lease: only renewals keep it.
        job = await user.post_job("demo.countdown", {"steps": 8, "interval": 0.5})
        done = await user.wait_until_final(job["id"], within=30)

        assert done["state"] == "succeeded", done
        row = await job_row(job["id"])
        assert row["attempt"] == 1
        duration = (row["finished_at"] - row["started_at"]).total_seconds()
        assert duration > 3, "the job must outlive one lease for this test to mean anything"
        types = [event["type"] for event in await stack.stream(user, job["id"])]
        assert "job.requeued" not in types, types
        assert types.count("job.started") == 1, types

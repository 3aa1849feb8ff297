"""Cancelling a job, queued or running: it ends cancelled and never succeeds."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.workers import JobRow, JobsStack

pytestmark = pytest.mark.system


class TestCancelQueuedJob:
    """A job cancelled before any worker took it stays cancelled when a worker comes."""

    async def test_cancelled_queued_job_is_not_run_by_a_later_worker(
        self, stack: JobsStack, job_row: JobRow
    ) -> None:
        user = await stack.new_user()
        async with stack.tap(user) as tap:
            job = await user.post_job("demo.countdown", {"steps": 2, "interval": 0})
            cancelled = await user.cancel_job(job["id"])
            assert cancelled.status_code == 200, cancelled.text
            assert cancelled.json()["state"] == "cancelled"
            # Its message is still in the queue: the worker must take and drop it.
            worker = await stack.start_worker()
            marker = await user.post_job("demo.countdown", {"steps": 1, "interval": 0})
            await user.wait_until_final(marker["id"], within=20)
            types = [event["type"] for event in tap.of_job(job["id"])]

        assert (await user.get_job(job["id"]))["state"] == "cancelled"
        row = await job_row(job["id"])
        assert row["attempt"] == 0
        assert row["started_at"] is None
        assert types == ["job.queued", "job.cancelled"]
        # The worker did receive the message (FIFO, before the marker) and dropped it.
        assert f"job {job['id']} is not queued; message ignored" in worker.log()


class TestCancelRunningJob:
    """A running job asked to cancel stops at its next checkpoint."""

    async def test_running_job_ends_cancelled_never_succeeded(self, stack: JobsStack) -> None:
        user, _ = await asyncio.gather(stack.new_user(), stack.start_worker())
        async with stack.tap(user) as tap:
            job = await user.post_job("demo.countdown", {"steps": 50, "interval": 0.1})
            await user.wait_for_job(job["id"], lambda j: j["progress"] > 0, within=20)
            response = await user.cancel_job(job["id"])
            assert response.status_code == 200, response.text
            done = await user.wait_until_final(job["id"], within=10)
            await tap.wait_for(job["id"], "job.cancelled", within=5)
            types = [event["type"] for event in tap.of_job(job["id"])]

        assert done["state"] == "cancelled", done
        assert done["progress"] < 100
        assert done["result"] is None
        assert "job.succeeded" not in types
        assert types.count("job.cancelled") == 1
        assert types[-1] == "job.cancelled"
        # Cancelling a finished job is refused.
        again = await user.cancel_job(job["id"])
        assert again.status_code == 409

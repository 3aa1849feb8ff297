"""A job's life through the real API, a real `celery worker` and Postgres, with its events."""

from __future__ import annotations

import asyncio

import pytest

from tests.fixtures.workers import JobRow, JobsStack

pytestmark = pytest.mark.system


class TestCountdownEndToEnd:
    """A countdown posted through the API is run by the worker and reported in order."""

    # --8<-- [start:kind-end-to-end]
    async def test_countdown_succeeds_with_events_in_order_on_channel_and_stream(
        self, stack: JobsStack
    ) -> None:
        user, _ = await asyncio.gather(stack.new_user(), stack.start_worker())
        async with stack.tap(user) as tap:
            job = await user.post_job("demo.countdown", {"steps": 5, "interval": 0.1})
            assert job["state"] == "queued"
            done = await user.wait_until_final(job["id"], within=20)
            await tap.wait_for(job["id"], "job.succeeded", within=5)
            received = tap.of_job(job["id"])
        assert done["state"] == "succeeded"
        assert done["progress"] == 100
        assert done["result"] == {"steps": 5}
        assert done["started_at"] is not None
        assert done["finished_at"] is not None
        expected_types = ["job.queued", "job.started", *["job.progress"] * 5, "job.succeeded"]
        assert [event["type"] for event in received] == expected_types
        progress = [
            event["data"]["progress"] for event in received if event["type"] == "job.progress"
        ]
        assert progress == [20, 40, 60, 80, 100]
        stream = await tap.stream(job["id"])
        assert [event["type"] for event in stream] == expected_types
        assert [event["id"] for event in stream] == [event["id"] for event in received]
        assert all(event["user_id"] == user.id for event in received)

    # --8<-- [end:kind-end-to-end]

    async def test_queued_event_comes_before_anything_the_worker_publishes(
        self, stack: JobsStack
    ) -> None:
        # An idle worker takes a message within milliseconds; job.queued must
        # still be first in the stream, or a client would see a finished job
        # go back to queued.
        user, _ = await asyncio.gather(stack.new_user(), stack.start_worker())
        for _ in range(10):
            job = await user.post_job("demo.countdown", {"steps": 1, "interval": 0})
            await user.wait_until_final(job["id"], within=20)
            types = [event["type"] for event in await stack.stream(user, job["id"])]
            assert types == ["job.queued", "job.started", "job.progress", "job.succeeded"]


class TestFailingJobs:
    """A kind that raises fails at once; a transient error is retried with backoff."""

    async def test_job_that_raises_fails_with_error_and_no_retry(
        self, stack: JobsStack, job_row: JobRow
    ) -> None:
        user, worker = await asyncio.gather(stack.new_user(), stack.start_worker())
        async with stack.tap(user) as tap:
            job = await user.post_job(
                "demo.countdown", {"steps": 3, "interval": 0, "fail_at_step": 2}
            )
            done = await user.wait_until_final(job["id"], within=20)
            await tap.wait_for(job["id"], "job.failed", within=5)
            types = [event["type"] for event in tap.of_job(job["id"])]
            failed = [e for e in tap.of_job(job["id"]) if e["type"] == "job.failed"]

        assert done["state"] == "failed", done
        # The exception's text stays in the log; the owner sees a generic message (#15 §7).
        assert done["error"] == "The job failed unexpectedly."
        assert failed[0]["data"]["error"] == "The job failed unexpectedly."
        assert "failed at step 2 as asked" in worker.log()
        assert done["result"] is None
        assert done["progress"] == 33
        assert (await job_row(job["id"]))["attempt"] == 1
        assert types == ["job.queued", "job.started", "job.progress", "job.failed"]

    async def test_transient_errors_are_retried_until_success(
        self, stack: JobsStack, job_row: JobRow
    ) -> None:
        user, _ = await asyncio.gather(stack.new_user(), stack.start_worker())
        async with stack.tap(user) as tap:
            job = await user.post_job("demo.flaky", {"failures": 2})
            done = await user.wait_until_final(job["id"], within=30)
            await tap.wait_for(job["id"], "job.succeeded", within=5)
            received = tap.of_job(job["id"])

        assert done["state"] == "succeeded", done
        assert done["result"] == {"attempts": 3}
        assert (await job_row(job["id"]))["attempt"] == 3
        types = [event["type"] for event in received]
        assert types.count("job.requeued") == 2, types
        assert types.count("job.started") == 3, types
        assert types.count("job.succeeded") == 1, types
        requeued = [event["data"] for event in received if event["type"] == "job.requeued"]
        assert [data["attempt"] for data in requeued] == [1, 2]
        assert all(data["retry_in"] > 0 for data in requeued)


class TestJobsSummary:
    """report.jobs_summary counts the owner's jobs per kind and state, with durations."""

    async def test_summary_counts_jobs_per_kind_and_state(self, stack: JobsStack) -> None:
        user, _ = await asyncio.gather(stack.new_user(), stack.start_worker())
        finished = [
            await user.post_job("demo.countdown", {"steps": 2, "interval": 0.05}) for _ in range(3)
        ]
        failing = await user.post_job(
            "demo.countdown", {"steps": 2, "interval": 0, "fail_at_step": 1}
        )
        for job in [*finished, failing]:
            await user.wait_until_final(job["id"], within=30)
        # Another user's jobs are not counted.
        other = await stack.new_user()
        await other.post_job("demo.countdown", {"steps": 1, "interval": 0})

        summary = await user.post_job("report.jobs_summary", {})
        done = await user.wait_until_final(summary["id"], within=20)

        assert done["state"] == "succeeded", done
        result = done["result"]
        assert result["total"] == 4
        countdown = result["kinds"]["demo.countdown"]
        assert countdown["total"] == 4
        assert countdown["by_state"] == {"succeeded": 3, "failed": 1}
        durations = countdown["duration_seconds"]
        assert set(durations) == {"p50", "p95", "max"}
        assert 0 < durations["p50"] <= durations["p95"] <= durations["max"]
        assert set(result["kinds"]) == {"demo.countdown"}

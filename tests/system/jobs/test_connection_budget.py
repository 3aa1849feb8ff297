"""The worker's start-up connection-budget check, in a real `celery worker` process."""

from __future__ import annotations

from tests.fixtures.workers import JobsStack

WARNING = "connection budget: worker may open"


class TestWorkerStartUp:
    """The Celery main process asks Postgres once; only a share past its limit warns."""

    async def test_a_worker_configured_over_the_limit_warns_and_still_runs(
        self, stack: JobsStack
    ) -> None:
        # --concurrency 1, pool 2 + overflow 2: 4000 for 1000 instances, past any server here.
        worker = await stack.start_worker(INSTANCE_COUNT="1000")
        await worker.wait_for_log("1000 instances x 1 processes", within=10)
        [record] = [r for r in worker.log_records() if WARNING in r.get("message", "")]
        assert record["level"] == "WARNING"
        assert "may open 4000 Postgres connections" in record["message"]
        assert worker.is_running()

    async def test_a_worker_under_the_limit_says_so_at_info(self, stack: JobsStack) -> None:
        worker = await stack.start_worker(INSTANCE_COUNT="1")
        await worker.wait_for_log("connection budget: worker may open 4 Postgres", within=10)
        budget = [r for r in worker.log_records() if "connection budget" in r.get("message", "")]
        assert [r["level"] for r in budget] == ["INFO"]

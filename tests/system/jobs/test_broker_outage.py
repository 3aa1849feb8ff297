"""Jobs accepted while Redis is down are sent by the relay once it is back, each run once."""

from __future__ import annotations

import asyncio

import pytest

from devservices import EmbeddedRedis
from tests.fixtures.workers import JobRow, JobsStack, StackFactory

pytestmark = pytest.mark.system

JOBS = 5


class TestRedisDownAtAccept:
    """Every POST answers 202 while the broker is down; nothing is lost, nothing runs twice."""

    async def test_jobs_accepted_during_outage_run_exactly_once_after(
        self, stack_factory: StackFactory, private_redis: EmbeddedRedis, job_row: JobRow
    ) -> None:
        stack: JobsStack = await stack_factory(
            redis_url=private_redis.url(), redis_socket_timeout=0.5
        )
        user = await stack.new_user()
        await asyncio.to_thread(private_redis.stop)

        jobs = [
            await user.post_job("demo.countdown", {"steps": 2, "interval": 0.05})
            for _ in range(JOBS)
        ]
        for job in jobs:
            row = await job_row(job["id"])
            assert row["state"] == "queued"
            assert row["sent_at"] is None, "nothing can have been sent to a stopped broker"

        await asyncio.to_thread(private_redis.start)
        await asyncio.gather(stack.start_worker(), stack.start_scheduler())
        for job in jobs:
            done = await user.wait_until_final(job["id"], within=30)
            assert done["state"] == "succeeded", done
            assert done["result"] == {"steps": 2}
        for job in jobs:
            row = await job_row(job["id"])
            assert row["attempt"] == 1
            assert row["sent_at"] is not None
            types = [event["type"] for event in await stack.stream(user, job["id"])]
            assert types.count("job.succeeded") == 1, types
            assert types.count("job.started") == 1, types

"""One user's backlog waits behind other users' jobs (#15 §4), with 2 worker slots."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest

from tests.fixtures.workers import JobRow, JobsStack

pytestmark = pytest.mark.system

# One of A's jobs: long next to how fast a worker claims and defers a message.
LONG = {"steps": 4, "interval": 0.5}


class TestRunningJobsPerUser:
    """At most `JOBS_MAX_RUNNING_PER_USER` (1) of a user's jobs run at once."""

    async def test_a_backlog_does_not_delay_another_users_job_beyond_one_slot(
        self, stack: JobsStack, job_row: JobRow
    ) -> None:
        # Two worker slots (two workers of one process each), as on Render. The two
        # sign-ups one after the other: at once, on a loaded machine, the second could
        # wait past the hashing wait for the first's hash and get the API's 503.
        _, _, alice = await asyncio.gather(
            stack.start_worker(), stack.start_worker(), stack.new_user()
        )
        bob = await stack.new_user()
        backlog = [await alice.post_job("demo.countdown", LONG) for _ in range(10)]
        short = await bob.post_job("demo.countdown", {"steps": 1, "interval": 0})
        assert (await bob.wait_until_final(short["id"], within=60))["state"] == "succeeded"
        bobs = await job_row(short["id"])
        alices = [await job_row(job["id"]) for job in backlog]
        # Without the cap Bob's job starts after Alice's ten, five per slot.
        finished_before_bob = [
            row for row in alices if row["finished_at"] and row["finished_at"] < bobs["started_at"]
        ]
        assert len(finished_before_bob) <= 1, [row["finished_at"] for row in alices]
        # Alice's backlog still drains, one job at a time, by the hand-off.
        for job in backlog:
            assert (await alice.wait_until_final(job["id"], within=120))["state"] == "succeeded"
        runs = sorted(
            [(row["started_at"], row["finished_at"]) for row in (await _rows(job_row, backlog))]
        )
        for (_, first_end), (second_start, _) in itertools.pairwise(runs):
            assert second_start >= first_end, "two of Alice's jobs ran at once"


async def _rows(job_row: JobRow, jobs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [await job_row(job["id"]) for job in jobs]

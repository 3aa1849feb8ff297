"""The intake's per-user active-job count reads only active jobs, not a user's whole history."""

from __future__ import annotations

import json
import uuid

from sqlalchemy.ext.asyncio import AsyncEngine

from api.jobs.intake import _INSERT
from common.contracts.jobs import JobState
from common.contracts.kinds import DEMO_COUNTDOWN
from common.db import driver_connection

FINISHED = 2000


class TestActiveJobCount:
    """Every intake round counts each owner's queued and running jobs under the per-user limit."""

    async def test_intake_counts_active_jobs_by_their_own_index(
        self, db_engine: AsyncEngine
    ) -> None:
        owner = uuid.uuid4()
        row = (
            [uuid.uuid4()], [owner], [DEMO_COUNTDOWN], [json.dumps({})], [None], ["hash"],
            [None], [None], 100, JobState.QUEUED.value,
        )  # fmt: skip
        async with driver_connection(db_engine) as connection:
            # Rolled back: no queued job is left for another test's worker.
            transaction = connection.transaction()
            await transaction.start()
            try:
                await connection.execute(
                    "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')",
                    owner, f"{owner}@example.com",
                )  # fmt: skip
                # A user with a long history and a few jobs still to run.
                await connection.execute(
                    "INSERT INTO jobs (id, owner_id, kind, state, progress) "
                    "SELECT gen_random_uuid(), $1, $2, "
                    "CASE WHEN n <= 3 THEN 'queued' ELSE 'succeeded' END, 0 "
                    "FROM generate_series(1, $3) AS n",
                    owner, DEMO_COUNTDOWN, FINISHED + 3,
                )  # fmt: skip
                await connection.execute("ANALYZE jobs")
                # EXPLAIN plans the statement with these values and runs nothing.
                plan = "\n".join(r[0] for r in await connection.fetch("EXPLAIN " + _INSERT, *row))
            finally:
                await transaction.rollback()

        assert "ix_jobs_owner_active" in plan, plan

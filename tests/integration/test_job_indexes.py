"""The intake's per-user active-job count reads only active jobs, not a user's whole history.

The count runs inside `job_intake` (a PL/pgSQL function), whose plans EXPLAIN
does not show: auto_explain sends each nested statement's plan to the client
as a NOTICE instead, for this transaction only.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from common.contracts.job_kinds import DEMO_COUNTDOWN
from common.contracts.jobs import JobState
from common.db import driver_connection
from common.jobs_repository import INTAKE

FINISHED = 2000


class TestActiveJobCount:
    """Every intake round counts each owner's queued and running jobs under the per-user limit."""

    async def test_intake_counts_active_jobs_by_their_own_index(
        self, db_engine: AsyncEngine
    ) -> None:
        owner = uuid.uuid4()
        row: tuple[Any, ...] = (
            [owner], [], [uuid.uuid4()], [owner], [DEMO_COUNTDOWN], [json.dumps({})], [None],
            ["hash"], [None], [None], 100, JobState.QUEUED.value,
        )  # fmt: skip
        plans: list[str] = []
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
                await connection.execute(
                    "LOAD 'auto_explain'; SET LOCAL auto_explain.log_min_duration = 0;"
                    " SET LOCAL auto_explain.log_nested_statements = on;"
                    " SET LOCAL auto_explain.log_level = notice;"
                    " SET LOCAL client_min_messages = notice"
                )

                def collect(_: Any, message: Any) -> None:
                    plans.append(str(message))

                connection.add_log_listener(collect)
                try:
                    [inserted] = await connection.fetch(INTAKE, *row)
                finally:
                    connection.remove_log_listener(collect)
            finally:
                await transaction.rollback()

        assert not inserted["existed"]
        counts = [plan for plan in plans if "count(*)" in plan and "owner_id" in plan]
        assert counts, plans
        assert all("ix_jobs_owner_active" in plan for plan in counts), counts

"""The intake reads only what it needs: the owner's active jobs, never the whole table.

The intake runs inside `job_intake` (a PL/pgSQL function), whose plans EXPLAIN
does not show: auto_explain sends each nested statement's plan to the client
as a NOTICE instead, for this transaction only.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import pytest
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from common.contracts.job_kinds import DEMO_COUNTDOWN
from common.contracts.jobs import JobState
from common.db import driver_connection
from common.jobs_repository import INTAKE, MARK_SENT
from devharness.database import migrated_database
from devharness.services import ServiceUrls

FINISHED = 2000
GROWN = 20_000
EXPLAIN_NESTED = (
    "LOAD 'auto_explain'; SET auto_explain.log_min_duration = 0;"
    " SET auto_explain.log_nested_statements = on;"
    " SET auto_explain.log_level = notice; SET client_min_messages = notice"
)


def _intake_args(owner: uuid.UUID, sent: list[uuid.UUID], key: str | None) -> tuple[Any, ...]:
    return (
        [owner], sent, [uuid.uuid4()], [owner], [DEMO_COUNTDOWN], [json.dumps({})], [key],
        ["hash"], [None], [None], 100, JobState.QUEUED.value,
    )  # fmt: skip


class TestActiveJobCount:
    """Every intake round counts each owner's queued and running jobs under the per-user limit."""

    async def test_intake_counts_active_jobs_by_their_own_index(
        self, db_engine: AsyncEngine
    ) -> None:
        owner = uuid.uuid4()
        row = _intake_args(owner, [], None)
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


GROW = (
    "INSERT INTO jobs (id, owner_id, kind, state, progress) "
    "SELECT gen_random_uuid(), $1, $2, 'queued', 0 FROM generate_series(1, $3)"
)


@pytest.fixture
def fresh_database(services: ServiceUrls) -> Iterator[str]:
    """A database of the test's own: the table's size and statistics when plans are made
    are the test's to choose."""
    with migrated_database(services.postgres) as url:
        yield make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _plans_after_growth(url: str, *, emptied_first: bool) -> list[str]:
    """The plans of an intake round and its sent mark, on a connection whose plans were
    made while the table was small (or, with `emptied_first`, just after a mass delete
    and the VACUUM ANALYZE that follows), once another owner's jobs have grown it."""
    connection = await asyncpg.connect(url)
    try:
        owners = [uuid.uuid4() for _ in range(2)]
        await connection.executemany(
            "INSERT INTO users (id, email, password_hash) VALUES ($1, $2, 'x')",
            [(owner, f"{owner}@example.com") for owner in owners],
        )
        if emptied_first:
            await connection.execute(GROW, owners[1], DEMO_COUNTDOWN, GROWN)
            await connection.execute("DELETE FROM jobs WHERE owner_id = $1", owners[1])
            # As autovacuum does: the emptied pages cut off, a table of a few rows analyzed.
            await connection.execute("VACUUM ANALYZE jobs")
        # More calls than PostgreSQL makes custom plans for (five) before it settles.
        sent: list[uuid.UUID] = []
        for n in range(8):
            [row] = await connection.fetch(INTAKE, *_intake_args(owners[0], sent, f"k{n}"))
            sent = [row["id"]]
        await connection.execute(GROW, owners[1], DEMO_COUNTDOWN, GROWN)
        plans: list[str] = []
        await connection.execute(EXPLAIN_NESTED)
        connection.add_log_listener(lambda _, message: plans.append(str(message)))
        [row] = await connection.fetch(INTAKE, *_intake_args(owners[0], sent, "again"))
        await connection.execute(MARK_SENT, [row["id"]])
        return plans
    finally:
        await connection.close()


def _assert_probes_only(plans: list[str]) -> None:
    statements = [plan for plan in plans if "Query Text: SELECT * FROM job_" not in plan]
    assert any("UPDATE jobs SET sent_at" in plan for plan in statements), plans
    for plan in statements:
        assert "Seq Scan on jobs" not in plan, plan
    counts = [plan for plan in statements if "count(*)" in plan]
    assert counts, plans
    assert all("Index Cond: (owner_id = o.owner_id)" in plan for plan in counts), counts


class TestPlansMadeOnASmallTable:
    """A connection keeps its plans; made while the table was small, they still probe it grown.

    Revision 0005's intake, planned on a few rows, marked the previous round's
    jobs sent with a sequential scan and counted every owner's active jobs in
    one pass, and went on doing so as the table grew (until the next ANALYZE).
    """

    async def test_intake_and_sent_mark_probe_indexes_after_the_table_grew(
        self, fresh_database: str
    ) -> None:
        _assert_probes_only(await _plans_after_growth(fresh_database, emptied_first=False))


class TestPlansMadeOnAnEmptiedTable:
    """Statistics taken just after a mass delete say the table is empty; the job functions
    still probe the indexes once it has grown again (revision 0007).

    Seen in the bench: autovacuum analyzed `jobs` right after one round's users
    (and their jobs) were deleted, and the planner, told the table held a few
    rows, counted each owner's active jobs with a sequential scan; the next
    30,000 jobs then made every intake round read the whole table, until the
    next ANALYZE (the intake fell from 1,900 to 500 jobs/s within 20 s).
    """

    async def test_intake_and_sent_mark_probe_indexes_after_an_empty_analyze(
        self, fresh_database: str
    ) -> None:
        _assert_probes_only(await _plans_after_growth(fresh_database, emptied_first=True))

    async def test_every_job_function_runs_without_sequential_scans(
        self, fresh_database: str
    ) -> None:
        """The worker's claim, finish and hand-off read `jobs` by index too."""
        connection = await asyncpg.connect(fresh_database)
        try:
            rows = await connection.fetch(
                "SELECT proname, proconfig FROM pg_proc WHERE proname LIKE 'job\\_%'"
            )
        finally:
            await connection.close()
        names = {row["proname"] for row in rows}
        assert names >= {"job_intake", "job_mark_sent", "job_claim", "job_finish", "job_hand_off"}
        for row in rows:
            assert "enable_seqscan=off" in (row["proconfig"] or []), row["proname"]

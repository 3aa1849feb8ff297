"""Every statement on the jobs table, in one place: the one owner of its states and guards.

Each state change is one guarded statement (`... WHERE state = <source>`, and for
a run's writes `AND run_id = <run>`), so a redelivered message, a lapsed lease or
a racing cancel can never move a job backwards or finish it twice. The state
names come from `common.contracts.jobs.JobState`, and `TRANSITIONS` there is the
list of moves these statements make (`tests/integration/test_job_transitions.py`
walks each statement from every state against Postgres and holds them to it).

The claim, the finish, the hand-off and the API's intake round are PL/pgSQL
functions (migration 0005): each takes its owner's turn (an advisory lock) and
then reads with a snapshot taken after it, which one SQL statement cannot do.

Who calls what:

- the worker's runner: `CLAIM`, `RENEW`, `PROGRESS`, `FINISH`, `RELEASE`,
  `HAND_OFF`, `UNSEND`;
- the worker's maintenance: `TAKE_UNSENT`, `UNMARK_SENT`, `SWEEP`, `PURGE`;
- the worker's metrics: `OUTBOX_BACKLOG`; the `report.jobs_summary` kind: `SUMMARY`;
- the API's intake (asyncpg, `$n` parameters): `INTAKE`, `MARK_SENT`;
- the API's jobs service: `read_job`, `get_query`, `list_query`, `cancel_queued`,
  `request_cancel`.
"""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import Select, TextClause, bindparam, select, text, tuple_, update
from sqlalchemy.sql.dml import ReturningUpdate

from common.contracts.jobs import ACTIVE_STATES_SQL, FINAL_STATES, JobState
from common.db import driver_sql
from common.models import Job

TABLE = Job.__tablename__
QUEUED = JobState.QUEUED.value
RUNNING = JobState.RUNNING.value
CANCELLED = JobState.CANCELLED.value
FAILED = JobState.FAILED.value
FINAL_SQL = ", ".join(f"'{state.value}'" for state in sorted(FINAL_STATES))


def _sql(statement: str) -> TextClause:
    """A statement with `{jobs}`, `{queued}`, `{running}`, ... filled in from the contract."""
    return text(
        statement.format(
            jobs=TABLE, queued=QUEUED, running=RUNNING, cancelled=CANCELLED, failed=FAILED,
            final=FINAL_SQL, active=ACTIVE_STATES_SQL,
        )
    )  # fmt: skip


# --- a run (the worker's runner) ---------------------------------------------------

# queued -> running, or deferred (stays queued, counted as sent) when the owner is
# at the running cap. No row: the job is not queued (any more).
CLAIM = _sql("SELECT * FROM job_claim(:id, :run_id, :lease, :cap)")
# The lease, renewed while the run is its job's; `cancel_requested` tells the run to stop.
RENEW = _sql(
    """
    UPDATE {jobs} SET lease_expires_at = now() + make_interval(secs => :lease)
     WHERE id = :id AND run_id = :run_id AND state = '{running}'
    RETURNING cancel_requested
    """
)
PROGRESS = _sql(
    """
    UPDATE {jobs} SET progress = :progress,
           lease_expires_at = now() + make_interval(secs => :lease)
     WHERE id = :id AND run_id = :run_id AND state = '{running}'
    RETURNING cancel_requested
    """
)
# running -> succeeded | failed | cancelled, and the owner's oldest deferred job
# (`next_id`, already marked sent) for the caller to send. No row: not the run's.
FINISH = _sql(
    """
    SELECT * FROM job_finish(:id, :run_id, :state, CAST(:result AS jsonb), :error,
                             CAST(:final_progress AS smallint))
    """
)
# running -> queued: a run gives its job back for a retry (a new message follows).
RELEASE = _sql(
    """
    UPDATE {jobs} SET state = '{queued}', run_id = NULL, lease_expires_at = NULL,
           sent_at = now()
     WHERE id = :id AND run_id = :run_id AND state = '{running}'
    """
)
# The owner's oldest deferred job, marked sent, for a slot freed other than by a finish.
HAND_OFF = _sql("SELECT * FROM job_hand_off(:owner_id)")
# A send that failed: the relay sends it.
UNSEND = _sql("UPDATE {jobs} SET sent_at = NULL WHERE id = :id AND state = '{queued}'")

# --- maintenance (the worker's scheduled tasks) --------------------------------------

# Queued jobs whose message was never sent (the API could not reach the broker),
# or was sent long ago and never claimed (the broker lost it). Marked sent in the
# statement that picks them, committed before sending, so no row lock is held
# while talking to the broker; a failed send puts sent_at back (`UNMARK_SENT`).
TAKE_UNSENT = _sql(
    """
    UPDATE {jobs} SET sent_at = now()
     WHERE id IN (SELECT id FROM {jobs}
                   WHERE state = '{queued}'
                     AND ((sent_at IS NULL
                           AND created_at < now() - make_interval(secs => :grace))
                          OR sent_at < now() - make_interval(secs => :resend_after))
                   ORDER BY created_at
                   LIMIT :batch
                     FOR UPDATE SKIP LOCKED)
    RETURNING id, kind, params, request_id, traceparent
    """
)
UNMARK_SENT = _sql("UPDATE {jobs} SET sent_at = NULL WHERE id = ANY(:ids) AND state = '{queued}'")
# running -> queued | cancelled | failed: running jobs whose lease lapsed (their
# worker is gone). Requeued for the relay, cancelled if asked, failed after the
# last attempt.
SWEEP = _sql(
    """
    UPDATE {jobs}
       SET state = CASE WHEN cancel_requested THEN '{cancelled}'
                        WHEN attempt >= :max_attempts THEN '{failed}'
                        ELSE '{queued}' END,
           error = CASE WHEN NOT cancel_requested AND attempt >= :max_attempts
                        THEN 'worker lost ' || attempt || ' times' END,
           finished_at = CASE WHEN cancel_requested OR attempt >= :max_attempts
                              THEN now() END,
           run_id = NULL, lease_expires_at = NULL, sent_at = NULL
     WHERE id IN (SELECT id FROM {jobs}
                   WHERE state = '{running}' AND lease_expires_at < now()
                   ORDER BY lease_expires_at LIMIT :batch FOR UPDATE SKIP LOCKED)
    RETURNING id, owner_id, state, attempt, request_id
    """
)
# Finished jobs past their retention.
PURGE = _sql(
    """
    DELETE FROM {jobs} WHERE id IN (
        SELECT id FROM {jobs}
         WHERE state IN ({final})
           AND finished_at < now() - make_interval(days => 0, secs => :retention)
         LIMIT :batch)
    """
)

# --- reads of the worker -------------------------------------------------------------

# How long the API's intake holds a round's `sent_at` marks for the next round's insert
# to carry them (`api.jobs.intake`): a job may be sent and not yet marked for this long.
MARK_DELAY = 0.25
# Queued jobs unsent for longer than this: a younger one may be sent, its mark on the way.
BACKLOG_AFTER_SECONDS = 4 * MARK_DELAY
OUTBOX_BACKLOG = _sql(
    """
    SELECT count(*) FROM {jobs}
     WHERE state = '{queued}' AND sent_at IS NULL
       AND created_at < now() - make_interval(secs => :after)
    """
)
# Counts and duration percentiles of an owner's jobs but one, by kind and state.
SUMMARY = _sql(
    """
    SELECT kind, state, count(*) AS jobs,
           percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds) AS p50,
           percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds) AS p95,
           max(seconds) AS max
      FROM (SELECT kind, state, owner_id, id,
                   extract(epoch FROM finished_at - started_at) AS seconds
              FROM {jobs}) AS timed
     WHERE owner_id = :owner_id AND id <> :job_id
     GROUP BY GROUPING SETS ((kind, state), (kind), ())
     ORDER BY kind NULLS LAST, state NULLS LAST
    """
)

# --- the API (asyncpg: `$n` parameters) ---------------------------------------------

# One intake round (`job_intake`): the round's owners' locks in order, the previous
# round's jobs marked sent, then each new job found by its Idempotency-Key or
# inserted (as queued) within the owner's active-job limit. Rows found or
# inserted, with their input's 1-based `ord` and whether they `existed`.
INTAKE = "SELECT * FROM job_intake($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
# Planned at each call, for the ids given (migration 0006): a cached plan made while
# the table was small would scan all of it.
MARK_SENT = "SELECT job_mark_sent($1::uuid[])"


def read_job(columns: list[str]) -> str:
    """One job by id and owner (`$1`, `$2`), its `columns`: for a prepared statement."""
    return driver_sql(
        select(*(Job.__table__.c[name] for name in columns)).where(
            Job.id == bindparam("job_id"), Job.owner_id == bindparam("owner_id")
        ),
        "job_id",
        "owner_id",
    )


def list_query(
    owner_id: uuid.UUID,
    *,
    limit: int,
    state: str | None,
    kind: str | None,
    after: tuple[datetime, uuid.UUID] | None,
) -> Select[Job]:
    """An owner's jobs, newest first, `limit` of them after the `after` cursor (keyset)."""
    query = select(Job).where(Job.owner_id == owner_id)
    if state is not None:
        query = query.where(Job.state == state)
    if kind is not None:
        query = query.where(Job.kind == kind)
    if after is not None:
        query = query.where(tuple_(Job.created_at, Job.id) < tuple_(*after))
    return query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit)


def cancel_queued(owner_id: uuid.UUID, job_id: uuid.UUID, now: datetime) -> ReturningUpdate[Job]:
    """queued -> cancelled, at once (the owner's job only); returns the job."""
    return (
        update(Job)
        .where(Job.id == job_id, Job.owner_id == owner_id, Job.state == QUEUED)
        .values(state=CANCELLED, finished_at=now)
        .returning(Job)
        .execution_options(populate_existing=True)
    )


def request_cancel(owner_id: uuid.UUID, job_id: uuid.UUID) -> ReturningUpdate[Job]:
    """A running job is asked to stop at its next checkpoint; returns the job."""
    return (
        update(Job)
        .where(Job.id == job_id, Job.owner_id == owner_id, Job.state == RUNNING)
        .values(cancel_requested=True)
        .returning(Job)
        .execution_options(populate_existing=True)
    )


def get_query(owner_id: uuid.UUID, job_id: uuid.UUID) -> Select[Job]:
    """The owner's job by id (someone else's is not found, the same as a missing one)."""
    return select(Job).where(Job.id == job_id, Job.owner_id == owner_id)

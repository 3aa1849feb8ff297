"""jobs: deferred queued jobs, and the claim, finish and hand-off as one call each

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30 06:00:00.000000

The per-user running cap (`JOBS_MAX_RUNNING_PER_USER`) needs a claim that
counts the owner's running jobs after taking the owner's turn (an advisory
lock), and a finish that, holding the same turn, hands the owner's oldest
deferred job back to the queue. In one SQL statement the count would read the
snapshot taken before the lock was granted; in a PL/pgSQL function each
statement takes a fresh one, so the whole exchange is one round trip and exact.

A job the cap held back stays `queued` with `deferred` set: the finish of the
owner's running job sends it again (only then, so no job is sent twice when
nothing was held back), and the relay's resend remains the backstop.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A migration keeps its own copy of every state name: it must not change later.
_DEFERRED_PREDICATE = "state = 'queued' AND deferred"

# The owner's turn: one advisory lock key per owner (class 15, as the worker used before).
_HAND_OFF = """
CREATE FUNCTION job_hand_off(p_owner uuid)
RETURNS TABLE (id uuid, kind varchar, params jsonb, request_id varchar, traceparent varchar)
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_owner::text, 15));
    RETURN QUERY
        UPDATE jobs AS j SET deferred = false, sent_at = now()
         WHERE j.id = (SELECT d.id FROM jobs AS d
                        WHERE d.owner_id = p_owner AND d.state = 'queued' AND d.deferred
                        ORDER BY d.created_at LIMIT 1
                          FOR UPDATE SKIP LOCKED)
        RETURNING j.id, j.kind::varchar, j.params, j.request_id::varchar,
                  j.traceparent::varchar;
END
$$
"""

_CLAIM = """
CREATE FUNCTION job_claim(p_job uuid, p_run uuid, p_lease double precision, p_cap integer)
RETURNS TABLE (deferred boolean, owner_id uuid, kind varchar, params jsonb, attempt integer,
               cancel_requested boolean, request_id varchar, traceparent varchar)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_owner uuid;
BEGIN
    SELECT j.owner_id INTO v_owner FROM jobs AS j WHERE j.id = p_job AND j.state = 'queued';
    IF NOT FOUND THEN
        RETURN;  -- not queued (any more): no row
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(v_owner::text, 15));
    -- A fresh snapshot: it sees every claim and finish committed before the lock came.
    IF (SELECT count(*) FROM jobs AS mine
         WHERE mine.owner_id = v_owner AND mine.state = 'running') >= p_cap THEN
        RETURN QUERY
            UPDATE jobs AS j SET sent_at = now(), deferred = true
             WHERE j.id = p_job AND j.state = 'queued'
            RETURNING true, j.owner_id, j.kind::varchar, j.params, j.attempt,
                      j.cancel_requested, j.request_id::varchar, j.traceparent::varchar;
        RETURN;
    END IF;
    RETURN QUERY
        UPDATE jobs AS j
           SET state = 'running', run_id = p_run, attempt = j.attempt + 1, deferred = false,
               lease_expires_at = now() + make_interval(secs => p_lease),
               started_at = coalesce(j.started_at, now()), sent_at = coalesce(j.sent_at, now())
         WHERE j.id = p_job AND j.state = 'queued'
        RETURNING false, j.owner_id, j.kind::varchar, j.params, j.attempt,
                  j.cancel_requested, j.request_id::varchar, j.traceparent::varchar;
END
$$
"""

_FINISH = """
CREATE FUNCTION job_finish(p_job uuid, p_run uuid, p_state varchar, p_result jsonb,
                           p_error text, p_final_progress smallint)
RETURNS TABLE (progress smallint, next_id uuid, next_kind varchar, next_params jsonb,
               next_request_id varchar, next_traceparent varchar)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_owner uuid;
    v_progress smallint;
BEGIN
    UPDATE jobs AS j
       SET state = p_state, result = p_result, error = p_error,
           progress = coalesce(p_final_progress, j.progress),
           finished_at = now(), lease_expires_at = NULL
     WHERE j.id = p_job AND j.run_id = p_run AND j.state = 'running'
    RETURNING j.owner_id, j.progress INTO v_owner, v_progress;
    IF NOT FOUND THEN
        RETURN;  -- no longer this run's job: no row
    END IF;
    -- The owner's turn, then their oldest deferred job (none unless the cap held one back).
    RETURN QUERY
        SELECT v_progress, n.id, n.kind, n.params, n.request_id, n.traceparent
          FROM (SELECT 1) AS one LEFT JOIN job_hand_off(v_owner) AS n ON true;
END
$$
"""


def upgrade() -> None:
    # A constant default: adding the column rewrites nothing, even on a big table.
    op.add_column(
        "jobs",
        sa.Column("deferred", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.execute(_HAND_OFF)
    op.execute(_CLAIM)
    op.execute(_FINISH)
    # CONCURRENTLY: built while the running release keeps inserting jobs.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_jobs_owner_deferred",
            "jobs",
            ["owner_id", "created_at"],
            unique=False,
            postgresql_where=sa.text(_DEFERRED_PREDICATE),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_jobs_owner_deferred",
            table_name="jobs",
            postgresql_where=sa.text(_DEFERRED_PREDICATE),
            postgresql_concurrently=True,
            if_exists=True,
        )
    op.execute("DROP FUNCTION job_finish(uuid, uuid, varchar, jsonb, text, smallint)")
    op.execute("DROP FUNCTION job_claim(uuid, uuid, double precision, integer)")
    op.execute("DROP FUNCTION job_hand_off(uuid)")
    op.drop_column("jobs", "deferred")

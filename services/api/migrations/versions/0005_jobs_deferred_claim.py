"""jobs: deferred queued jobs; the intake, claim, finish and hand-off as one call each

Create Date: 2026-11-30 06:00:00.000000

The per-user running cap (`JOBS_MAX_RUNNING_PER_USER`) needs a claim that
counts the owner's running jobs after taking the owner's turn (an advisory
lock), and a finish that, holding the same turn, hands the owner's oldest
deferred job back to the queue. In one SQL statement the count would read the
snapshot taken before the lock was granted; in a PL/pgSQL function each
statement takes a fresh one, so the whole exchange is one round trip and exact.

The API's intake round (locks, the previous round's `sent_at`, the insert)
is one call too, instead of BEGIN, two statements and COMMIT.

A job the cap held back stays `queued` with `deferred` set: the finish of the
owner's running job sends it again (only then, so no job is sent twice when
nothing was held back), and the relay's resend remains the backstop.
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"

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

# The owner's turn first, then the row: no function here waits for the lock while it
# holds a row lock (a claim waiting on that row would close a cycle).
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
    SELECT j.owner_id INTO v_owner
      FROM jobs AS j WHERE j.id = p_job AND j.run_id = p_run AND j.state = 'running';
    IF NOT FOUND THEN
        RETURN;  -- no longer this run's job: no row
    END IF;
    PERFORM pg_advisory_xact_lock(hashtextextended(v_owner::text, 15));
    UPDATE jobs AS j
       SET state = p_state, result = p_result, error = p_error,
           progress = coalesce(p_final_progress, j.progress),
           finished_at = now(), lease_expires_at = NULL
     WHERE j.id = p_job AND j.run_id = p_run AND j.state = 'running'
    RETURNING j.progress INTO v_progress;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    -- Their oldest deferred job (none unless the cap held one back).
    RETURN QUERY
        SELECT v_progress, n.id, n.kind, n.params, n.request_id, n.traceparent
          FROM (SELECT 1) AS one LEFT JOIN job_hand_off(v_owner) AS n ON true;
END
$$
"""

# The API's intake round in one call (api/jobs/intake.py): the per-user locks of
# the round's owners, in their order (so two API processes cannot deadlock); then
# the previous round's jobs marked sent; then, with a snapshot that sees every job
# committed before the locks came, each new job either finds its Idempotency-Key's
# job or is inserted if its owner stays within the active-job limit (counting the
# round's earlier jobs of the same owner). Returns the rows found or inserted.
_INTAKE = """
CREATE FUNCTION job_intake(
    p_owners uuid[], p_sent uuid[], p_ids uuid[], p_owner_ids uuid[], p_kinds text[],
    p_params jsonb[], p_keys text[], p_hashes text[], p_request_ids text[],
    p_traceparents text[], p_max_active integer, p_state text)
RETURNS TABLE (ord bigint, existed boolean, id uuid, owner_id uuid, kind varchar,
               state varchar, progress smallint, params jsonb, result jsonb, error text,
               request_id varchar, traceparent varchar, request_hash varchar,
               created_at timestamptz, started_at timestamptz, finished_at timestamptz)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('jobs:' || o.owner_id::text, 0))
       FROM unnest(p_owners) WITH ORDINALITY AS o(owner_id, n)
      ORDER BY o.n;
    UPDATE jobs AS j SET sent_at = now() WHERE j.id = ANY(p_sent) AND j.sent_at IS NULL;
    RETURN QUERY
    WITH input AS (
        SELECT * FROM unnest(p_ids, p_owner_ids, p_kinds, p_params, p_keys, p_hashes,
                             p_request_ids, p_traceparents)
               WITH ORDINALITY AS i(id, owner_id, kind, params, idempotency_key,
                                    request_hash, request_id, traceparent, ord)
    ),
    existing AS (
        SELECT i.ord, j.id
          FROM input AS i JOIN jobs AS j
            ON j.owner_id = i.owner_id AND j.idempotency_key = i.idempotency_key
    ),
    fresh AS (
        SELECT i.*, row_number() OVER (PARTITION BY i.owner_id ORDER BY i.ord) AS nth
          FROM input AS i
         WHERE i.ord NOT IN (SELECT e.ord FROM existing AS e)
    ),
    active AS (
        SELECT j.owner_id, count(*) AS n
          FROM jobs AS j
         WHERE j.owner_id IN (SELECT i.owner_id FROM input AS i)
           AND j.state IN ('queued', 'running')
         GROUP BY j.owner_id
    ),
    inserted AS (
        INSERT INTO jobs AS j (id, owner_id, kind, params, idempotency_key, request_hash,
                               request_id, traceparent, state, progress)
        SELECT f.id, f.owner_id, f.kind, f.params, f.idempotency_key, f.request_hash,
               f.request_id, f.traceparent, p_state, 0
          FROM fresh AS f LEFT JOIN active AS a ON a.owner_id = f.owner_id
         WHERE coalesce(a.n, 0) + f.nth <= p_max_active
        RETURNING j.id, j.owner_id, j.kind::varchar, j.state::varchar, j.progress, j.params,
                  j.result, j.error, j.request_id::varchar, j.traceparent::varchar,
                  j.request_hash::varchar, j.created_at, j.started_at, j.finished_at
    )
    SELECT i.ord, false, ins.* FROM inserted AS ins JOIN input AS i ON i.id = ins.id
    UNION ALL
    SELECT e.ord, true, j.id, j.owner_id, j.kind::varchar, j.state::varchar, j.progress,
           j.params, j.result, j.error, j.request_id::varchar, j.traceparent::varchar,
           j.request_hash::varchar, j.created_at, j.started_at, j.finished_at
      FROM existing AS e JOIN jobs AS j ON j.id = e.id;
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
    op.execute(_INTAKE)
    # CONCURRENTLY: built while the running release keeps inserting jobs.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_jobs_owner_deferred",
            "jobs",
            ["owner_id", "created_at"],
            postgresql_where=sa.text(_DEFERRED_PREDICATE),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS ix_jobs_owner_deferred")
    op.execute(
        "DROP FUNCTION job_intake(uuid[], uuid[], uuid[], uuid[], text[], jsonb[], text[],"
        " text[], text[], text[], integer, text)"
    )
    op.execute("DROP FUNCTION job_finish(uuid, uuid, varchar, jsonb, text, smallint)")
    op.execute("DROP FUNCTION job_claim(uuid, uuid, double precision, integer)")
    op.execute("DROP FUNCTION job_hand_off(uuid)")
    op.drop_column("jobs", "deferred")

"""jobs: the intake's plans stay right while the table grows; the sent mark planned per call

Create Date: 2026-11-30 09:00:00.000000

PL/pgSQL keeps a plan per statement and connection, made when the statement
first ran, and makes it again only when the table's statistics change (an
ANALYZE). Made while `jobs` was small, revision 0005's plans scanned it:

- the previous round's sent mark, `id = ANY(p_sent)`, as a sequential scan
  (cheaper than index probes over a few pages);
- the Idempotency-Key lookup, and the read of the jobs it found, as hash joins
  over sequential scans;
- the active-job count as one pass over every owner's active jobs, not a
  probe per owner, once a few users held many.

So every intake round read the whole table until autovacuum's next ANALYZE:
0.43 ms per call on a fresh table, 1.3-4.8 ms once 4,000-20,000 jobs had come
in (measured in one session, the same calls). Now:

- `job_mark_sent` runs its UPDATE through EXECUTE: planned at each call for
  the ids it is given, so always by the primary key;
- the Idempotency-Key lookup is a probe per key of
  `uq_jobs_owner_idempotency_key` that reads the job it finds, and the count
  a subquery per owner of the round that can only probe
  `ix_jobs_owner_active`, and stops at the limit;
- the function's main statement keeps its generic plan (`plan_cache_mode`):
  it is now a probe per owner and per key whatever the table holds, and
  planned anew at each call it would cost more than it runs.

This revision's intake is revision 0005's with those parts replaced; the
downgrade restores 0005's.
"""

import importlib.util
from pathlib import Path
from types import ModuleType

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"

_MARK_SENT = """
CREATE FUNCTION job_mark_sent(p_ids uuid[])
RETURNS void
LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE 'UPDATE jobs SET sent_at = now() WHERE id = ANY($1) AND sent_at IS NULL'
      USING p_ids;
END
$$
"""

_INTAKE_SIGNATURE = (
    "job_intake(uuid[], uuid[], uuid[], uuid[], text[], jsonb[], text[], text[], text[],"
    " text[], integer, text)"
)

# (the text from which a part of 0005's intake starts, where the next part starts, the new part)
_PARTS = (
    (
        "LANGUAGE plpgsql AS $$",
        "#variable_conflict",
        """LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
""",
    ),
    (
        "    UPDATE jobs AS j SET sent_at",
        "    RETURN QUERY",
        """    IF cardinality(p_sent) > 0 THEN
        PERFORM job_mark_sent(p_sent);
    END IF;
""",
    ),
    (
        "    existing AS (",
        "    fresh AS (",
        """    existing AS (
        SELECT i.ord, true AS existed, k.*
          FROM input AS i
         CROSS JOIN LATERAL (
               SELECT j.id, j.owner_id, j.kind::varchar, j.state::varchar, j.progress,
                      j.params, j.result, j.error, j.request_id::varchar,
                      j.traceparent::varchar, j.request_hash::varchar, j.created_at,
                      j.started_at, j.finished_at
                 FROM jobs AS j
                WHERE j.owner_id = i.owner_id AND j.idempotency_key = i.idempotency_key
                  AND j.idempotency_key IS NOT NULL
                LIMIT 1) AS k
         WHERE i.idempotency_key IS NOT NULL
    ),
""",
    ),
    (
        "    active AS (",
        "    inserted AS (",
        """    active AS (
        SELECT o.owner_id,
               (SELECT count(*) FROM (SELECT FROM jobs AS j
                                       WHERE j.owner_id = o.owner_id
                                         AND j.state IN ('queued', 'running')
                                       LIMIT p_max_active) AS a) AS n
          FROM (SELECT DISTINCT i.owner_id FROM input AS i) AS o
    ),
""",
    ),
    (
        "    UNION ALL\n",
        "END\n",
        """    UNION ALL
    SELECT e.* FROM existing AS e;
""",
    ),
)


def _revision_0005() -> ModuleType:
    """Revision 0005, whose intake this one rewrites in part and the downgrade restores."""
    path = Path(__file__).with_name("0005_jobs_deferred_claim.py")
    spec = importlib.util.spec_from_file_location("revision_0005", path)
    if spec is None or spec.loader is None:
        raise RuntimeError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _intake() -> str:
    text: str = _revision_0005()._INTAKE.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    for start, end, new in _PARTS:
        head, found, rest = text.partition(start)
        if not found or end not in rest:
            raise RuntimeError(f"revision 0005's intake has no part {start!r}..{end!r}")
        text = head + new + end + rest.split(end, 1)[1]
    return text


def upgrade() -> None:
    op.execute(_MARK_SENT)
    op.execute(_intake())


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {_INTAKE_SIGNATURE}")
    op.execute(_revision_0005()._INTAKE)
    op.execute("DROP FUNCTION job_mark_sent(uuid[])")

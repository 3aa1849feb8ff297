"""jobs: the job functions never plan a sequential scan of the table

Create Date: 2026-12-01 04:30:00.000000

Revision 0006 made each of the intake's reads a probe per owner and per key,
but the planner still chooses between that probe and a sequential scan from
the table's statistics. After a mass delete (a purge of old jobs, users
deleted with theirs), VACUUM cuts the emptied pages off and ANALYZE records a
table of a few rows; a plan made then (every connection's plans are made
again after that ANALYZE) reads the whole table, which is as cheap as a probe
while it is that small. The table then grows, and every intake round reads
all of it, until autovacuum's next ANALYZE: in the bench the intake fell from
1,900 to 500 jobs/s within 20 s, `jobs` read sequentially 2,000 times a
second.

Every statement of the job functions (the API's `job_intake` and
`job_mark_sent`, the worker's `job_claim`, `job_finish` and `job_hand_off`)
reads `jobs` through an index by design (a job by id, the owner's active or
deferred jobs, a key), so they now run with `enable_seqscan = off`: the
planner takes a sequential scan only where no index can answer, whatever the
statistics say. It applies inside these functions only.
"""

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"

_FUNCTIONS = (
    "job_intake(uuid[], uuid[], uuid[], uuid[], text[], jsonb[], text[], text[], text[],"
    " text[], integer, text)",
    "job_mark_sent(uuid[])",
    "job_claim(uuid, uuid, double precision, integer)",
    "job_finish(uuid, uuid, varchar, jsonb, text, smallint)",
    "job_hand_off(uuid)",
)


def upgrade() -> None:
    for function in _FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET enable_seqscan = off")


def downgrade() -> None:
    for function in _FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET enable_seqscan")

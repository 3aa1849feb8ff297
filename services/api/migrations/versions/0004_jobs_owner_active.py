"""jobs: an index of each user's active jobs, for the per-user limit

Create Date: 2026-11-30 02:40:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"

# As `ACTIVE_STATES_SQL` spells them (a migration keeps its own copy: it must not change).
_PREDICATE = "state IN ('queued', 'running')"


def upgrade() -> None:
    # CONCURRENTLY: built while the running release keeps inserting jobs (a
    # preDeployCommand runs before the old instances stop); it needs autocommit.
    with op.get_context().autocommit_block():
        op.create_index(
            "ix_jobs_owner_active",
            "jobs",
            ["owner_id"],
            unique=False,
            postgresql_where=sa.text(_PREDICATE),
            postgresql_concurrently=True,
            if_not_exists=True,
        )


def downgrade() -> None:
    with op.get_context().autocommit_block():
        op.drop_index(
            "ix_jobs_owner_active",
            table_name="jobs",
            postgresql_where=sa.text(_PREDICATE),
            postgresql_concurrently=True,
            if_exists=True,
        )

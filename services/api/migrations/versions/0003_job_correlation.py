"""job correlation: the creating request's id and W3C traceparent

Create Date: 2026-11-26 16:45:00.000000
"""

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"


def upgrade() -> None:
    # Nullable without a default: adding them rewrites nothing, even on a big table.
    op.add_column("jobs", sa.Column("request_id", sa.String(length=128), nullable=True))
    op.add_column("jobs", sa.Column("traceparent", sa.String(length=55), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "traceparent")
    op.drop_column("jobs", "request_id")

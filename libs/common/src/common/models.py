"""The tables the API and the worker share: `jobs` (the users table is the API's own).

Declared on `common.db.Base`, so Alembic (through `api.models`) sees one metadata.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    SmallInteger,
    String,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from common.contracts.jobs import ACTIVE_STATES_SQL, JobState
from common.db import Base

_ALL_STATES = ", ".join(f"'{state.value}'" for state in JobState)


class Job(Base):
    """A long job a user asked for; the row is also the outbox of its Celery message."""

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint("progress BETWEEN 0 AND 100", name="progress_range"),
        CheckConstraint(f"state IN ({_ALL_STATES})", name="state_valid"),
        # Listing: a user's jobs, newest first, with a stable tie-break.
        Index("ix_jobs_owner_created", "owner_id", "created_at", "id"),
        # One job per (user, Idempotency-Key).
        Index(
            "uq_jobs_owner_idempotency_key",
            "owner_id",
            "idempotency_key",
            unique=True,
            postgresql_where=text("idempotency_key IS NOT NULL"),
        ),
        # The relay's scan: queued jobs never sent, or sent long ago and unclaimed.
        Index(
            "ix_jobs_queued_sent",
            "sent_at",
            "created_at",
            postgresql_where=text(f"state = '{JobState.QUEUED.value}'"),
        ),
        # A user's active jobs, counted for the per-user limit at every intake
        # round: without it the count reads every job the user ever had.
        Index(
            "ix_jobs_owner_active",
            "owner_id",
            postgresql_where=text(f"state IN ({ACTIVE_STATES_SQL})"),
        ),
        # The hand-off's pick: an owner's oldest job held back by the running cap.
        Index(
            "ix_jobs_owner_deferred",
            "owner_id",
            "created_at",
            postgresql_where=text(f"state = '{JobState.QUEUED.value}' AND deferred"),
        ),
        # The sweep's scan: running jobs by lease expiry.
        Index(
            "ix_jobs_running_lease",
            "lease_expires_at",
            postgresql_where=text(f"state = '{JobState.RUNNING.value}'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    owner_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(100))
    state: Mapped[str] = mapped_column(
        String(16), server_default=text(f"'{JobState.QUEUED.value}'")
    )
    progress: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    params: Mapped[dict[str, Any]] = mapped_column(JSONB, server_default=text("'{}'::jsonb"))
    result: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    request_hash: Mapped[str | None] = mapped_column(String(64))
    attempt: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    cancel_requested: Mapped[bool] = mapped_column(server_default=text("false"))
    run_id: Mapped[uuid.UUID | None]
    lease_expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    sent_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Queued, but held back by its owner's running cap: the finish of one of the
    # owner's jobs sends it again (`job_finish` and `job_hand_off`, migration 0005).
    deferred: Mapped[bool] = mapped_column(server_default=text("false"))
    # Correlation of the POST that created the job, for the worker's logs, events
    # and trace; kept on the row because the relay may send the message much later.
    request_id: Mapped[str | None] = mapped_column(String(128))
    traceparent: Mapped[str | None] = mapped_column(String(55))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

"""Jobs: accept (with idempotency and a per-user limit), read, list, cancel, dispatch."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError
from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from api.jobs.errors import (
    InvalidJob,
    JobNotCancellable,
    JobNotFound,
)
from api.jobs.intake import JobIntake, JobRow, NewJob
from common import jobs_repository, publisher
from common.contracts import events
from common.contracts.job_kinds import JOB_KINDS, JobKind
from common.contracts.jobs import JobState
from common.db import driver_connection
from common.errors import field_errors
from common.metrics import JOBS_ACCEPTED
from common.models import Job
from common.request_context import get_request_id
from common.settings import CommonSettings
from common.tracing import current_traceparent


def enabled_kinds(settings: CommonSettings) -> list[JobKind]:
    """The kinds this deployment accepts (demo kinds per `DEMO_KINDS_ENABLED`)."""
    return [spec for name, spec in JOB_KINDS.items() if settings.is_kind_enabled(name)]


def validate_job(kind: str, params: dict[str, Any], *, settings: CommonSettings) -> dict[str, Any]:
    """The params normalized by the kind's model; `InvalidJob` naming the field otherwise.

    A kind this deployment does not run, or params whose run could outlast the
    kind's ceiling (`JOB_MAX_RUN_SECONDS`), are refused as well.
    """
    spec = JOB_KINDS.get(kind) if settings.is_kind_enabled(kind) else None
    if spec is None:
        known = ", ".join(sorted(kind.name for kind in enabled_kinds(settings)))
        raise InvalidJob(
            f"Unknown job kind {kind[:100]!r}; known kinds: {known}.",
            extra={
                "errors": [{"loc": ["body", "kind"], "msg": "unknown job kind", "type": "enum"}]
            },
        )
    try:
        model = spec.params_model.model_validate(params)
    except ValidationError as exc:
        errors = field_errors(exc.errors())
        for error in errors:
            error["loc"] = ["body", "params", *error["loc"]]
        fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
        raise InvalidJob(f"Invalid params for {kind}: {fields}", extra={"errors": errors}) from exc
    normalized = model.model_dump(mode="json", exclude_none=True)
    ceiling = settings.job_max_run_seconds.get(kind)
    _, hard = spec.limits(normalized)
    if ceiling is not None and hard > ceiling:
        raise InvalidJob(
            f"This {kind} job could run for {hard}s; this deployment allows {ceiling}s.",
            extra={"errors": [{"loc": ["body", "params"], "msg": "run too long", "type": "value"}]},
        )
    return normalized


def request_hash(kind: str, params: dict[str, Any]) -> str:
    """What an Idempotency-Key's body is compared by: a digest of the kind and params."""
    canonical = json.dumps({"kind": kind, "params": params}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


async def create_job(
    intake: JobIntake,
    *,
    owner_id: uuid.UUID,
    kind: str,
    params: dict[str, Any],
    idempotency_key: str | None,
    settings: CommonSettings,
    traceparent: str | None = None,
) -> tuple[JobRow, bool]:
    """Validate, commit and send a queued job (`api.jobs.intake`); returns (job, created).

    The row keeps the creating request's id and trace (the current span's, or
    a valid incoming `traceparent`), so every message sent for the job (now
    or by the relay) carries them. With an Idempotency-Key seen before,
    returns that job (created False) if the body matches and raises
    `IdempotencyKeyReused` if not; `TooManyActiveJobs` beyond the per-user
    limit (exact across processes).
    """
    params = validate_job(kind, params, settings=settings)
    job = NewJob(
        owner_id=owner_id,
        kind=kind,
        params=params,
        idempotency_key=idempotency_key,
        request_hash=request_hash(kind, params),
        request_id=get_request_id(),
        traceparent=current_traceparent(traceparent),
    )
    row, created = await intake.submit(job)
    if created:
        JOBS_ACCEPTED.labels(row.kind).inc()
    return row, created


# Built once, for the driver: the hot read is one prepared statement (job_id, owner_id).
_READ_JOB = jobs_repository.read_job(list(JobRow.__dataclass_fields__))


async def read_job(engine: AsyncEngine, *, owner_id: uuid.UUID, job_id: uuid.UUID) -> JobRow:
    """The caller's job, in one statement; `JobNotFound` otherwise."""
    async with driver_connection(engine) as connection:
        row = await connection.fetchrow(_READ_JOB, job_id, owner_id)
    if row is None:
        raise JobNotFound(f"No job {job_id}.")
    return JobRow.from_record(row)


async def get_job(session: AsyncSession, *, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """The caller's job; `JobNotFound` for a missing job and for someone else's alike."""
    job = await session.scalar(jobs_repository.get_query(owner_id, job_id))
    if job is None:
        raise JobNotFound(f"No job {job_id}.")
    return job


def _encode_cursor(job: Job) -> str:
    raw = json.dumps([job.created_at.isoformat(), str(job.id)]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = json.loads(base64.urlsafe_b64decode(padded))
        # Anything but the two strings we wrote (a list, a number, a naive time) is refused.
        if not isinstance(created, str) or not isinstance(job_id, str):
            raise TypeError("cursor parts must be strings")
        created_at = datetime.fromisoformat(created)
        if created_at.tzinfo is None:
            raise ValueError("cursor time without a time zone")
        return created_at, uuid.UUID(job_id)
    except (ValueError, TypeError) as exc:
        raise InvalidJob(
            "The cursor is not one this API gave out.",
            extra={
                "errors": [
                    {"loc": ["query", "cursor"], "msg": "invalid cursor", "type": "value_error"}
                ]
            },
        ) from exc


async def list_jobs(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    state: JobState | None,
    kind: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Job], str | None]:
    """The caller's jobs, newest first, one page; keyset pagination on (created_at, id)."""
    query = jobs_repository.list_query(
        owner_id,
        limit=limit + 1,
        state=None if state is None else state.value,
        kind=kind,
        after=None if cursor is None else _decode_cursor(cursor),
    )
    jobs = list((await session.scalars(query)).all())
    next_cursor = _encode_cursor(jobs[limit - 1]) if len(jobs) > limit else None
    return jobs[:limit], next_cursor


async def cancel_job(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID,
    job_id: uuid.UUID,
    redis: Redis,
    prefix: str,
) -> Job:
    """Cancel the caller's job (`request_cancel`) and commit; announce a cancelled job.

    `job.cancelled` goes out once the cancel is committed; a job asked to stop
    is announced by the worker when it does.
    """
    job = await request_cancel(session, owner_id=owner_id, job_id=job_id)
    await session.commit()
    if job.state == JobState.CANCELLED:
        await publisher.apublish_quietly(
            redis,
            events.make_event(
                events.JOB_CANCELLED, user_id=job.owner_id, job_id=job.id, state="cancelled"
            ),
            prefix=prefix,
        )
    return job


async def request_cancel(session: AsyncSession, *, owner_id: uuid.UUID, job_id: uuid.UUID) -> Job:
    """Cancel a queued job now, or ask a running one to stop at its next checkpoint.

    Both are single guarded UPDATEs, so a cancel racing the worker's claim or
    finish can never produce a cancelled-then-succeeded job.
    """
    now = datetime.now(UTC)
    cancelled = await session.scalar(jobs_repository.cancel_queued(owner_id, job_id, now))
    if cancelled is not None:
        return cancelled
    requested = await session.scalar(jobs_repository.request_cancel(owner_id, job_id))
    if requested is not None:
        return requested
    job = await get_job(session, owner_id=owner_id, job_id=job_id)
    raise JobNotCancellable(f"Job {job.id} has already {job.state}.")

"""The event schema and the Redis names it travels on (`common.publisher` sends it).

Each event goes to its owner's pub/sub channel (live delivery) and to the
owner's capped Redis Stream (replay after a reconnect). The stream entry id is
the event id, so a client resumes from the last id it saw.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field

JOB_QUEUED = "job.queued"
JOB_STARTED = "job.started"
JOB_PROGRESS = "job.progress"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
JOB_REQUEUED = "job.requeued"

STREAM_MAXLEN = 1000


class Event(BaseModel):
    """What the worker (and the API) tell a user about their jobs."""

    id: str | None = Field(default=None, description="Stream entry id, set when published")
    type: str
    ts: datetime
    user_id: uuid.UUID
    job_id: uuid.UUID | None = None
    data: dict[str, Any] = Field(default_factory=dict)
    request_id: str | None = Field(
        default=None, description="X-Request-ID of the request that caused it; omitted if none"
    )


def user_channel(prefix: str, user_id: uuid.UUID | str) -> str:
    """The pub/sub channel of one user's live events."""
    return f"{prefix}events:user:{user_id}"


def user_stream(prefix: str, user_id: uuid.UUID | str) -> str:
    """The capped stream of one user's recent events."""
    return f"{prefix}events:stream:{user_id}"


def make_event(
    type_: str,
    *,
    user_id: uuid.UUID,
    job_id: uuid.UUID | None = None,
    request_id: str | None = None,
    **data: Any,
) -> Event:
    """An event stamped now (UTC)."""
    return Event(
        type=type_,
        ts=datetime.now(UTC),
        user_id=user_id,
        job_id=job_id,
        data=data,
        request_id=request_id,
    )


def event_frame(event_id: str, body: str) -> str:
    """A stream entry's `event` field as the JSON `publish_event` publishes: id first."""
    # The same splice as common.publisher's script: a replayed event is the live one, byte
    # for byte.
    return '{"id":"' + event_id + '",' + body[1:]


def event_body(event: Event) -> str:
    """An event as the JSON its stream entry holds: no id (the stream assigns it)."""
    # request_id only when known: events about no request keep their old shape.
    exclude = {"id"} if event.request_id is not None else {"id", "request_id"}
    # Serialized by pydantic-core in one step: compact, and half the CPU of
    # model_dump and json.dumps (the worker writes three per job).
    return event.model_dump_json(exclude=exclude)

"""The event schema, the Redis names it travels on, and `publish_event`.

Each event goes to its owner's pub/sub channel (live delivery) and to the
owner's capped Redis Stream (replay after a reconnect). The stream entry id is
the event id, so a client resumes from the last id it saw. Both happen in one
atomic server-side script: one round trip, and the published copy carries the
id the stream assigned.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, Field
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.exceptions import NoScriptError

JOB_QUEUED = "job.queued"
JOB_STARTED = "job.started"
JOB_PROGRESS = "job.progress"
JOB_SUCCEEDED = "job.succeeded"
JOB_FAILED = "job.failed"
JOB_CANCELLED = "job.cancelled"
JOB_REQUEUED = "job.requeued"

STREAM_MAXLEN = 1000

# KEYS: stream, channel. ARGV: maxlen, event JSON without "id" (starts with "{").
_PUBLISH_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2])
local payload = '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2)
redis.call('PUBLISH', KEYS[2], payload)
return id
"""
_PUBLISH_SHA = hashlib.sha1(_PUBLISH_LUA.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)


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
    # The same splice as _PUBLISH_LUA, so a replayed event is byte-for-byte the live one.
    return '{"id":"' + event_id + '",' + body[1:]


def _body(event: Event) -> str:
    # request_id only when known: events about no request keep their old shape.
    exclude = {"id"} if event.request_id is not None else {"id", "request_id"}
    body = event.model_dump(mode="json", exclude=exclude)
    return json.dumps(body, separators=(",", ":"))


def publish_event(redis: Redis, event: Event, *, prefix: str = "") -> str:
    """Append to the owner's stream and publish on their channel; returns the event id."""
    keys = (user_stream(prefix, event.user_id), user_channel(prefix, event.user_id))
    arguments = (len(keys), *keys, STREAM_MAXLEN, _body(event))
    # EVALSHA by hand: redis-py's Script wrapper costs as much CPU as the
    # round trip (the worker publishes three events per job).
    try:
        event_id = redis.execute_command("EVALSHA", _PUBLISH_SHA, *arguments)  # type: ignore[no-untyped-call]
    except NoScriptError:  # a restarted or flushed Redis: EVAL caches it again
        event_id = redis.execute_command("EVAL", _PUBLISH_LUA, *arguments)  # type: ignore[no-untyped-call]
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


async def queue_publish(pipeline: AsyncPipeline, event: Event, *, prefix: str = "") -> None:
    """Queue `publish_event` on an asyncio pipeline (nothing is sent until it executes)."""
    keys = [user_stream(prefix, event.user_id), user_channel(prefix, event.user_id)]
    await pipeline.register_script(_PUBLISH_LUA)(
        keys=keys, args=[STREAM_MAXLEN, _body(event)], client=pipeline
    )


async def apublish_event(redis: AsyncRedis, event: Event, *, prefix: str = "") -> str:
    """`publish_event` for an asyncio Redis client."""
    keys = [user_stream(prefix, event.user_id), user_channel(prefix, event.user_id)]
    script = redis.register_script(_PUBLISH_LUA)
    event_id = await script(keys=keys, args=[STREAM_MAXLEN, _body(event)])
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)

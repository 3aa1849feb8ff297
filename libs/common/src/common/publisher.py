"""`publish_event`: an event onto its owner's stream and channel, in one atomic script.

Both happen in one server-side script: one round trip, and the published copy
carries the id the stream assigned (the schema and the names are in
`common.contracts.events`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.asyncio.client import Pipeline as AsyncPipeline
from redis.exceptions import NoScriptError

from common.contracts.events import STREAM_MAXLEN, Event, event_body, user_channel, user_stream
from common.pipelined import PipelinedWriter

# KEYS: stream, channel. ARGV: maxlen, event JSON without "id" (starts with "{").
_PUBLISH_LUA = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'event', ARGV[2])
local payload = '{"id":"' .. id .. '",' .. string.sub(ARGV[2], 2)
redis.call('PUBLISH', KEYS[2], payload)
return id
"""
_logger = logging.getLogger("common.publisher")
_PUBLISH_SHA = hashlib.sha1(_PUBLISH_LUA.encode()).hexdigest()  # noqa: S324 (Redis names scripts so)


def _script_arguments(event: Event, prefix: str) -> tuple[object, ...]:
    """What follows the script (or its SHA) in EVAL / EVALSHA: numkeys, keys, then ARGV."""
    return (
        2,
        user_stream(prefix, event.user_id),
        user_channel(prefix, event.user_id),
        STREAM_MAXLEN,
        event_body(event),
    )


def publish_event(redis: Redis, event: Event, *, prefix: str = "") -> str:
    """Append to the owner's stream and publish on their channel; returns the event id."""
    arguments = _script_arguments(event, prefix)
    # EVALSHA by hand: redis-py's Script wrapper costs as much CPU as the
    # round trip (the worker publishes three events per job).
    try:
        event_id = redis.execute_command("EVALSHA", _PUBLISH_SHA, *arguments)  # type: ignore[no-untyped-call]
    except NoScriptError:  # a restarted or flushed Redis: EVAL caches it again
        event_id = redis.execute_command("EVAL", _PUBLISH_LUA, *arguments)  # type: ignore[no-untyped-call]
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


def send_event(writer: PipelinedWriter, event: Event, *, prefix: str = "") -> None:
    """`publish_event` without waiting for Redis (`common.pipelined`): for the worker's job events.

    Sent as EVAL with the script's text, so a restarted or flushed Redis that
    has no copy of it runs it all the same (there is no reply to see a NOSCRIPT
    in and try again); Redis finds it in its cache by the text's hash. The
    event's id is not returned: it is in the stream and in the published copy.
    Raises only if the command cannot be sent; a refusal is logged by the writer.
    """
    writer.send((("EVAL", _PUBLISH_LUA, *_script_arguments(event, prefix)),))


def send_event_quietly(writer: PipelinedWriter, event: Event, *, prefix: str = "") -> None:
    """`send_event`, a failure to send logged and not raised: the job's state is in Postgres."""
    try:
        send_event(writer, event, prefix=prefix)
    except Exception as exc:
        _logger.warning("event %s not published: %s", event.type, type(exc).__name__)


def queue_publishes(pipeline: AsyncPipeline, events: Sequence[Event], *, prefix: str = "") -> int:
    """Queue `publish_event` for each of `events` on an asyncio pipeline; the commands queued.

    The first is a SCRIPT LOAD, so the EVALSHAs after it find the script on a
    restarted or flushed Redis too, in the same round trip: redis-py's
    `Script` objects on a pipeline cost a SCRIPT EXISTS round trip of their own
    on every execute. Nothing is sent until the pipeline executes; its first
    result is the script's SHA, then one event id (or error) per event.
    """
    pipeline.execute_command("SCRIPT LOAD", _PUBLISH_LUA)
    for event in events:
        pipeline.execute_command("EVALSHA", _PUBLISH_SHA, *_script_arguments(event, prefix))
    return len(events) + 1


async def apublish_event(redis: AsyncRedis, event: Event, *, prefix: str = "") -> str:
    """`publish_event` for an asyncio Redis client."""
    keys = [user_stream(prefix, event.user_id), user_channel(prefix, event.user_id)]
    script = redis.register_script(_PUBLISH_LUA)
    event_id = await script(keys=keys, args=[STREAM_MAXLEN, event_body(event)])
    return event_id.decode() if isinstance(event_id, bytes) else str(event_id)


def publish_quietly(redis: Redis, event: Event, *, prefix: str = "") -> None:
    """`publish_event`, a failure logged and not raised: the job's state is in Postgres."""
    try:
        publish_event(redis, event, prefix=prefix)
    except Exception as exc:
        _logger.warning("event %s not published: %s", event.type, type(exc).__name__)


async def apublish_quietly(redis: AsyncRedis, event: Event, *, prefix: str = "") -> None:
    """`apublish_event`, a failure logged and not raised: the job's state is in Postgres."""
    try:
        await apublish_event(redis, event, prefix=prefix)
    except Exception as exc:
        _logger.warning("event %s not published: %s", event.type, type(exc).__name__)

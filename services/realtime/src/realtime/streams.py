"""Stream ids and reads of a user's capped event stream (the replay source)."""

from __future__ import annotations

import re
from typing import NamedTuple, cast

from redis.asyncio import Redis

from common.contracts.events import event_frame

_SHAPE = re.compile(r"^(\d{1,20})-(\d{1,20})$")


class StreamId(NamedTuple):
    """A Redis stream entry id, `ms-seq`; tuples order them as Redis does."""

    ms: int
    seq: int

    def __str__(self) -> str:
        return f"{self.ms}-{self.seq}"


ZERO = StreamId(0, 0)


def parse_stream_id(text: str) -> StreamId | None:
    """The id `text` names, or None if it is not of the form `ms-seq`."""
    match = _SHAPE.fullmatch(text.strip())
    if match is None:
        return None
    return StreamId(int(match[1]), int(match[2]))


Entry = tuple[StreamId, str]


def _entries(raw: object) -> list[Entry]:
    found = []
    for entry_id, fields in cast("list[tuple[bytes, dict[bytes, bytes]]]", raw):
        text_id = entry_id.decode()
        stream_id = parse_stream_id(text_id)
        assert stream_id is not None  # Redis assigned it
        found.append((stream_id, event_frame(text_id, fields[b"event"].decode())))
    return found


async def latest_id(redis: Redis, stream: str) -> StreamId:
    """The id of the stream's newest entry, or `ZERO` if it has none."""
    newest = _entries(await redis.xrevrange(stream, count=1))
    return newest[0][0] if newest else ZERO


async def holds(redis: Redis, stream: str, entry: StreamId) -> bool:
    """Whether the stream still holds `entry` (it is not trimmed away, nor lost)."""
    return bool(await redis.xrange(stream, min=str(entry), max=str(entry), count=1))


async def read_after(redis: Redis, stream: str, after: StreamId, *, count: int) -> list[Entry]:
    """Up to `count` entries newer than `after`, oldest first, as event frames."""
    return _entries(await redis.xrange(stream, min=f"({after}", max="+", count=count))

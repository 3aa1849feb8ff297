"""One WebSocket's delivery state: its bounded send queue, the position it has
reached in its user's stream, and the buffer that holds live events back while
missed ones are replayed.

Replay follows one rule, so there is no gap and no duplicate at the seam:
hold live events first, then read the stream after the client's position and
send, then send the held events, skipping every id already sent. Stream ids
are ordered and pub/sub delivers in stream order, so an id at or below the
last one sent can only be a copy of a replayed entry.

An idle socket costs no task here: a frame goes straight to the socket when
nothing is ahead of it (the server's synchronous send), else into a deque that
a pump task, started only then, drains in order and ends when it is empty. A
replay waits for room in the deque on one future.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError

from common.contracts.realtime import CLOSE_TRY_AGAIN_LATER
from common.metrics import WS_SLOW_CONSUMERS_CLOSED
from realtime.streams import ZERO, Entry, StreamId, holds, latest_id, read_after

_logger = logging.getLogger("realtime.session")
_RETRY_FIRST_DELAY = 0.05
_RETRY_MAX_DELAY = 2.0


class Session:
    """A connected socket of one user, as the fan-out and the replay see it."""

    def __init__(
        self,
        *,
        user_id: str,
        stream: str,
        redis: Redis,
        queue_size: int,
        replay_batch: int,
        send: Callable[[str], Awaitable[None]],
        send_nowait: Callable[[str], bool] | None = None,
        on_close: Callable[[int, str], None] | None = None,
        connection_id: str | None = None,
        token_issued_at_ms: int = 0,
    ) -> None:
        self.id = connection_id or uuid.uuid4().hex
        self.user_id = user_id
        # When the token (or the ticket's token) was issued: a revocation of the
        # user's tokens up to a later time closes this socket.
        self.token_issued_at_ms = token_issued_at_ms
        self.queue_size = queue_size
        self.close_code: int | None = None
        self.close_reason = ""
        self.last_seen = 0.0  # loop time of the client's last message (the idle sweep reads it)
        # Frames waiting for the socket: made for a backlog, dropped once it is sent.
        self._frames: deque[str] | None = None
        self._room: asyncio.Future[None] | None = None
        self._pump: asyncio.Task[None] | None = None
        self._stream = stream
        self._redis = redis
        self._batch = replay_batch
        # Held from birth: nothing goes out before `start` has decided where to begin.
        self._held: list[Entry] | None = []
        self._resync_pending = False
        self._last_sent: StreamId | None = None
        self._baseline = ZERO
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self._resync_task: asyncio.Task[None] | None = None
        self._send = send
        # The server's synchronous send (realtime.serving), used while nothing is queued.
        self._send_nowait = send_nowait
        self._on_close = on_close
        self._sending = False
        self._gone = False

    @property
    def closed(self) -> bool:
        """Whether the socket is ending: `close` was called, or a send to it failed."""
        return self.close_code is not None or self._gone

    @property
    def queued(self) -> int:
        """Frames waiting for the socket."""
        return len(self._frames) if self._frames is not None else 0

    @property
    def position(self) -> StreamId:
        """The id up to which this socket has every event (where a replay starts)."""
        return max(self._baseline, self._last_sent or ZERO)

    def close(self, code: int, reason: str) -> None:
        """Close the socket with `code`; the first reason wins. Queued frames are dropped."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        self._frames = None
        self._wake_replay()
        if self._on_close is not None:
            self._on_close(code, reason)

    def send_message(self, message: dict[str, Any]) -> None:
        """Queue a control message (hello, pong, error, ...) without waiting."""
        self._put_nowait(json.dumps(message, separators=(",", ":")))

    def deliver(self, entry: Entry) -> None:
        """A live event from the fan-out: queued, or held while a replay runs."""
        if self.closed:
            return
        if self._held is not None:
            if len(self._held) >= self.queue_size:
                self._overflow()
                return
            self._held.append(entry)
            return
        if not self._is_sent(entry[0]):
            self._put_nowait(entry[1])
            self._last_sent = entry[0]

    def hold(self, *, for_resync: bool = False) -> None:
        """Hold live events back from now on (until a replay has caught up)."""
        if self._held is None:
            self._held = []
        if for_resync:
            self._resync_pending = True

    async def start(self, last_event_id: StreamId | None) -> None:
        """First delivery: replay what followed `last_event_id` (if given), then live."""
        async with self._lock:
            if last_event_id is None:
                self._baseline = await latest_id(self._redis, self._stream)
            else:
                await self._replay(last_event_id)
            await self._release()

    async def resume(self, last_event_id: StreamId) -> None:
        """A client's `resume`: send again everything after `last_event_id`, then live."""
        async with self._lock:
            self.hold()
            self._last_sent = None
            await self._replay(last_event_id)
            await self._release()

    def schedule_resync(self) -> None:
        """After the subscription came back: replay what this socket missed meanwhile."""
        # One at a time: a resync already running retries until it has caught up.
        if self._resync_task is None or self._resync_task.done():
            self._resync_task = self._spawn(self._resync())

    def cancel_tasks(self) -> None:
        for task in self._tasks:
            task.cancel()

    async def _resync(self) -> None:
        delay = _RETRY_FIRST_DELAY
        while True:
            async with self._lock:
                self._resync_pending = False
                try:
                    await self._replay(self.position)
                except RedisError as exc:
                    # Still held: a pooled connection may be stale from before the
                    # restart, or Redis went away again; try again shortly.
                    self.hold(for_resync=True)
                    _logger.info("resync of %s failed: %s", self.id, type(exc).__name__)
                else:
                    await self._release()
                    return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX_DELAY)

    async def _replay(self, after: StreamId) -> None:
        if after != ZERO and not await holds(self._redis, self._stream, after):
            # Trimmed away (or lost with the data): what followed cannot be told,
            # so the client reloads its state from the API and goes on live.
            await self._put(json.dumps({"type": "reset", "last_event_id": str(after)}))
            self._last_sent = None
            self._baseline = await latest_id(self._redis, self._stream)
            return
        self._baseline = after
        cursor = after
        while True:
            entries = await read_after(self._redis, self._stream, cursor, count=self._batch)
            for entry in entries:
                await self._send_replayed(entry)
            if len(entries) < self._batch:
                return
            cursor = entries[-1][0]

    async def _release(self) -> None:
        # New live events keep joining the held list while we wait on the queue;
        # live delivery resumes only once it is empty, with no await in between.
        while self._held and not self._resync_pending:
            await self._send_replayed(self._held.pop(0))
        if not self._resync_pending:
            self._held = None

    async def _send_replayed(self, entry: Entry) -> None:
        if not self._is_sent(entry[0]):
            await self._put(entry[1])
            self._last_sent = entry[0]

    def _is_sent(self, entry_id: StreamId) -> bool:
        return self._last_sent is not None and entry_id <= self._last_sent

    async def _put(self, frame: str) -> None:
        # Waits for room: a replay is paced by the client, not dropped.
        while self.queued >= self.queue_size and not self.closed:
            self._room = asyncio.get_running_loop().create_future()
            try:
                await self._room
            finally:
                self._room = None
        if not self.closed:
            self._put_nowait(frame)

    def _put_nowait(self, frame: str) -> None:
        # Straight to the socket when nothing is ahead of the frame: no task switch and
        # no await per socket, the cost that dominates fan-out to many sockets.
        if self.closed:
            return
        if (
            self._send_nowait is not None
            and not self._sending
            and not self._frames
            and self._send_nowait(frame)
        ):
            return
        if self.queued >= self.queue_size:
            self._overflow()
            return
        if self._frames is None:
            self._frames = deque()
        self._frames.append(frame)
        if self._pump is None:
            self._pump = self._spawn(self._drain())

    async def _drain(self) -> None:
        """Send queued frames in order until none is left (the pump, started on demand)."""
        try:
            while self._frames:
                frame = self._frames.popleft()
                if not self._frames:
                    self._frames = None
                self._wake_replay()
                # While a frame is out of the deque but not yet sent, nothing may overtake it.
                self._sending = True
                try:
                    await self._send(frame)
                finally:
                    self._sending = False
        except Exception:
            self._gone = True
            self._frames = None
            self._wake_replay()
        finally:
            self._pump = None

    def _wake_replay(self) -> None:
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    def _overflow(self) -> None:
        if not self.closed:
            WS_SLOW_CONSUMERS_CLOSED.inc()
        self.close(CLOSE_TRY_AGAIN_LATER, "send queue full: the client reads too slowly")

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

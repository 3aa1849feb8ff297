"""The gunicorn worker class: uvicorn's, with the WebSocket limits from the settings."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections import deque
from typing import Any, cast

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]
from websockets.exceptions import InvalidState
from websockets.protocol import Protocol, State

from realtime.settings import RealtimeSettings, get_settings

# The ASGI scope extensions under which `CoalescingWebSocketProtocol` offers
# `send_text_nowait(text) -> bool` and `close_nowait(code, reason)` to the application.
SEND_NOWAIT_EXTENSION = "realtime.send_text_nowait"
CLOSE_NOWAIT_EXTENSION = "realtime.close_nowait"


class CoalescingWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` protocol, writing a socket's frames once per loop turn.

    The stock protocol makes one `write` syscall per message, reached through a
    task switch and an `await` per socket: under fan-out those are most of the
    CPU per delivered event. Here a text frame can also be sent synchronously
    (`send_text_nowait`, offered in the scope's extensions), and data frames are
    written when the event loop finishes its turn, together with every other
    frame of that socket from the same turn: one syscall per burst, no added
    latency. Anything else (close, a refused handshake), a socket paused by flow
    control, or one not yet open takes the stock path, after the pending frames.

    Per socket it holds less than the stock protocol, because an idle socket's
    memory is what limits how many one worker serves: the receive queue and the
    writable flag are a deque and one future (`_Inbox`, `_Flag`) rather than an
    `asyncio.Queue` and `asyncio.Event`, the handshake request and response are
    dropped once accepted, and the keepalive pings come from one timer per
    process (`_Heartbeat`) rather than one or two per socket.
    """

    _flush_scheduled = False
    # Frames of this loop turn, framed already (see `_text_frame`); None while idle.
    _pending: list[bytes] | None = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.queue = _Inbox()  # type: ignore[assignment]  # the subset of asyncio.Queue used
        self.writable = _Flag()  # type: ignore[assignment]  # the subset of asyncio.Event used
        self.writable.set()
        # One per server (so per event loop), kept on the state uvicorn shares.
        shared = getattr(server_state, "realtime_shared", None)
        if shared is None:
            shared = (_WriteBatch(self.loop), _Heartbeat(self.loop, config))
            server_state.realtime_shared = shared  # type: ignore[attr-defined]
        self._batch: _WriteBatch = shared[0]
        self._heartbeat: _Heartbeat = shared[1]

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # ASGI types extensions as dicts; ours are callables, read by realtime.endpoint.
        extensions = cast("dict[str, object]", self.scope.setdefault("extensions", {}))
        extensions[SEND_NOWAIT_EXTENSION] = self.send_text_nowait
        extensions[CLOSE_NOWAIT_EXTENSION] = self.close_nowait

    # Keepalive: the process-wide heartbeat pings this socket (see `_Heartbeat`).

    def start_keepalive(self) -> None:
        self.ping_sent_at = self.loop.time()  # the first ping is due one interval from now
        self._heartbeat.add(self)

    def stop_keepalive(self) -> None:
        self._heartbeat.discard(self)
        self.pending_ping_payload = None

    def send_keepalive_ping(self) -> None:
        if self.close_sent or self.transport.is_closing():
            return
        # A payload of its own, so a stale or unsolicited pong is not taken for the answer.
        self.pending_ping_payload = os.urandom(4)
        self.ping_sent_at = self.loop.time()
        self.conn.send_ping(self.pending_ping_payload)
        self._schedule_flush()

    def handle_pong(self, event: Any) -> None:
        if self.pending_ping_payload is not None and bytes(event.data) == self.pending_ping_payload:
            self.last_ping_rtt = self.loop.time() - self.ping_sent_at
            self.pending_ping_payload = None

    def close_nowait(self, code: int, reason: str, timeout: float) -> None:
        """Send a close frame now, after the frames queued before it; end the socket.

        The application's `receive` then returns `websocket.disconnect`. A client
        that does not answer (or read) within `timeout` seconds is cut off.
        """
        if not self.handshake_complete or self.close_sent or self.disconnected:
            return
        self._flush()
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        self.stop_keepalive()
        self.close_sent = True
        if self.transport.is_closing():
            return
        with contextlib.suppress(InvalidState):
            self.conn.send_close(code, reason)
        self.transport.write(b"".join(self.conn.data_to_send()))
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        self.close_timer = self.loop.call_later(timeout, self.transport.abort)

    def send_text_nowait(self, text: str) -> bool:
        """Queue a text frame for this turn's write; False if it must wait (or cannot go)."""
        if not self._is_open_and_writable():
            return False
        self._queue_frame(_text_frame(text))
        return True

    async def send(self, message: ASGISendEvent) -> None:
        if message["type"] == "websocket.accept" and not self.handshake_complete:
            await super().send(message)
            self._forget_request()
            return
        if message["type"] == "websocket.send" and self._is_open_and_writable():
            data, text = message.get("bytes"), message.get("text")
            if text is not None:
                self._queue_frame(_text_frame(text))
                return
            try:
                self.conn.send_binary(data or b"")
            except InvalidState:
                raise ClientDisconnected from None
            self._schedule_flush()
            return
        self._flush()
        await super().send(message)

    def _forget_request(self) -> None:
        """Accepted: let the handshake's request and response go (a few KB per socket).

        websockets' parser keeps the request in a local variable of the generator
        that goes on parsing frames; a fresh frame parser takes its place when the
        old one waits at a frame boundary with nothing buffered, which it does
        unless the client sent frames before it saw our 101 (then it stays).
        """
        self.request = self.response = None  # type: ignore[assignment]
        parser = self.conn.parser
        inner = getattr(parser, "gi_yieldfrom", None)
        innermost = getattr(inner, "gi_yieldfrom", None)
        if (
            self.conn.state is State.OPEN
            and not self.conn.reader.buffer
            and getattr(innermost, "__name__", "") == "at_eof"
        ):
            parser.close()
            self.conn.parser = Protocol.parse(self.conn)
            next(self.conn.parser)

    def _queue_frame(self, frame: bytes) -> None:
        if self._pending is None:
            self._pending = []
        self._pending.append(frame)
        self._schedule_flush()

    def _is_open_and_writable(self) -> bool:
        return (
            self.handshake_complete
            and self.initial_response is None
            and not (self.close_sent or self.disconnected or self.transport.is_closing())
            and self.writable.is_set()
        )

    def _schedule_flush(self) -> None:
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._batch.add(self)

    def _flush(self) -> None:
        self._flush_scheduled = False
        output = self.conn.data_to_send()  # control frames the connection made meanwhile
        if self._pending:
            # Frames queued before a close went out are dropped with the connection.
            if self.conn.state is State.OPEN:
                output += self._pending
            self._pending = None
        if output and not self.transport.is_closing():
            self.transport.write(b"".join(output))


class _WriteBatch:
    """The sockets with frames queued in this loop turn, all written by one callback."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: list[CoalescingWebSocketProtocol] = []

    def add(self, protocol: CoalescingWebSocketProtocol) -> None:
        # One callback per turn, not one per socket: a fan-out touches thousands.
        if not self._dirty:
            self._loop.call_soon(self._flush)
        self._dirty.append(protocol)

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, []
        for protocol in dirty:
            protocol._flush()


class _Inbox:
    """What uvicorn uses of an `asyncio.Queue`: a deque and at most one waiting getter."""

    __slots__ = ("_items", "_waiter")

    def __init__(self) -> None:
        # Made when a message arrives, dropped when it is read: most sockets are silent.
        self._items: deque[Any] | None = None
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: Any) -> None:
        if self._items is None:
            self._items = deque()
        self._items.append(item)
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    async def get(self) -> Any:
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items.popleft()
        if not self._items:
            self._items = None
        return item


class _Flag:
    """What uvicorn uses of an `asyncio.Event`, with a future only while someone waits."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> None:
        if self._set:
            return
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        await waiter


class _Heartbeat:
    """The keepalive pings of every socket of one server, from one timer.

    The stock protocol keeps a timer per socket (a ping timer, then a pong
    deadline). Here one callback runs every `tick` (a tenth of the shorter of
    the interval and the timeout) and, for each open socket, sends a ping once
    `ws_ping_interval` has passed since its last one was answered, or fails the
    socket (1011) when a ping has gone unanswered for `ws_ping_timeout`. Sockets
    opened at different times are due at different ticks, so the pings stay
    spread out; each is at most one tick later than the stock timer would be.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, config: Config) -> None:
        self._loop = loop
        self._interval: float | None = config.ws_ping_interval or None
        self._timeout: float | None = config.ws_ping_timeout or None
        shortest = min(value for value in (self._interval or 60.0, self._timeout or 60.0))
        self._tick = max(0.01, shortest / 10)
        self._sockets: dict[CoalescingWebSocketProtocol, None] = {}
        self._timer: asyncio.TimerHandle | None = None

    def add(self, protocol: CoalescingWebSocketProtocol) -> None:
        if self._interval is None:
            return
        self._sockets[protocol] = None
        if self._timer is None:
            self._timer = self._loop.call_later(self._tick, self._beat)

    def discard(self, protocol: CoalescingWebSocketProtocol) -> None:
        self._sockets.pop(protocol, None)

    def _beat(self) -> None:
        now = self._loop.time()
        assert self._interval is not None
        for protocol in list(self._sockets):
            waited = now - protocol.ping_sent_at
            if protocol.pending_ping_payload is None:
                if waited >= self._interval - protocol.last_ping_rtt:
                    protocol.send_keepalive_ping()
            elif self._timeout is not None and waited >= self._timeout:
                self._sockets.pop(protocol, None)
                protocol.keepalive_timeout()
        self._timer = self._loop.call_later(self._tick, self._beat) if self._sockets else None


@functools.lru_cache(maxsize=1)
def _text_frame(text: str) -> bytes:
    """`text` as one unmasked, final WebSocket text frame (RFC 6455 5.2).

    The hub hands one event's text to every socket of its user in a row, so a
    one-entry cache frames each event once, not once per socket. Server frames
    are never masked, and we send no extensions (compression is off).
    """
    payload = text.encode()
    size = len(payload)
    if size < 126:
        header = bytes((0x81, size))
    elif size < 1 << 16:
        header = bytes((0x81, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x81, 127)) + size.to_bytes(8, "big")
    return header + payload


def websocket_options(settings: RealtimeSettings) -> dict[str, Any]:
    """uvicorn `Config` arguments for our sockets: size limit, heartbeats, no compression."""
    return {
        # websockets-sansio (its shutdown closes open sockets with 1012), writes coalesced.
        "ws": "realtime.serving:CoalescingWebSocketProtocol",
        "ws_max_size": settings.ws_max_message_bytes,
        "ws_ping_interval": settings.ws_heartbeat_seconds,
        "ws_ping_timeout": settings.ws_heartbeat_timeout_seconds,
        # Compression keeps a zlib context per socket (tens of KB each) to
        # shrink small JSON frames: memory we would rather spend on sockets.
        "ws_per_message_deflate": False,
    }


class WebSocketUvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """`uvicorn_worker.UvicornWorker` configured by `websocket_options`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.CONFIG_KWARGS = {**_UvicornWorker.CONFIG_KWARGS, **websocket_options(get_settings())}
        super().__init__(*args, **kwargs)

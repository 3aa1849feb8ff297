"""The gunicorn worker class: uvicorn's, with the WebSocket limits from the settings."""

from __future__ import annotations

import asyncio
import functools
from typing import Any, cast

from uvicorn._types import ASGISendEvent
from uvicorn.config import Config
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]
from websockets.exceptions import InvalidState
from websockets.protocol import State

from realtime.settings import RealtimeSettings, get_settings

# The ASGI scope extension under which `CoalescingWebSocketProtocol` offers
# `send_text_nowait(text) -> bool` to the application.
SEND_NOWAIT_EXTENSION = "realtime.send_text_nowait"


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
        # One per server (so per event loop), kept on the state uvicorn shares.
        batch = getattr(server_state, "realtime_write_batch", None)
        if batch is None:
            batch = _WriteBatch(self.loop)
            server_state.realtime_write_batch = batch  # type: ignore[attr-defined]
        self._batch: _WriteBatch = batch

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # ASGI types extensions as dicts; ours is a callable, read by realtime.endpoint.
        extensions = cast("dict[str, object]", self.scope.setdefault("extensions", {}))
        extensions[SEND_NOWAIT_EXTENSION] = self.send_text_nowait

    def send_text_nowait(self, text: str) -> bool:
        """Queue a text frame for this turn's write; False if it must wait (or cannot go)."""
        if not self._is_open_and_writable():
            return False
        self._queue_frame(_text_frame(text))
        return True

    async def send(self, message: ASGISendEvent) -> None:
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


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """`uvicorn_worker.UvicornWorker` configured by `websocket_options`."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.CONFIG_KWARGS = {**_UvicornWorker.CONFIG_KWARGS, **websocket_options(get_settings())}
        super().__init__(*args, **kwargs)

"""WebSocket clients of the realtime service for tests: listeners that record every frame."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import websockets
from websockets.asyncio.client import ClientConnection

from devharness.polling import eventually

OPEN_TIMEOUT = 10.0
Message = dict[str, Any]


def ws_url(base: str, **query: str) -> str:
    """`base` (ws://host:port/ws) with the query parameters that are given."""
    return f"{base}?{urlencode(query)}" if query else base


async def connect(
    url: str, *, token: str | None = None, origin: str | None = None, **options: Any
) -> ClientConnection:
    """Open a WebSocket, with a bearer token and an Origin header when given."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return await websockets.connect(
        url,
        additional_headers=headers,
        origin=origin,  # type: ignore[arg-type]  # websockets types it as its Origin NewType
        open_timeout=OPEN_TIMEOUT,
        **options,
    )


@dataclass
class Listener:
    """A connected client: its hello, every event and other frame it received, its close."""

    socket: ClientConnection
    hello: Message
    events: list[Message] = field(default_factory=list)
    others: list[Message] = field(default_factory=list)
    close_code: int | None = None
    close_reason: str | None = None
    _reader: asyncio.Task[None] | None = None

    @property
    def event_ids(self) -> list[str]:
        return [event["id"] for event in self.events]

    @property
    def is_closed(self) -> bool:
        return self._reader is not None and self._reader.done()

    async def _read(self) -> None:
        try:
            async for raw in self.socket:
                message = json.loads(raw)
                (self.events if "id" in message else self.others).append(message)
        except websockets.ConnectionClosed:
            pass
        finally:
            frame = self.socket.protocol.close_rcvd
            self.close_code = frame.code if frame is not None else None
            self.close_reason = frame.reason if frame is not None else None

    async def send(self, message: Message) -> None:
        await self.socket.send(json.dumps(message))

    async def wait_until(
        self, condition: Callable[[Listener], bool], *, within: float, what: str
    ) -> None:
        """Poll until `condition(self)`; TimeoutError naming `what` and what arrived."""
        await eventually(
            lambda: condition(self),
            within=within,
            explain=lambda: (
                f"{what}; got {len(self.events)} events, "
                f"others {self.others[-5:]}, close {self.close_code}"
            ),
        )

    async def wait_events(self, count: int, *, within: float = 10.0) -> list[Message]:
        await self.wait_until(
            lambda listener: len(listener.events) >= count, within=within, what=f"{count} events"
        )
        return self.events

    async def wait_closed(self, *, within: float = 10.0) -> int | None:
        await self.wait_until(lambda listener: listener.is_closed, within=within, what="close")
        return self.close_code

    async def close(self) -> None:
        await self.socket.close()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


async def listen(url: str, *, token: str | None = None, origin: str | None = None) -> Listener:
    """Connect, read the hello, and record every later frame in the background."""
    socket = await connect(url, token=token, origin=origin)
    async with asyncio.timeout(OPEN_TIMEOUT):
        hello = json.loads(await socket.recv())
    assert hello["type"] == "hello", hello
    listener = Listener(socket, hello)
    listener._reader = asyncio.create_task(listener._read())
    return listener


async def refusal(
    url: str, *, token: str | None = None, origin: str | None = None
) -> tuple[int | None, str]:
    """Connect and expect to be closed before any hello: the close code and reason."""
    socket = await connect(url, token=token, origin=origin)
    try:
        async with asyncio.timeout(OPEN_TIMEOUT):
            message = await socket.recv()
    except websockets.ConnectionClosed as exc:
        return (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd is not None else (None, "")
    finally:
        await socket.close()
    raise AssertionError(f"expected a refusal, got {message!r}")


async def _hold_socket(
    url: str, token: str, address: tuple[str, int] | None
) -> tuple[str, ClientConnection | None]:
    # `address` connects there while the URL names the Host the server expects.
    where: dict[str, Any] = {"host": address[0], "port": address[1]} if address else {}
    try:
        socket = await websockets.connect(
            url,
            **where,
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=60,
            ping_interval=None,  # the server's heartbeat pings are still answered
            compression=None,
            max_queue=4,
        )
    except websockets.InvalidStatus as exc:
        return f"HTTP {exc.response.status_code}", None
    try:
        async with asyncio.timeout(60):
            await socket.recv()
    except websockets.ConnectionClosed as exc:
        return (f"close {exc.rcvd.code}" if exc.rcvd else "closed"), None
    return "open", socket


async def open_idle_sockets(
    url: str, tokens: list[str], *, at_once: int = 50, address: tuple[str, int] | None = None
) -> tuple[dict[str, int], list[ClientConnection]]:
    """Open one socket per bearer token, `at_once` handshakes at a time, and keep them open.

    With `address`, each connects there, sending the URL's host as `Host`.

    Returns how each attempt ended ("open" once the hello arrived, "close 1013",
    "HTTP 503", an exception's name) and the open sockets; abort their
    transports when done (`socket.transport.abort()`).
    """
    gate = asyncio.Semaphore(at_once)
    outcomes: dict[str, int] = {}
    sockets: list[ClientConnection] = []

    async def one(token: str) -> None:
        async with gate:
            try:
                outcome, socket = await _hold_socket(url, token, address)
            except (OSError, TimeoutError, websockets.WebSocketException) as exc:
                outcome, socket = type(exc).__name__, None
        if socket is not None:
            sockets.append(socket)
        outcomes[outcome] = outcomes.get(outcome, 0) + 1

    await asyncio.gather(*(one(token) for token in tokens))
    return outcomes, sockets

"""The WebSocket half: a user's events, across reconnects, without gaps or repeats.

`EventStream` connects with a single-use ticket when it can log in (else the
bearer token in a header), pings at a third of the server's idle timeout, and
on a dropped connection reconnects with jittered exponential backoff, resuming
after the last event id it yielded.
"""

from __future__ import annotations

import asyncio
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import websockets
from websockets.asyncio.client import ClientConnection

from common.contracts.realtime import (
    CLOSE_POLICY_VIOLATION,
    MESSAGE_ERROR,
    MESSAGE_HELLO,
    MESSAGE_PING,
    MESSAGE_PONG,
    MESSAGE_RESET,
)
from jobsclient._api import HTTP_TIMEOUT, ApiClient, Refused

MAX_BACKOFF = 5.0
_FIRST_BACKOFF = 0.2


def backoff(failures: int, *, ceiling: float = MAX_BACKOFF) -> float:
    """Seconds to wait after `failures` failed attempts in a row: jittered, doubling, capped."""
    top = min(ceiling, _FIRST_BACKOFF * 2 ** min(failures, 6))
    return random.uniform(top / 2, top)  # noqa: S311 (jitter, not a secret)


class EventStream:
    """The logged-in user's messages from the realtime service, as dicts.

    Yields every event (`{"id", "type", "job_id", "data", ...}`) plus the
    `reset` message (the server no longer holds our position: reload state
    from the API) and `error` messages; hello and pong are handled here.
    `on_status` hears each disconnect in words. Raises `Refused` when the
    credentials are refused (a policy-violation close without a way to log in).
    """

    def __init__(
        self,
        api: ApiClient,
        ws_url: str,
        *,
        last_event_id: str | None = None,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.ws_url = ws_url
        self.last_event_id = last_event_id
        self._on_status = on_status or (lambda _text: None)

    async def _handshake(self) -> tuple[str, dict[str, str]]:
        """The URL and headers of the next handshake: a ticket when we can log in."""
        query: dict[str, str] = {}
        headers: dict[str, str] = {}
        if self.api.can_log_in:
            query["ticket"] = await self.api.ticket()
        else:
            headers["Authorization"] = f"Bearer {await self.api.access_token()}"
        if self.last_event_id:
            query["last_event_id"] = self.last_event_id
        separator = "&" if "?" in self.ws_url else "?"
        url = f"{self.ws_url}{separator}{urlencode(query)}" if query else self.ws_url
        return url, headers

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self.events()

    async def events(self) -> AsyncGenerator[dict[str, Any]]:
        """The messages, as `async for` gives them; `aclose()` it to leave early."""
        failures = 0
        while True:
            try:
                url, headers = await self._handshake()
                async with websockets.connect(
                    url, additional_headers=headers, open_timeout=HTTP_TIMEOUT
                ) as socket:
                    failures = 0
                    async for message in self._session(socket):
                        yield message
            except websockets.ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else None
                if code == CLOSE_POLICY_VIOLATION and not self.api.can_log_in:
                    raise Refused(f"the realtime service refused the token ({code})") from exc
                self._on_status(f"disconnected ({code}); reconnecting")
            except (OSError, httpx.TransportError, websockets.InvalidHandshake) as exc:
                self._on_status(f"cannot connect ({type(exc).__name__}); retrying")
            failures += 1
            await asyncio.sleep(backoff(failures))

    async def _session(self, socket: ClientConnection) -> AsyncIterator[dict[str, Any]]:
        pinger: asyncio.Task[None] | None = None
        try:
            async for raw in socket:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == MESSAGE_HELLO:
                    idle = float(message["limits"]["idle_timeout_seconds"])
                    every = max(1.0, min(30.0, idle / 3))
                    pinger = asyncio.create_task(_ping_every(socket, every))
                elif kind == MESSAGE_RESET:
                    self.last_event_id = None
                    yield message
                elif kind == MESSAGE_ERROR:
                    yield message
                elif kind != MESSAGE_PONG and "id" in message:
                    self.last_event_id = str(message["id"])
                    yield message
        finally:
            if pinger is not None:
                pinger.cancel()


async def _ping_every(socket: ClientConnection, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await socket.send(json.dumps({"type": MESSAGE_PING}))

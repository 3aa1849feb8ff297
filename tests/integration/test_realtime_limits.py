"""Realtime limits in process: handshakes per client IP and per user, messages per socket."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import websockets

from common.auth import issue_access_token
from devharness.polling import eventually
from devharness.realtime import Listener, listen, refusal
from realtime import capacity
from realtime.settings import RealtimeSettings
from tests.fixtures.jobs import new_prefix
from tests.fixtures.realtime_server import RunningRealtime, serve_realtime

RealtimeFactory = Callable[..., Awaitable[RunningRealtime]]


@pytest.fixture
async def realtime_factory(
    redis_url: str, redis_key_prefix: str, jwt_secret: str
) -> AsyncIterator[RealtimeFactory]:
    """Serve the realtime app in process with the given settings and a key prefix of its own."""
    stack = contextlib.AsyncExitStack()

    async def make(**overrides: Any) -> RunningRealtime:
        values: dict[str, Any] = {
            "environment": "test",
            "redis_url": redis_url,
            "redis_key_prefix": new_prefix(redis_key_prefix),
            "jwt_secret": jwt_secret,
            "log_level": "WARNING",
            **overrides,
        }
        settings = RealtimeSettings(_env_file=None, **values)
        return await stack.enter_async_context(serve_realtime(settings))

    async with stack:
        yield make


def _token(realtime: RunningRealtime) -> str:
    return issue_access_token(realtime.settings, subject=uuid.uuid4())


class TestConnectLimits:
    """Handshakes beyond a connect limit are closed with 1008 and a reason."""

    async def test_connects_per_user_are_limited(self, realtime_factory: RealtimeFactory) -> None:
        realtime = await realtime_factory(rate_limit_ws_connect_user="2/minute")
        token = _token(realtime)
        for _ in range(2):
            listener = await listen(realtime.ws_url, token=token)
            await listener.close()
        code, reason = await refusal(realtime.ws_url, token=token)
        assert code == 1008
        assert reason.startswith("too many connections; retry in ")
        # Another user from the same address is not affected.
        listener = await listen(realtime.ws_url, token=_token(realtime))
        await listener.close()

    async def test_connects_per_address_are_limited_before_authentication(
        self, realtime_factory: RealtimeFactory
    ) -> None:
        realtime = await realtime_factory(rate_limit_ws_connect_ip="2/minute")
        for _ in range(2):
            listener = await listen(realtime.ws_url, token=_token(realtime))
            await listener.close()
        # Counted before the credentials are looked at: even a good token is refused.
        code, reason = await refusal(realtime.ws_url, token=_token(realtime))
        assert code == 1008
        assert "too many connections" in reason


class TestMessageLimit:
    """A client sending more messages than allowed per window is closed with 1008."""

    async def test_message_flood_closes_with_1008(self, realtime_factory: RealtimeFactory) -> None:
        realtime = await realtime_factory(rate_limit_ws_messages="5/minute")
        listener = await listen(realtime.ws_url, token=_token(realtime))
        for _ in range(6):
            await listener.send({"type": "ping"})
        assert await listener.wait_closed() == 1008
        assert listener.close_reason == "too many messages: at most 5 per 60s"
        assert [m["type"] for m in listener.others] == ["pong"] * 5


class TestConnectionLimit:
    """Sockets beyond the worker's memory share are refused with 1013; the open ones are served."""

    async def test_a_socket_beyond_the_limit_is_refused_with_1013(
        self, realtime_factory: RealtimeFactory
    ) -> None:
        realtime = await realtime_factory(ws_max_connections=2)
        first = await listen(realtime.ws_url, token=_token(realtime))
        second = await listen(realtime.ws_url, token=_token(realtime))
        code, reason = await refusal(realtime.ws_url, token=_token(realtime))
        assert (code, reason) == (1013, "server full; try again later")
        # Closing one frees its place for the next (once the server has seen the close).
        await first.close()

        async def admitted() -> Listener | None:
            with contextlib.suppress(AssertionError, websockets.ConnectionClosed):
                return await listen(realtime.ws_url, token=_token(realtime))
            return None

        third = await eventually(admitted)
        await third.close()
        await second.close()

    async def test_the_limit_follows_the_memory_budget(
        self, realtime_factory: RealtimeFactory
    ) -> None:
        # A limit whose budget holds the fixed part (master, 2 workers) and 2 sockets
        # per worker, at 1 MiB a socket.
        socket_bytes = 1024 * 1024
        fixed = capacity.MASTER_BYTES + 2 * capacity.WORKER_BYTES
        realtime = await realtime_factory(
            memory_limit=int((fixed + 4.5 * socket_bytes) / 0.8),
            memory_headroom=0.2,
            web_concurrency=2,
            ws_connection_bytes=socket_bytes,
        )
        sockets = [await listen(realtime.ws_url, token=_token(realtime)) for _ in range(2)]
        code, _ = await refusal(realtime.ws_url, token=_token(realtime))
        assert code == 1013
        for socket in sockets:
            await socket.close()

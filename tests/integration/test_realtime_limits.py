"""Realtime limits in process: handshakes per client IP and per user, messages per socket."""

from __future__ import annotations

import contextlib
import uuid

import websockets

from common.auth import issue_access_token
from devharness.polling import eventually
from devharness.realtime import Listener, listen, refusal
from realtime import capacity
from tests.fixtures.realtime import InProcessRealtime
from tests.fixtures.realtime_server import RunningRealtime


def _token(realtime: RunningRealtime) -> str:
    return issue_access_token(realtime.settings, subject=uuid.uuid4())


class TestConnectLimits:
    """Handshakes beyond a connect limit are closed with 1008 and a reason."""

    async def test_connects_per_user_are_limited(
        self, in_process_realtime: InProcessRealtime
    ) -> None:
        realtime = await in_process_realtime(rate_limit_ws_connect_user="2/minute")
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
        self, in_process_realtime: InProcessRealtime
    ) -> None:
        realtime = await in_process_realtime(rate_limit_ws_connect_ip="2/minute")
        for _ in range(2):
            listener = await listen(realtime.ws_url, token=_token(realtime))
            await listener.close()
        # Counted before the credentials are looked at: even a good token is refused.
        code, reason = await refusal(realtime.ws_url, token=_token(realtime))
        assert code == 1008
        assert "too many connections" in reason


class TestMessageLimit:
    """A client sending more messages than allowed per window is closed with 1008."""

    async def test_message_flood_closes_with_1008(
        self, in_process_realtime: InProcessRealtime
    ) -> None:
        realtime = await in_process_realtime(rate_limit_ws_messages="5/minute")
        listener = await listen(realtime.ws_url, token=_token(realtime))
        for _ in range(6):
            await listener.send({"type": "ping"})
        assert await listener.wait_closed() == 1008
        assert listener.close_reason == "too many messages: at most 5 per 60s"
        assert [m["type"] for m in listener.others] == ["pong"] * 5


class TestConnectionLimit:
    """Sockets beyond the worker's memory share are refused with 1013; the open ones are served."""

    async def test_a_socket_beyond_the_limit_is_refused_with_1013(
        self, in_process_realtime: InProcessRealtime
    ) -> None:
        realtime = await in_process_realtime(ws_max_connections=2)
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
        self, in_process_realtime: InProcessRealtime
    ) -> None:
        # A limit whose budget holds the fixed part (master, 2 workers) and 2 sockets
        # per worker, at 1 MiB a socket.
        socket_bytes = 1024 * 1024
        fixed = capacity.MASTER_BYTES + 2 * capacity.WORKER_BYTES
        realtime = await in_process_realtime(
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

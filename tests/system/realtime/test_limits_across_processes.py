"""Realtime limits that must hold across processes: two realtime servers, one worker each.

A user's sockets and a client's handshakes land on whichever worker (or
instance) the balancer picks, so the per-user socket cap and the handshake
rate limits are counted in Redis. Each test spreads its sockets over two
gunicorn masters sharing one key prefix: a limit kept per process would let
each of them reach it.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import websockets
from redis.asyncio import Redis

from common.contracts.realtime import CLOSE_POLICY_VIOLATION, new_ticket, ticket_key
from devharness.polling import eventually
from devharness.realtime import Listener, listen, refusal, ws_url
from tests.fixtures.realtime import ORIGIN, Realtime, RealtimeFactory, TokenFor

pytestmark = pytest.mark.system


async def _two_servers(factory: RealtimeFactory, **env: str) -> tuple[Realtime, Realtime]:
    first = await factory(WEB_CONCURRENCY="1", **env)
    second = await factory(WEB_CONCURRENCY="1", prefix=first.prefix, **env)
    assert first.worker_pids().isdisjoint(second.worker_pids())
    return first, second


@contextlib.asynccontextmanager
async def _closing(*listeners: Listener) -> AsyncIterator[list[Listener]]:
    """The sockets opened so far, in a list the block may add to; all closed after it."""
    opened = list(listeners)
    try:
        yield opened
    finally:
        for listener in opened:
            await listener.close()


async def _refused_by_both(
    servers: tuple[Realtime, Realtime], token: Callable[[], str]
) -> list[str]:
    """A handshake with `token()` on each server: both refused with 1008; their reasons."""
    reasons = []
    for server in servers:
        code, reason = await refusal(server.ws_url, token=token())
        assert code == CLOSE_POLICY_VIOLATION
        reasons.append(reason)
    return reasons


class TestSocketsPerUser:
    """`WS_MAX_CONNECTIONS_PER_USER` counts a user's sockets on every process together."""

    async def test_the_cap_holds_across_two_processes_and_frees_on_close(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor
    ) -> None:
        user = uuid.uuid4()
        first, second = await _two_servers(realtime_factory, WS_MAX_CONNECTIONS_PER_USER="2")
        async with _closing() as opened:
            opened.append(await listen(first.ws_url, token=token_for(user)))
            opened.append(await listen(second.ws_url, token=token_for(user)))
            reasons = await _refused_by_both((first, second), lambda: token_for(user))
            assert reasons == ["too many open connections: at most 2 per user"] * 2
            # Another user is not affected.
            opened.append(await listen(second.ws_url, token=token_for(uuid.uuid4())))

            # A closed socket gives its place back, to a socket on the other process.
            await opened.pop(0).close()

            async def place_is_free() -> Listener | None:
                try:
                    return await listen(second.ws_url, token=token_for(user))
                except websockets.ConnectionClosed:
                    return None

            opened.append(await eventually(place_is_free, within=10))


class TestHandshakeRateLimits:
    """The handshake limits per user and per client address are exact across processes."""

    async def test_handshakes_per_user_are_counted_across_processes(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor
    ) -> None:
        first, second = await _two_servers(realtime_factory, RATE_LIMIT_WS_CONNECT_USER="2/minute")
        user = uuid.uuid4()
        mine = [await listen(server.ws_url, token=token_for(user)) for server in (first, second)]
        async with _closing(*mine) as opened:
            for reason in await _refused_by_both((first, second), lambda: token_for(user)):
                assert reason.startswith("too many connections; retry in ")
            opened.append(await listen(first.ws_url, token=token_for(uuid.uuid4())))

    async def test_handshakes_per_address_are_counted_across_processes(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor
    ) -> None:
        first, second = await _two_servers(realtime_factory, RATE_LIMIT_WS_CONNECT_IP="2/minute")
        async with _closing(
            await listen(first.ws_url, token=token_for(uuid.uuid4())),
            await listen(second.ws_url, token=token_for(uuid.uuid4())),
        ):
            # Counted before authentication: even a new user's valid token is refused.
            reasons = await _refused_by_both((first, second), lambda: token_for(uuid.uuid4()))
            for reason in reasons:
                assert reason.startswith("too many connections; retry in ")


class TestNoTicketInLogs:
    """A refused handshake leaves its ticket valid: the log must not hold it."""

    async def test_query_strings_are_cut_from_every_log_line(
        self, realtime_factory: RealtimeFactory, redis_url: str
    ) -> None:
        realtime = await realtime_factory(WEB_CONCURRENCY="1")
        ticket = new_ticket()
        redis = Redis.from_url(redis_url)
        try:
            await redis.set(ticket_key(realtime.prefix, ticket), str(uuid.uuid4()), ex=60)
            url = ws_url(realtime.ws_url, ticket=ticket)
            # Refused before the ticket is read (an Origin not allowed): still valid after.
            code, _ = await refusal(url, origin="https://evil.example.com")
            assert code == CLOSE_POLICY_VIOLATION
            # A plain GET of the same URL (no upgrade) gets an HTTP answer and a log line.
            async with httpx.AsyncClient(base_url=realtime.base_url) as client:
                await client.get("/ws", params={"ticket": ticket})
            assert await redis.exists(ticket_key(realtime.prefix, ticket)) == 1
            # The same ticket still opens a socket: it was worth hiding.
            listener = await listen(url, origin=ORIGIN)
            await listener.close()
        finally:
            await redis.aclose()

        await realtime.stop()
        messages = [record.get("message", "") for record in realtime.log_records()]
        # The handshakes were logged (refused and accepted alike), without the ticket.
        assert sum(message.endswith('"WebSocket /ws" [accepted]') for message in messages) == 2
        assert ticket not in realtime.log()

"""Realtime limits that must hold across processes: two realtime servers, one worker each.

A user's sockets and a client's handshakes land on whichever worker (or
instance) the balancer picks, so the per-user socket cap and the handshake
rate limits are counted in Redis. Each test spreads its sockets over two
gunicorn masters sharing one key prefix: a limit kept per process would let
each of them reach it.
"""

from __future__ import annotations

import uuid

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


class TestSocketsPerUser:
    """`WS_MAX_CONNECTIONS_PER_USER` counts a user's sockets on every process together."""

    async def test_the_cap_holds_across_two_processes_and_frees_on_close(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor
    ) -> None:
        first, second = await _two_servers(realtime_factory, WS_MAX_CONNECTIONS_PER_USER="2")
        user = uuid.uuid4()
        opened: list[Listener] = []
        try:
            opened.append(await listen(first.ws_url, token=token_for(user)))
            opened.append(await listen(second.ws_url, token=token_for(user)))
            for server in (first, second):
                code, reason = await refusal(server.ws_url, token=token_for(user))
                assert code == CLOSE_POLICY_VIOLATION
                assert reason == "too many open connections: at most 2 per user"
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
        finally:
            for listener in opened:
                await listener.close()


class TestHandshakeRateLimits:
    """The handshake limits per user and per client address are exact across processes."""

    async def test_handshakes_per_user_are_counted_across_processes(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor
    ) -> None:
        first, second = await _two_servers(realtime_factory, RATE_LIMIT_WS_CONNECT_USER="2/minute")
        user = uuid.uuid4()
        opened = [
            await listen(first.ws_url, token=token_for(user)),
            await listen(second.ws_url, token=token_for(user)),
        ]
        try:
            for server in (first, second):
                code, reason = await refusal(server.ws_url, token=token_for(user))
                assert code == CLOSE_POLICY_VIOLATION
                assert reason.startswith("too many connections; retry in ")
            opened.append(await listen(first.ws_url, token=token_for(uuid.uuid4())))
        finally:
            for listener in opened:
                await listener.close()

    async def test_handshakes_per_address_are_counted_across_processes(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor
    ) -> None:
        first, second = await _two_servers(realtime_factory, RATE_LIMIT_WS_CONNECT_IP="2/minute")
        opened = [
            await listen(first.ws_url, token=token_for(uuid.uuid4())),
            await listen(second.ws_url, token=token_for(uuid.uuid4())),
        ]
        try:
            for server in (first, second):
                # Counted before authentication: even a new user's valid token is refused.
                code, reason = await refusal(server.ws_url, token=token_for(uuid.uuid4()))
                assert code == CLOSE_POLICY_VIOLATION
                assert reason.startswith("too many connections; retry in ")
        finally:
            for listener in opened:
                await listener.close()


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

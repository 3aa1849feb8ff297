"""The realtime app in process (uvicorn on loopback): handshake, protocol, delivery, resume."""

from __future__ import annotations

import asyncio
import functools
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from common.auth import issue_access_token
from common.contracts import events
from common.contracts.realtime import ticket_key, ticket_value
from common.revocation import Revocations
from devharness.realtime import Listener, listen, refusal, ws_url
from tests.fixtures import tokens
from tests.fixtures.realtime import ORIGIN, InProcessRealtime, publish
from tests.fixtures.realtime_server import RunningRealtime


@pytest.fixture
def realtime_factory(in_process_realtime: InProcessRealtime) -> InProcessRealtime:
    """In-process realtime servers that allow ORIGIN."""
    return functools.partial(in_process_realtime, cors_origins=[ORIGIN])


@pytest.fixture
async def realtime(realtime_factory: InProcessRealtime) -> RunningRealtime:
    return await realtime_factory()


def _token(realtime: RunningRealtime, user_id: uuid.UUID) -> str:
    return issue_access_token(realtime.settings, subject=user_id)


async def _listen_as(realtime: RunningRealtime, user_id: uuid.UUID, **query: str) -> Listener:
    """A socket of `user_id`'s, opened with a bearer token (and `query` in its URL)."""
    return await listen(ws_url(realtime.ws_url, **query), token=_token(realtime, user_id))


async def _publish(
    redis: Redis, realtime: RunningRealtime, user_id: uuid.UUID, count: int, **data: Any
) -> list[str]:
    """Publish as a worker does (`tests.fixtures.realtime.publish`): `count` progress events
    of one made-up job of `user_id`, under the server's key prefix; their ids."""
    return await publish(redis, realtime.settings.redis_key_prefix, user_id, count, **data)


@dataclass
class _SocketUser:
    """A user of the in-process server: opens their sockets, publishes their events."""

    realtime: RunningRealtime
    redis: Redis
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    async def listen(self, **query: str) -> Listener:
        return await _listen_as(self.realtime, self.id, **query)

    async def publish(self, count: int) -> list[str]:
        return await _publish(self.redis, self.realtime, self.id, count)


@pytest.fixture
def socket_user(realtime: RunningRealtime, redis: Redis) -> _SocketUser:
    return _SocketUser(realtime, redis)


class TestHandshake:
    """Only a valid token or an unused ticket, from an allowed origin, opens a socket."""

    async def test_bearer_token_opens_a_socket_with_hello_and_limits(
        self, realtime: RunningRealtime
    ) -> None:
        user_id = uuid.uuid4()
        listener = await _listen_as(realtime, user_id)
        assert listener.hello["user_id"] == str(user_id)
        assert listener.hello["limits"] == {
            "max_message_bytes": realtime.settings.ws_max_message_bytes,
            "send_queue_size": realtime.settings.ws_send_queue_size,
            "heartbeat_seconds": realtime.settings.ws_heartbeat_seconds,
            "heartbeat_timeout_seconds": realtime.settings.ws_heartbeat_timeout_seconds,
            "idle_timeout_seconds": realtime.settings.ws_idle_timeout_seconds,
        }
        await listener.close()

    async def test_ticket_opens_one_socket_only(
        self, realtime: RunningRealtime, redis: Redis
    ) -> None:
        user_id = uuid.uuid4()
        ticket = "t" * 43
        await redis.set(ticket_key(realtime.settings.redis_key_prefix, ticket), str(user_id), ex=30)
        listener = await listen(ws_url(realtime.ws_url, ticket=ticket), origin=ORIGIN)
        assert listener.hello["user_id"] == str(user_id)
        code, reason = await refusal(ws_url(realtime.ws_url, ticket=ticket), origin=ORIGIN)
        assert (code, reason) == (1008, "unknown, expired or already used ticket")
        await listener.close()

    @pytest.mark.parametrize("bad", ["expired", "wrong_audience", "alg_none", "typ_refresh"])
    async def test_bad_token_is_refused_with_1008(
        self, realtime: RunningRealtime, bad: str
    ) -> None:
        token = tokens.BAD_TOKENS[bad](realtime.settings, subject=uuid.uuid4())
        code, reason = await refusal(realtime.ws_url, token=token)
        assert (code, reason) == (1008, "invalid or expired token")

    async def test_no_credentials_is_refused_with_1008(self, realtime: RunningRealtime) -> None:
        code, reason = await refusal(realtime.ws_url)
        assert code == 1008
        assert "credentials required" in reason

    async def test_unknown_ticket_is_refused_with_1008(self, realtime: RunningRealtime) -> None:
        for ticket in ("x" * 43, "not a ticket!"):
            code, _ = await refusal(ws_url(realtime.ws_url, ticket=ticket))
            assert code == 1008

    async def test_origin_not_allowed_is_refused_with_1008(self, realtime: RunningRealtime) -> None:
        token = _token(realtime, uuid.uuid4())
        code, reason = await refusal(realtime.ws_url, token=token, origin="https://evil.example")
        assert (code, reason) == (1008, "origin not allowed: https://evil.example")
        listener = await listen(realtime.ws_url, token=token, origin=ORIGIN)
        await listener.close()

    async def test_malformed_last_event_id_is_refused_with_1008(
        self, realtime: RunningRealtime
    ) -> None:
        token = _token(realtime, uuid.uuid4())
        code, _ = await refusal(ws_url(realtime.ws_url, last_event_id="yesterday"), token=token)
        assert code == 1008


class TestProtocol:
    """Pings are answered, bad messages get errors, limits close the socket."""

    async def test_ping_gets_pong_and_bad_messages_get_errors(
        self, realtime: RunningRealtime
    ) -> None:
        listener = await _listen_as(realtime, uuid.uuid4())
        await listener.send({"type": "ping"})
        await listener.socket.send("not json")
        await listener.send({"type": "subscribe", "channel": "everything"})
        await listener.socket.send(b"\x00binary")
        await listener.wait_until(lambda item: len(item.others) >= 4, within=5, what="replies")
        assert [message["type"] for message in listener.others] == [
            "pong",
            "error",
            "error",
            "error",
        ]
        assert not listener.is_closed
        await listener.close()

    async def test_message_over_the_limit_closes_with_1009(
        self, realtime_factory: InProcessRealtime
    ) -> None:
        realtime = await realtime_factory(ws_max_message_bytes=256)
        listener = await _listen_as(realtime, uuid.uuid4())
        await listener.send({"type": "ping", "padding": "x" * 300})
        assert await listener.wait_closed() == 1009

    async def test_silent_client_is_closed_after_the_idle_timeout(
        self, realtime_factory: InProcessRealtime
    ) -> None:
        realtime = await realtime_factory(ws_idle_timeout_seconds=0.3)
        listener = await _listen_as(realtime, uuid.uuid4())
        assert await listener.wait_closed(within=5) == 1001
        assert "idle" in (listener.close_reason or "")

    async def test_readiness_names_the_subscription(self, realtime: RunningRealtime) -> None:
        async with httpx.AsyncClient(base_url=realtime.http_url) as client:
            response = await client.get("/health/ready")
        assert response.status_code == 200
        assert set(response.json()["checks"]) == {"redis", "subscription"}


class TestHeartbeat:
    """One timer per process pings every socket; a client that never answers is dropped."""

    async def test_a_silent_client_is_dropped_and_an_answering_one_kept(
        self, realtime_factory: InProcessRealtime
    ) -> None:
        realtime = await realtime_factory(
            ws_heartbeat_seconds=0.2, ws_heartbeat_timeout_seconds=0.4
        )
        # websockets answers every ping with a pong by itself.
        answering = await _listen_as(realtime, uuid.uuid4())
        reader, writer = await asyncio.open_connection("127.0.0.1", realtime.port)
        try:
            writer.write(
                b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
                b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                b"Sec-WebSocket-Version: 13\r\nAuthorization: Bearer "
                + _token(realtime, uuid.uuid4()).encode()
                + b"\r\n\r\n"
            )
            # Read everything the server sends, never answering: pings, then its close.
            async with asyncio.timeout(10):
                received = await reader.read(-1)
        finally:
            writer.close()
        assert received.startswith(b"HTTP/1.1 101")
        frames = received.partition(b"\r\n\r\n")[2]
        assert b"\x89\x04" in frames  # a ping with its 4-byte payload
        # Then a close frame: 1011 and the reason.
        assert frames.endswith(b"\x88\x18" + (1011).to_bytes(2, "big") + b"keepalive ping timeout")
        assert not answering.is_closed
        await answering.close()


class TestDelivery:
    """A user's sockets get each of their events once, in order, and nobody else's."""

    async def test_each_socket_gets_only_its_users_events(
        self, realtime: RunningRealtime, redis: Redis
    ) -> None:
        alice, bob = uuid.uuid4(), uuid.uuid4()
        alices = [await _listen_as(realtime, alice) for _ in range(2)]
        bobs = await _listen_as(realtime, bob)
        ids = await _publish(redis, realtime, alice, 5)
        bob_ids = await _publish(redis, realtime, bob, 1)
        for listener in alices:
            await listener.wait_events(5)
        await bobs.wait_events(1)
        for listener in alices:
            assert listener.event_ids == ids
            assert {event["user_id"] for event in listener.events} == {str(alice)}
        assert bobs.event_ids == bob_ids
        for listener in [*alices, bobs]:
            await listener.close()

    # --8<-- [start:event-on-socket]
    async def test_event_frames_are_the_design_shape(
        self, realtime: RunningRealtime, redis: Redis
    ) -> None:
        user_id = uuid.uuid4()
        listener = await listen(realtime.ws_url, token=_token(realtime, user_id))
        [event_id] = await _publish(redis, realtime, user_id, 1)
        [event] = await listener.wait_events(1)
        assert set(event) == {"id", "type", "ts", "user_id", "job_id", "data"}
        assert event["id"] == event_id
        assert event["type"] == "job.progress"
        await listener.close()

    # --8<-- [end:event-on-socket]


class TestResume:
    """A reconnecting client gets what it missed, then live events, with no gap or duplicate."""

    async def test_resume_while_events_flow_has_no_gap_and_no_duplicate(
        self, socket_user: _SocketUser
    ) -> None:
        before = await socket_user.publish(30)
        # Published concurrently with the handshake and the replay: some go live, some are
        # replayed, some are both, and each must arrive exactly once.
        during = asyncio.create_task(socket_user.publish(60))
        listener = await socket_user.listen(last_event_id=before[9])
        expected = before[10:] + await during
        await listener.wait_events(len(expected))
        await asyncio.sleep(0)
        assert listener.event_ids == expected
        await listener.close()

    async def test_resume_message_replays_after_the_given_id(
        self, socket_user: _SocketUser
    ) -> None:
        listener = await socket_user.listen()
        ids = await socket_user.publish(4)
        await listener.wait_events(4)
        await listener.send({"type": "resume", "last_event_id": ids[1]})
        await listener.wait_events(6)
        assert listener.event_ids == ids + ids[2:]
        await listener.close()

    async def test_zero_id_replays_everything_the_stream_holds(
        self, socket_user: _SocketUser
    ) -> None:
        ids = await socket_user.publish(3)
        listener = await socket_user.listen(last_event_id="0-0")
        await listener.wait_events(3)
        assert listener.event_ids == ids
        await listener.close()

    async def test_id_older_than_the_stream_keeps_gets_reset_then_live_events(
        self, socket_user: _SocketUser, realtime: RunningRealtime, redis: Redis
    ) -> None:
        ids = await socket_user.publish(5)
        stream = events.user_stream(realtime.settings.redis_key_prefix, socket_user.id)
        await redis.xtrim(stream, maxlen=2, approximate=False)
        listener = await socket_user.listen(last_event_id=ids[0])
        await listener.wait_until(lambda item: bool(item.others), within=5, what="reset")
        assert listener.others == [{"type": "reset", "last_event_id": ids[0]}]
        live = await socket_user.publish(2)
        await listener.wait_events(2)
        assert listener.event_ids == live, "after a reset only live events follow"
        await listener.close()


# Issue 15 §6: an open socket ends with its token, at `exp` and on revocation.
def _revocations(redis: Redis, realtime: RunningRealtime) -> Revocations:
    settings = realtime.settings
    return Revocations(
        redis,
        prefix=settings.redis_key_prefix,
        cache_seconds=0,
        token_lifetime_seconds=settings.access_token_ttl_seconds,
    )


class TestRevocation:
    """Logging out everywhere closes the user's sockets and refuses their old tokens."""

    async def test_open_socket_is_closed_when_the_users_tokens_are_revoked(
        self,
        realtime: RunningRealtime,
        redis: Redis,
    ) -> None:
        user_id, other = uuid.uuid4(), uuid.uuid4()
        mine = await listen(
            realtime.ws_url, token=issue_access_token(realtime.settings, subject=user_id)
        )
        theirs = await listen(
            realtime.ws_url, token=issue_access_token(realtime.settings, subject=other)
        )
        await _revocations(redis, realtime).revoke_all(user_id)
        assert await mine.wait_closed(within=10) == 1008
        assert mine.close_reason == "token revoked"
        assert not theirs.is_closed
        await theirs.close()

    async def test_revoked_token_is_refused_at_the_handshake(
        self,
        realtime: RunningRealtime,
        redis: Redis,
    ) -> None:
        user_id = uuid.uuid4()
        token = issue_access_token(realtime.settings, subject=user_id)
        await _revocations(redis, realtime).revoke_all(user_id)
        assert await refusal(realtime.ws_url, token=token) == (1008, "invalid or expired token")
        fresh = issue_access_token(realtime.settings, subject=user_id)
        listener = await listen(realtime.ws_url, token=fresh)
        await listener.close()


class TestExpiry:
    """A socket does not outlive the token it was opened with."""

    async def test_socket_is_closed_at_its_tokens_exp(self, realtime: RunningRealtime) -> None:
        settings = realtime.settings
        # Issued so that it expires two seconds from now.
        issued = int(time.time()) - settings.access_token_ttl_seconds + 2
        token = issue_access_token(settings, subject=uuid.uuid4(), now=issued)
        listener = await listen(realtime.ws_url, token=token)
        assert await listener.wait_closed(within=15) == 1008
        assert listener.close_reason == "token expired"

    async def test_ticket_socket_ends_when_the_tickets_token_does(
        self,
        realtime: RunningRealtime,
        redis: Redis,
    ) -> None:
        ticket = "e" * 43
        value = ticket_value(
            str(uuid.uuid4()), expires_at=int(time.time()) + 2, issued_at_ms=int(time.time() * 1000)
        )
        await redis.set(ticket_key(realtime.settings.redis_key_prefix, ticket), value, ex=30)
        listener = await listen(ws_url(realtime.ws_url, ticket=ticket), origin=ORIGIN)
        assert await listener.wait_closed(within=15) == 1008
        assert listener.close_reason == "token expired"

"""A Redis restart under connected clients: readiness fails meanwhile, nothing is lost after."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from redis.asyncio import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from devharness.polling import eventually
from devharness.realtime import listen
from devservices import EmbeddedRedis, free_port
from tests.fixtures.realtime import ROUTINGS, Realtime, RealtimeFactory, TokenFor, publish

pytestmark = pytest.mark.system

CLIENTS = 6


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A durable Redis of this test's own on a free port, which the test stops and starts."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), durable=True)
    await asyncio.to_thread(server.start)
    yield server
    await asyncio.to_thread(server.stop)


async def _wait_readiness(realtime: Realtime, status: int, *, within: float) -> None:
    # /health/ready reaches one worker per request; poll until the answer is seen.
    async def answered() -> bool:
        return await realtime.readiness() == status

    await eventually(
        answered, within=within, interval=0.05, explain=lambda: f"readiness never {status}"
    )


async def _answers(redis: Redis) -> bool:
    # The first command on a connection from before the restart fails once.
    try:
        return bool(await redis.ping())
    except RedisConnectionError:
        return False


class TestRedisRestart:
    """The subscription comes back by itself and replays what its sockets missed."""

    @ROUTINGS
    async def test_clients_keep_their_sockets_and_lose_nothing_published_after_restart(
        self,
        realtime_factory: RealtimeFactory,
        private_redis: EmbeddedRedis,
        token_for: TokenFor,
    ) -> None:
        realtime = await realtime_factory(
            REDIS_URL=private_redis.url(), REDIS_SOCKET_TIMEOUT="1", HEALTH_CHECK_TIMEOUT="1"
        )
        user_id = uuid.uuid4()
        listeners = await asyncio.gather(
            *(listen(realtime.ws_url, token=token_for(user_id)) for _ in range(CLIENTS))
        )
        redis = Redis.from_url(private_redis.url(), socket_timeout=5)
        try:
            before = await publish(redis, realtime.prefix, user_id, 3)
            for listener in listeners:
                await listener.wait_events(3)

            await asyncio.to_thread(private_redis.stop)
            await _wait_readiness(realtime, 503, within=15)
            await asyncio.to_thread(private_redis.start)
            await eventually(lambda: _answers(redis), within=10)
            # At once: the subscriptions are most likely still reconnecting.
            after = await publish(redis, realtime.prefix, user_id, 5)

            for listener in listeners:
                await listener.wait_events(8, within=20)
            await _wait_readiness(realtime, 200, within=15)
            more = await publish(redis, realtime.prefix, user_id, 2)
            for listener in listeners:
                await listener.wait_events(10, within=10)
        finally:
            await redis.aclose()
        for listener in listeners:
            assert not listener.is_closed, "the client never had to reconnect"
            assert listener.event_ids == before + after + more
            await listener.close()

"""`WS_ROUTING=per_user`: registering a socket returns only once Redis has confirmed its
user's subscription, however slow the subscription connection is."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from common.contracts.events import user_channel
from common.redis import create_subscriber_redis
from devharness.polling import eventually
from realtime.hub import Hub
from realtime.session import Session
from realtime.settings import RealtimeSettings

LAG = 0.3  # seconds each command to Redis spends in the proxy


class _LaggingProxy:
    """Forwards TCP to Redis, holding every client-to-Redis chunk back for `LAG` seconds."""

    def __init__(self, port: int) -> None:
        self._port = port
        self._tasks: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection("127.0.0.1", self._port)
        for task in (
            asyncio.create_task(self._pipe(reader, upstream_writer, lag=LAG)),
            asyncio.create_task(self._pipe(upstream_reader, writer, lag=0.0)),
        ):
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, lag: float
    ) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                await asyncio.sleep(lag)  # the lag under test, not a wait for an event
                writer.write(chunk)
                await writer.drain()
        writer.close()

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()


@pytest.fixture
async def lagging_redis_url(redis_url: str) -> AsyncIterator[str]:
    port = Redis.from_url(redis_url).connection_pool.connection_kwargs["port"]
    proxy = _LaggingProxy(port)
    server = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    yield f"redis://127.0.0.1:{server.sockets[0].getsockname()[1]}/0"
    proxy.close()
    server.close()


async def _send(frame: str) -> None:
    return None


class TestPerUserRegister:
    """The socket's stream read may start when `register` returns: its user's events flow."""

    async def test_register_waits_for_the_subscription(
        self, lagging_redis_url: str, redis_url: str, redis_key_prefix: str
    ) -> None:
        settings = RealtimeSettings(
            _env_file=None, redis_url=lagging_redis_url, redis_key_prefix=redis_key_prefix,
            ws_routing="per_user", redis_socket_timeout=5,
        )  # fmt: skip
        pubsub_redis = create_subscriber_redis(settings)
        redis = Redis.from_url(redis_url, socket_timeout=5)
        hub = Hub(pubsub_redis, settings)
        hub.start()
        try:
            await eventually(lambda: hub.is_connected, within=10)
            user_id = str(uuid.uuid4())
            session = Session(
                user_id=user_id, stream="unused", redis=redis, queue_size=8,
                replay_batch=8, send=_send,
            )  # fmt: skip
            await hub.register(session)
            counts = await redis.pubsub_numsub(user_channel(redis_key_prefix, user_id))
            assert counts[0][1] == 1, "subscribed by the time register returns"
        finally:
            await hub.stop()
            await pubsub_redis.aclose()
            await redis.aclose()

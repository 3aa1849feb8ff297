"""A client that stops reading is closed with 1013; the others are not held up."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import websockets
from redis.asyncio import Redis
from websockets.asyncio.client import ClientConnection

from devharness.realtime import connect, listen
from tests.fixtures.realtime import RealtimeFactory, TokenFor, publish

pytestmark = pytest.mark.system

# Enough bytes to fill the kernel's socket buffers and the client library's queue,
# after which the server's send queue (4 frames) overflows.
EVENTS = 120
PAYLOAD = "x" * 200_000


class TestSlowConsumer:
    """The bounded send queue closes a stalled socket instead of growing memory."""

    async def test_client_that_never_reads_is_closed_with_1013(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor, redis: Redis
    ) -> None:
        realtime = await realtime_factory(
            WEB_CONCURRENCY="1", WS_SEND_QUEUE_SIZE="4", WS_CLOSE_TIMEOUT_SECONDS="30"
        )
        user_id = uuid.uuid4()
        token = token_for(user_id)
        stalled = await connect(realtime.ws_url, token=token, max_size=None, max_queue=1)
        reader = await listen(realtime.ws_url, token=token)

        ids = await publish(redis, realtime.prefix, user_id, EVENTS, blob=PAYLOAD)
        await reader.wait_events(EVENTS, within=60)
        live = await publish(redis, realtime.prefix, user_id, 3)
        await reader.wait_events(EVENTS + 3, within=10)
        assert reader.event_ids == ids + live, "the reading client kept receiving"

        received, code = await _drain(stalled)
        assert code == 1013
        assert received < EVENTS, "the stalled client was cut off, not served everything"
        await reader.close()


async def _drain(socket: ClientConnection) -> tuple[int, int | None]:
    """Read until the server closes: how many frames came, and the close code."""
    received = 0
    async with asyncio.timeout(30):
        while True:
            try:
                await socket.recv()
            except websockets.ConnectionClosed as exc:
                return received, exc.rcvd.code if exc.rcvd is not None else None
            received += 1

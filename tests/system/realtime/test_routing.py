"""`WS_ROUTING=per_user`: a process subscribes to its users' channels only, and no event
published while a socket subscribes is lost or sent twice."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from redis.asyncio import Redis

from common.contracts.events import user_channel
from devharness.polling import eventually
from devharness.realtime import listen, ws_url
from tests.fixtures.realtime import (
    ROUTINGS,
    RealtimeFactory,
    TokenFor,
    assert_each_gets_exactly,
    open_in_bursts,
    publish,
)

pytestmark = pytest.mark.system

CLIENTS = 20
EVENTS = 150


async def _subscribers(redis: Redis, channel: str) -> int:
    counts = await redis.pubsub_numsub(channel)
    return int(counts[0][1])


class TestPerUserSubscriptions:
    """A user's channel is subscribed while the user has a socket in a process, and only then."""

    @pytest.mark.parametrize("ws_routing", ["per_user"])
    async def test_first_socket_subscribes_and_last_close_unsubscribes(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor, redis: Redis
    ) -> None:
        realtime = await realtime_factory(WEB_CONCURRENCY="1")
        user_id = uuid.uuid4()
        channel = user_channel(realtime.prefix, user_id)
        assert await _subscribers(redis, channel) == 0

        first = await listen(realtime.ws_url, token=token_for(user_id))
        second = await listen(realtime.ws_url, token=token_for(user_id))
        assert await _subscribers(redis, channel) == 1, "one subscription for both sockets"
        await first.close()
        ids = await publish(redis, realtime.prefix, user_id, 2)
        await second.wait_events(2)
        assert second.event_ids == ids, "the second socket still gets its events"
        assert await _subscribers(redis, channel) == 1

        await second.close()
        await eventually(lambda: _zero(redis, channel), within=10)


async def _zero(redis: Redis, channel: str) -> bool:
    return await _subscribers(redis, channel) == 0


class TestSubscribeRace:
    """Sockets that open while their user's events are being published get each exactly once."""

    @ROUTINGS
    async def test_sockets_opened_mid_stream_get_every_event_once_in_order(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor, redis: Redis
    ) -> None:
        user_id = uuid.uuid4()
        realtime = await realtime_factory(WS_MAX_CONNECTIONS_PER_USER=str(CLIENTS))
        publishing = asyncio.create_task(publish(redis, realtime.prefix, user_id, EVENTS))
        # Opened one burst after another while events flow, each replaying from the start.
        url = ws_url(realtime.ws_url, last_event_id="0-0")
        listeners = await open_in_bursts(url, token_for(user_id), CLIENTS, burst=5)
        await assert_each_gets_exactly(listeners, await publishing)

"""A client that drops mid-job and comes back with its last id misses nothing, twice nothing."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from redis.asyncio import Redis

from common.contracts.events import user_stream
from devharness.realtime import listen, ws_url
from tests.fixtures.realtime import ROUTINGS, LiveStack, RealtimeFactory, TokenFor, publish

pytestmark = pytest.mark.system


class TestResume:
    """Reconnecting with `last_event_id` replays the gap, then goes live."""

    @ROUTINGS
    async def test_reconnect_mid_job_gets_every_event_exactly_once(
        self, live_stack: LiveStack
    ) -> None:
        user = await live_stack.stack.new_user()
        first = await live_stack.listen(user)
        job = await user.post_job("demo.countdown", {"steps": 40, "interval": 0.05})
        await first.wait_until(
            lambda item: sum(event["type"] == "job.progress" for event in item.events) >= 5,
            within=30,
            what="some progress",
        )
        await first.close()
        last_id = first.event_ids[-1]

        second = await live_stack.listen(user, last_event_id=last_id)
        await second.wait_until(
            lambda item: any(event["type"] == "job.succeeded" for event in item.events),
            within=30,
            what="job.succeeded",
        )
        await second.close()

        union = first.event_ids + second.event_ids
        assert not [i for i, n in Counter(union).items() if n > 1], "no event twice"
        stream = [event["id"] for event in await live_stack.stack.stream(user, job["id"])]
        assert union == stream, "every event of the job, in order"
        assert len(second.event_ids) > 0

    async def test_id_older_than_the_stream_keeps_gets_reset(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor, redis: Redis
    ) -> None:
        realtime = await realtime_factory()
        user_id = uuid.uuid4()
        ids = await publish(redis, realtime.prefix, user_id, 10)
        await redis.xtrim(user_stream(realtime.prefix, user_id), maxlen=3, approximate=False)
        listener = await listen(
            ws_url(realtime.ws_url, last_event_id=ids[2]), token=token_for(user_id)
        )
        await listener.wait_until(lambda item: bool(item.others), within=10, what="reset")
        assert listener.others[0]["type"] == "reset"
        assert listener.events == []
        await listener.close()

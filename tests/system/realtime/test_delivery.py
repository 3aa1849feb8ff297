"""Job events reach their owner's sockets, on every worker process, exactly once."""

from __future__ import annotations

import uuid
from collections import Counter

import pytest
from redis.asyncio import Redis

from tests.fixtures.realtime import (
    ROUTINGS,
    LiveStack,
    RealtimeFactory,
    TokenFor,
    assert_each_gets_exactly,
    open_in_bursts,
    publish,
    wait_for_type,
)

pytestmark = pytest.mark.system

CLIENTS = 50
EVENTS = 20


class TestEndToEnd:
    """A job posted through the API shows up live on its owner's socket, in order."""

    @ROUTINGS
    async def test_countdown_events_arrive_in_order_and_only_to_the_owner(
        self, live_stack: LiveStack
    ) -> None:
        owner, other = await live_stack.stack.new_user(), await live_stack.stack.new_user()
        owners, others = await live_stack.listen(owner), await live_stack.listen(other)

        job = await owner.post_job("demo.countdown", {"steps": 5, "interval": 0.05})
        await wait_for_type(owners, "job.succeeded", within=30)

        types = [event["type"] for event in owners.events]
        assert types == ["job.queued", "job.started", *["job.progress"] * 5, "job.succeeded"]
        assert {event["job_id"] for event in owners.events} == {job["id"]}
        progress = [event["data"]["progress"] for event in owners.events[2:7]]
        assert progress == sorted(progress)
        assert progress[-1] == 100
        assert owners.event_ids == [
            event["id"] for event in await live_stack.stack.stream(owner, job["id"])
        ]
        assert others.events == [], "another user's socket got nothing"
        await owners.close()
        await others.close()


class TestAcrossProcesses:
    """Sockets of one user spread over both workers each get every event exactly once."""

    @ROUTINGS
    async def test_fifty_clients_on_two_workers_each_get_each_event_once(
        self, realtime_factory: RealtimeFactory, token_for: TokenFor, redis: Redis
    ) -> None:
        # One user's many sockets: the per-user cap is not what this test is about.
        realtime = await realtime_factory(WS_MAX_CONNECTIONS_PER_USER=str(CLIENTS))
        user_id = uuid.uuid4()
        # Bursts of concurrent handshakes spread the accepts.
        listeners = await open_in_bursts(realtime.ws_url, token_for(user_id), CLIENTS, burst=10)
        pids = realtime.socket_pids()
        serving = Counter(pids[listener.hello["connection_id"]] for listener in listeners)
        assert set(serving) == realtime.worker_pids(), f"both workers serve sockets: {serving}"

        ids = await publish(redis, realtime.prefix, user_id, EVENTS)
        await assert_each_gets_exactly(listeners, ids)

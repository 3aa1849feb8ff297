"""Job events reach their owner's sockets, on every worker process, exactly once."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import pytest
from redis.asyncio import Redis

from devharness.realtime import Listener, listen
from tests.fixtures.realtime import ROUTINGS, RealtimeFactory, TokenFor, publish
from tests.fixtures.workers import StackFactory

pytestmark = pytest.mark.system

CLIENTS = 50
EVENTS = 20


class TestEndToEnd:
    """A job posted through the API shows up live on its owner's socket, in order."""

    @ROUTINGS
    async def test_countdown_events_arrive_in_order_and_only_to_the_owner(
        self, stack_factory: StackFactory, realtime_factory: RealtimeFactory
    ) -> None:
        stack = await stack_factory()
        realtime, _ = await asyncio.gather(
            realtime_factory(prefix=stack.prefix), stack.start_worker()
        )
        owner, other = await stack.new_user(), await stack.new_user()
        owners = await listen(realtime.ws_url, token=owner.access_token)
        others = await listen(realtime.ws_url, token=other.access_token)

        job = await owner.post_job("demo.countdown", {"steps": 5, "interval": 0.05})
        await owners.wait_until(
            lambda item: any(event["type"] == "job.succeeded" for event in item.events),
            within=30,
            what="job.succeeded",
        )

        types = [event["type"] for event in owners.events]
        assert types == ["job.queued", "job.started", *["job.progress"] * 5, "job.succeeded"]
        assert {event["job_id"] for event in owners.events} == {job["id"]}
        progress = [event["data"]["progress"] for event in owners.events[2:7]]
        assert progress == sorted(progress)
        assert progress[-1] == 100
        assert owners.event_ids == [event["id"] for event in await stack.stream(owner, job["id"])]
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
        token = token_for(user_id)
        listeners: list[Listener] = []
        for _ in range(CLIENTS // 10):  # bursts of concurrent handshakes spread the accepts
            listeners += await asyncio.gather(
                *(listen(realtime.ws_url, token=token) for _ in range(10))
            )
        pids = realtime.socket_pids()
        serving = Counter(pids[listener.hello["connection_id"]] for listener in listeners)
        assert set(serving) == realtime.worker_pids(), f"both workers serve sockets: {serving}"

        ids = await publish(redis, realtime.prefix, user_id, EVENTS)
        for listener in listeners:
            await listener.wait_events(EVENTS)
        # Anything extra would have arrived with the last expected event.
        await asyncio.gather(*(listener.close() for listener in listeners))
        for listener in listeners:
            assert listener.event_ids == ids

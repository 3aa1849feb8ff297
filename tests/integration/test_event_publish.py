"""`publisher.publish_event` and `queue_publishes` on a Redis that has not seen their script yet."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis
from redis.asyncio import Redis as AsyncRedis

from common import publisher
from common.contracts import events
from devservices import EmbeddedRedis, free_port


@pytest.fixture
def fresh_redis(tmp_path: Path) -> Iterator[Redis]:
    """A Redis server of this test's own: no script cached in it."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), durable=False)
    client = Redis.from_url(server.start())
    try:
        yield client
    finally:
        client.close()
        server.stop()


class TestPublishOnAFreshServer:
    """The first publish loads the script (EVAL); later ones run it by its hash."""

    def test_publishes_without_the_script_cached_then_caches_it(self, fresh_redis: Redis) -> None:
        user_id = uuid.uuid4()
        assert fresh_redis.script_exists(publisher._PUBLISH_SHA) == [False]

        first = publisher.publish_event(
            fresh_redis, events.make_event(events.JOB_STARTED, user_id=user_id), prefix="t:"
        )
        second = publisher.publish_event(
            fresh_redis, events.make_event(events.JOB_SUCCEEDED, user_id=user_id), prefix="t:"
        )

        assert fresh_redis.script_exists(publisher._PUBLISH_SHA) == [True]
        stream = fresh_redis.xrange(events.user_stream("t:", user_id)) or []
        assert [entry_id for entry_id, _ in stream] == [first.encode(), second.encode()]


class TestQueuedOnAPipeline:
    """`queue_publishes`: the intake's events, in its one pipeline, on a server of any age."""

    async def test_events_land_in_order_in_one_round_trip_without_the_script_cached(
        self, tmp_path: Path
    ) -> None:
        server = EmbeddedRedis(tmp_path / "redis", port=free_port(), durable=False)
        client = AsyncRedis.from_url(server.start())
        try:
            user_id = uuid.uuid4()
            sent = [
                events.make_event(events.JOB_QUEUED, user_id=user_id, job_id=uuid.uuid4())
                for _ in range(3)
            ]
            pipeline = client.pipeline(transaction=False)
            queued = publisher.queue_publishes(pipeline, sent, prefix="t:")
            pipeline.lpush("t:after", "message")
            # No redis-py Script on the pipeline: no SCRIPT EXISTS round trip before it.
            assert not pipeline.scripts
            results = await pipeline.execute()

            assert queued == 4
            assert results[0] == publisher._PUBLISH_SHA
            ids = results[1:queued]
            stream: Any = await client.xrange(events.user_stream("t:", user_id))
            assert [entry_id for entry_id, _ in stream] == ids
            assert [orjson.loads(fields[b"event"])["job_id"] for _, fields in stream] == [
                str(event.job_id) for event in sent
            ]
            assert results[queued:] == [1]
        finally:
            await client.aclose()
            server.stop()

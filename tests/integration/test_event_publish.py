"""`publisher.publish_event`, `queue_publishes` and `send_event` on a Redis that has not seen
their script yet."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import ConnectionError as RedisConnectionError
from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.retry import Retry

from common import publisher
from common.contracts import events
from common.pipelined import PipelinedWriter
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


class TestSentWithoutWaiting:
    """`send_event`: the worker's events, written without waiting for Redis's reply."""

    def test_lands_in_order_on_a_server_without_the_script_then_the_replies_are_read(
        self, fresh_redis: Redis
    ) -> None:
        user_id = uuid.uuid4()
        listener = fresh_redis.pubsub()  # type: ignore[no-untyped-call]
        listener.subscribe(events.user_channel("t:", user_id))
        assert listener.get_message(timeout=5) is not None  # the subscription's confirmation
        writer = PipelinedWriter(fresh_redis.connection_pool, what="job events")
        try:
            sent = [
                events.make_event(type_, user_id=user_id, job_id=uuid.uuid4())
                for type_ in (events.JOB_STARTED, events.JOB_PROGRESS, events.JOB_SUCCEEDED)
            ]
            for event in sent:
                publisher.send_event(writer, event, prefix="t:")
            assert writer.pending == 3
            published = [listener.get_message(timeout=5) for _ in sent]
            writer.flush()
            assert writer.pending == 0
        finally:
            writer.close()
            listener.close()
        stream: Any = fresh_redis.xrange(events.user_stream("t:", user_id))
        assert [orjson.loads(fields[b"event"])["type"] for _, fields in stream] == [
            event.type for event in sent
        ]
        # The published copies carry the ids the stream gave, in the same order.
        assert [orjson.loads(message["data"])["id"] for message in published if message] == [
            entry_id.decode() for entry_id, _ in stream
        ]

    def test_a_server_that_is_down_fails_the_send_not_the_job(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        # Made while Redis is down (a worker process starting in an outage): no connection yet.
        down = Redis(port=free_port(), retry=Retry(NoBackoff(), 0))
        writer = PipelinedWriter(down.connection_pool, what="job events")
        event = events.make_event(events.JOB_STARTED, user_id=uuid.uuid4())
        with pytest.raises(RedisConnectionError):
            publisher.send_event(writer, event)
        with caplog.at_level(logging.WARNING, logger="common.publisher"):
            publisher.send_event_quietly(writer, event)
        assert [r.getMessage() for r in caplog.records if r.name == "common.publisher"] == [
            "event job.started not published: ConnectionError"
        ]
        writer.close()

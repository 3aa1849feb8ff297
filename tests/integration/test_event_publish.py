"""`publisher.publish_event` on a Redis that has not seen its script yet (new or restarted)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from redis import Redis

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

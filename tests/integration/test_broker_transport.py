"""`common.kombu_redis`: kombu's Redis transport with one client per channel, against real Redis."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from redis import Redis

from common.broker import celery_config, create_celery, queue_key, send_job
from common.contracts.job_kinds import DEMO_COUNTDOWN
from common.contracts.tasks import JOBS_QUEUE
from common.kombu_redis import TRANSPORT, Channel, Transport
from common.settings import CommonSettings

PARAMS = {"steps": 1, "interval": 0.1}


def _settings(redis_url: str, key_prefix: str) -> CommonSettings:
    return CommonSettings(_env_file=None, redis_url=redis_url, redis_key_prefix=key_prefix)


class TestWhichTransport:
    def test_redis_urls_use_it(self, redis_url: str) -> None:
        assert celery_config(_settings(redis_url, "p:"))["broker_transport"] == TRANSPORT

    @pytest.mark.parametrize("url", ["rediss://cache.example.com:6380/0", "amqp://guest@mq//"])
    def test_other_schemes_keep_kombus_choice(self, url: str) -> None:
        settings = CommonSettings(_env_file=None, redis_url=url)
        assert celery_config(settings)["broker_transport"] is None


class TestOneClientPerChannel:
    """Sends, deliveries and acks share the channel's client, and behave as kombu's."""

    def test_sends_reuse_one_client_and_queue_every_message(
        self, sync_redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        celery = create_celery(_settings(redis_url, key_prefix), main="test", sender=True)
        with celery.connection_for_write() as connection:
            assert isinstance(connection.transport, Transport)
            channel: Any = connection.default_channel
            assert isinstance(connection.default_channel, Channel)
            with channel.conn_or_acquire() as first, channel.conn_or_acquire() as second:
                assert first is second
            ids = [str(uuid.uuid4()) for _ in range(3)]
            for job_id in ids:
                send_job(celery, job_id=job_id, kind=DEMO_COUNTDOWN, params=PARAMS)
        assert sync_redis.llen(queue_key(key_prefix)) == 3

    def test_a_delivered_message_is_held_unacked_until_its_ack(
        self, sync_redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        celery = create_celery(_settings(redis_url, key_prefix), main="test")
        job_id = str(uuid.uuid4())
        send_job(celery, job_id=job_id, kind=DEMO_COUNTDOWN, params=PARAMS)
        with celery.connection_for_write() as connection:
            queue = connection.SimpleQueue(JOBS_QUEUE)
            try:
                message = queue.get(timeout=5)
                assert message.headers["id"] == job_id
                # The ack emulation's MULTI/EXEC ran on the channel's client.
                assert sync_redis.hlen(f"{key_prefix}unacked") == 1
                assert sync_redis.zcard(f"{key_prefix}unacked_index") == 1
                message.ack()
                assert sync_redis.hlen(f"{key_prefix}unacked") == 0
                assert sync_redis.zcard(f"{key_prefix}unacked_index") == 0
            finally:
                queue.close()
        assert sync_redis.llen(queue_key(key_prefix)) == 0

    def test_a_new_pool_gets_a_new_client(self, redis_url: str, key_prefix: str) -> None:
        # kombu drops its pools after a connection error; the client follows the new pool.
        celery = create_celery(_settings(redis_url, key_prefix), main="test", sender=True)
        with celery.connection_for_write() as connection:
            channel: Any = connection.default_channel
            assert isinstance(connection.default_channel, Channel)
            with channel.conn_or_acquire() as before:
                assert before.ping()
            channel._disconnect_pools()
            with channel.conn_or_acquire() as after:
                assert after is not before
                assert after.connection_pool is channel.pool
                assert after.ping()

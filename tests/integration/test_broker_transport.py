"""`common.kombu_redis`: kombu's Redis transport with one client per channel and an ack emulation
that does not wait for Redis, against real Redis."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from kombu.simple import SimpleQueue
from redis import ConnectionError as RedisConnectionError
from redis import Redis

from common.broker import celery_config, create_celery, queue_key, send_job
from common.contracts.job_kinds import DEMO_COUNTDOWN
from common.contracts.tasks import JOBS_QUEUE
from common.kombu_redis import TRANSPORT, Channel, QoS, Transport
from common.pipelined import PipelinedWriter
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
            channel: Any = queue.channel
            try:
                message = queue.get(timeout=5)
                assert message.headers["id"] == job_id
                channel.qos.flush()
                assert sync_redis.hlen(f"{key_prefix}unacked") == 1
                assert sync_redis.zcard(f"{key_prefix}unacked_index") == 1
                message.ack()
                channel.qos.flush()
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


@contextmanager
def _jobs_queue(redis_url: str, key_prefix: str, *, sent: int) -> Iterator[tuple[SimpleQueue, QoS]]:
    """`sent` job messages in the jobs queue, and a consumer of it with its ack emulation."""
    celery = create_celery(_settings(redis_url, key_prefix), main="test")
    for _ in range(sent):
        send_job(celery, job_id=str(uuid.uuid4()), kind=DEMO_COUNTDOWN, params=PARAMS)
    with celery.connection_for_write() as connection:
        queue = connection.SimpleQueue(JOBS_QUEUE)
        try:
            channel: Any = queue.channel
            qos = channel.qos
            assert isinstance(qos, QoS)
            yield queue, qos
        finally:
            queue.close()


def _records(sync_redis: Redis, key_prefix: str) -> tuple[int, int]:
    """The ack emulation's records: (messages held, index entries)."""
    return sync_redis.hlen(f"{key_prefix}unacked"), sync_redis.zcard(f"{key_prefix}unacked_index")


class TestAckEmulationDoesNotWait:
    """A delivery's record and an ack's delete are sent at once; the replies are read later."""

    def test_records_are_sent_without_reading_the_replies(
        self, sync_redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        with _jobs_queue(redis_url, key_prefix, sent=2) as (queue, qos):
            first, second = queue.get(timeout=5), queue.get(timeout=5)
            writer = qos.writer()
            # MULTI, ZADD, HSET, EXEC: four replies per delivery, none read yet.
            assert writer.pending == 8
            first.ack()
            assert writer.pending == 12
            qos.flush()
            assert writer.pending == 0
            assert _records(sync_redis, key_prefix) == (1, 1)
            assert sync_redis.hkeys(f"{key_prefix}unacked") == [str(second.delivery_tag).encode()]
            second.ack()
            qos.flush()
            assert _records(sync_redis, key_prefix) == (0, 0)

    def test_replies_are_read_once_enough_are_waiting(
        self, sync_redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        count = PipelinedWriter.MAX_PENDING // 8 + 5  # more deliveries and acks than the cap holds
        with _jobs_queue(redis_url, key_prefix, sent=count) as (queue, qos):
            most = 0
            for _ in range(count):
                queue.get(timeout=5).ack()
                most = max(most, qos.writer().pending)
            assert PipelinedWriter.MAX_PENDING <= most < PipelinedWriter.MAX_PENDING + 8
            qos.flush()
            assert _records(sync_redis, key_prefix) == (0, 0)
        assert sync_redis.llen(queue_key(key_prefix)) == 0

    def test_a_requeue_right_after_delivery_puts_the_message_back(
        self, sync_redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        # A reject reads the record kombu restores from: the pending writes go first.
        with _jobs_queue(redis_url, key_prefix, sent=1) as (queue, qos):
            message = queue.get(timeout=5)
            assert qos.writer().pending == 4
            message.requeue()
            assert qos.writer().pending == 0
            assert _records(sync_redis, key_prefix) == (0, 0)
            assert sync_redis.llen(queue_key(key_prefix)) == 1
            again = queue.get(timeout=5)
            assert again.headers["id"] == message.headers["id"]
            again.ack()

    def test_closing_the_channel_restores_what_was_not_acked(
        self, sync_redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        # A warm shutdown: the unacked delivery goes back to the queue, nothing is lost.
        with _jobs_queue(redis_url, key_prefix, sent=2) as (queue, _):
            queue.get(timeout=5).ack()
            held = queue.get(timeout=5)
        assert _records(sync_redis, key_prefix) == (0, 0)
        assert sync_redis.llen(queue_key(key_prefix)) == 1
        assert held.headers["id"] in str(sync_redis.lindex(queue_key(key_prefix), 0))

    def test_a_refused_write_is_logged_not_raised(
        self, sync_redis: Redis, redis_url: str, key_prefix: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        with _jobs_queue(redis_url, key_prefix, sent=1) as (queue, qos):
            # A key of the wrong type: Redis refuses the HSET inside the transaction.
            sync_redis.set(f"{key_prefix}unacked", "not a hash")
            message = queue.get(timeout=5)
            with caplog.at_level(logging.ERROR, logger="common.pipelined"):
                qos.flush()
            refused = [r for r in caplog.records if r.name == "common.pipelined"]
            assert len(refused) == 1
            assert "WRONGTYPE" in refused[0].getMessage()
            sync_redis.delete(f"{key_prefix}unacked")
            message.ack()
            qos.flush()
            assert _records(sync_redis, key_prefix) == (0, 0)

    def test_a_lost_connection_raises_then_the_next_write_reconnects(
        self, sync_redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        with _jobs_queue(redis_url, key_prefix, sent=2) as (queue, qos):
            first = queue.get(timeout=5)
            qos.flush()
            writer = qos.writer()
            connection: Any = writer._connection
            sync_redis.client_kill_filter(_id=str(_client_id(connection)))
            first.ack()  # written into the socket's buffer: the server's close is not seen yet
            with pytest.raises(RedisConnectionError):
                qos.flush()
            assert writer.pending == 0
            # redis-py closed the connection on the error; the next write connects again.
            second = queue.get(timeout=5)
            qos.flush()
            assert qos.writer().pending == 0
            held = sync_redis.hkeys(f"{key_prefix}unacked")
            # The first ack never ran: its record stays for the visibility timeout.
            assert sorted(held) == sorted(
                [str(first.delivery_tag).encode(), str(second.delivery_tag).encode()]
            )
            second.ack()
            qos.ack(str(first.delivery_tag))
            qos.flush()
            assert _records(sync_redis, key_prefix) == (0, 0)


def _client_id(connection: Any) -> int:
    connection.send_command("CLIENT", "ID")
    return int(connection.read_response())

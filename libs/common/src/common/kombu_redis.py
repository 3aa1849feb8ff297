"""kombu's Redis transport, with one client per channel and an ack emulation that does not wait.

kombu's Redis transport emulates acks: each delivery is recorded in Redis
(the message in the `unacked` hash, its delivery time in the `unacked_index`
sorted set, in one MULTI/EXEC) and each ack deletes that record (another
MULTI/EXEC), so a message whose worker vanished is put back once the
visibility timeout has passed. kombu runs both transactions synchronously in
the worker's Celery main process, the one serial stage of every job's path:
each waits for Redis to answer, twice a job, whatever the pool size, and
under load that wait is most of the main process's time (py-spy: 32% of its
samples in `Pipeline.execute`, 26% idle, at 200 jobs a second on 2 cores).

This module changes two things and keeps every key, command and record as
kombu writes them:

- `Channel.conn_or_acquire` reuses one `redis.Redis` per channel for the
  commands kombu runs itself (a new one cost about 100 us of CPU with
  redis-py 8, three times a job); a new one is made when kombu replaces the
  pool (it drops its pools after a connection error).
- `QoS` sends the two transactions on a connection of their own and does not
  wait for the replies (`common.pipelined`): they are read, and any error
  logged, once enough have piled up, on the ack emulation's timer, and
  before anything that reads the records (a reject, a restore, the
  channel's close). Redis runs one connection's commands in order, so an
  ack's delete never overtakes its delivery's record.

What a write that was sent but not executed (Redis gone at that moment)
costs is what kombu's own failure there costs, and less: a lost record means
the message is not restored after the visibility timeout, which in this
system is the lease sweep's job anyway (a running job's lease expires) and
the relay's (a queued job is sent again after `JOB_RESEND_AFTER_SECONDS`); a
lost ack delete means the message is delivered once more after the
visibility timeout, and the guarded claim ignores a job that has finished. A
failed send (connection refused or reset) raises as kombu's transaction
would, and Celery's consumer reconnects.

Used for `redis://` broker URLs only (`common.broker.celery_config`): naming
a transport bypasses kombu's choice by scheme, which for `rediss://` also
turns TLS on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps

from common.pipelined import PipelinedWriter

TRANSPORT = "common.kombu_redis:Transport"


class QoS(kombu_redis.QoS):
    """kombu's ack emulation; a delivery's and an ack's transactions are sent without waiting."""

    channel: Any
    _writer: PipelinedWriter | None = None

    def writer(self) -> PipelinedWriter:
        """The channel's writer, made anew when kombu replaced the channel's pool."""
        writer = self._writer
        pool = self.channel.pool
        if writer is None or writer.pool is not pool:
            writer = self._writer = PipelinedWriter(pool, what="ack emulation")
        return writer

    def flush(self) -> None:
        """Wait until Redis has run every write sent so far."""
        if self._writer is not None and self._writer.pool is self.channel._pool:
            self._writer.flush()

    def close_writer(self) -> None:
        writer, self._writer = self._writer, None
        if writer is not None:
            writer.close()

    def _keys(self) -> tuple[str, str]:
        prefix = self.channel.global_keyprefix or ""
        return prefix + self.unacked_index_key, prefix + self.unacked_key

    def append(self, message: Any, delivery_tag: str) -> None:
        delivery = message.delivery_info
        index, records = self._keys()
        record = dumps([message._raw, delivery["exchange"], delivery["routing_key"]])
        self.writer().send(
            (
                ("MULTI",),
                ("ZADD", index, time(), delivery_tag),
                ("HSET", records, delivery_tag, record),
                ("EXEC",),
            )
        )
        virtual.QoS.append(self, message, delivery_tag)

    def ack(self, delivery_tag: str) -> None:
        index, records = self._keys()
        self.writer().send(
            (("MULTI",), ("ZREM", index, delivery_tag), ("HDEL", records, delivery_tag), ("EXEC",))
        )
        virtual.QoS.ack(self, delivery_tag)

    # Everything else reads or rewrites the records: the writes sent so far go first.

    def reject(self, delivery_tag: str, requeue: bool = False) -> None:
        self.flush()
        super().reject(delivery_tag, requeue=requeue)

    def restore_unacked(self, client: Any = None) -> Any:
        self.flush()
        return super().restore_unacked(client)

    def restore_visible(self, start: int = 0, num: int = 10, interval: int = 10) -> None:
        self.flush()
        super().restore_visible(start=start, num=num, interval=interval)

    def restore_by_tag(self, tag: str, client: Any = None, leftmost: bool = False) -> None:
        self.flush()
        super().restore_by_tag(tag, client=client, leftmost=leftmost)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, reusing one client for the commands it runs itself."""

    QoS = QoS
    _own_client: Any = None

    @contextmanager
    def conn_or_acquire(self, client: Any = None) -> Iterator[Any]:
        if client:
            yield client
            return
        own = self._own_client
        if own is None or own.connection_pool is not self.pool:
            own = self._own_client = self._create_client()  # type: ignore[attr-defined]
        yield own

    def close(self) -> None:
        qos = self._qos  # only if made
        if isinstance(qos, QoS) and not self.closed:
            qos.close_writer()
        super().close()


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel`."""

    Channel = Channel

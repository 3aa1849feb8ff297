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
  wait for the replies: they are read, and any error logged, once enough
  have piled up (`QosWriter.MAX_PENDING`), on the ack emulation's timer, and
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

import logging
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from time import time
from typing import Any

from kombu.transport import redis as kombu_redis
from kombu.transport import virtual
from kombu.utils.json import dumps
from redis import RedisError, ResponseError

TRANSPORT = "common.kombu_redis:Transport"

_logger = logging.getLogger(__name__)


class QosWriter:
    """One Redis connection that sends commands without waiting, and reads their replies later.

    Thread-safe (kombu allows acks from other threads). The connection is
    taken from the channel's pool and held, so kombu's `pool.disconnect()`
    closes it too; replies still pending on a closed connection are gone
    with it, and the count restarts.
    """

    #: Replies read in one go once this many are waiting (about 32 jobs' worth).
    MAX_PENDING = 256

    def __init__(self, pool: Any) -> None:
        self.pool = pool
        self._connection: Any = pool.get_connection()
        self._sock: Any = None
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Replies sent for and not yet read."""
        return self._pending

    def send(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Write `commands` at once; read earlier replies first if too many are waiting."""
        connection = self._connection
        with self._lock:
            self._forget_if_reconnected()
            if self._pending >= self.MAX_PENDING:
                self._read(self._pending)
            try:
                connection.send_packed_command(
                    connection.pack_commands(commands), check_health=False
                )
            except BaseException:
                self._pending = 0  # redis-py disconnected: the replies are gone
                raise
            self._sock = connection._sock
            self._pending += len(commands)

    def flush(self) -> None:
        """Read every pending reply (blocking, up to the socket timeout)."""
        with self._lock:
            self._forget_if_reconnected()
            self._read(self._pending)

    def close(self) -> None:
        """Read what is pending if the connection still works, then hand it back."""
        try:
            self.flush()
        except (OSError, RedisError):
            _logger.warning("ack emulation: %d replies unread at close", self._pending)
        finally:
            self._pending = 0
            self.pool.release(self._connection)

    def _forget_if_reconnected(self) -> None:
        if self._connection._sock is not self._sock:
            self._pending = 0

    def _read(self, count: int) -> None:
        connection = self._connection
        for _ in range(count):
            self._pending -= 1
            try:
                reply = connection.read_response()
            except ResponseError as error:  # an EXECABORT: nothing of that transaction ran
                _logger.error("ack emulation: Redis refused a write: %s", error)
                continue
            except BaseException:
                self._pending = 0  # redis-py disconnected on the error
                raise
            if isinstance(reply, list):
                for item in reply:
                    if isinstance(item, ResponseError):
                        _logger.error("ack emulation: Redis refused a write: %s", item)


class QoS(kombu_redis.QoS):
    """kombu's ack emulation; a delivery's and an ack's transactions are sent without waiting."""

    channel: Any
    _writer: QosWriter | None = None

    def writer(self) -> QosWriter:
        """The channel's writer, made anew when kombu replaced the channel's pool."""
        writer = self._writer
        pool = self.channel.pool
        if writer is None or writer.pool is not pool:
            writer = self._writer = QosWriter(pool)
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

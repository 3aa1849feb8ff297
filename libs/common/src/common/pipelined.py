"""`PipelinedWriter`: commands sent to Redis without waiting for their replies.

For writes whose reply nobody acts on at once: kombu's ack emulation in the
worker's Celery main process (`common.kombu_redis`) and the worker's job
events (`common.publisher.send_event`). A blocking round trip per write puts
the writer to sleep until Redis has answered, which on a busy machine is most
of what such a write costs; here the bytes go out and the process goes on.
Redis runs one connection's commands in the order they were sent, so the
writes keep their order among themselves.

The replies are read once `MAX_PENDING` of them are waiting, or when the
owner asks (`flush`, before anything that reads what was written, and at
close). An error reply is logged (`what` names the writes in the message),
never raised; a failed send (connection refused or reset) raises, and the
next send connects again.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from typing import Any

from redis import RedisError, ResponseError

_logger = logging.getLogger(__name__)


class PipelinedWriter:
    """One Redis connection that sends commands without waiting, and reads their replies later.

    Thread-safe. The connection is taken from `pool` at the first send (so
    a writer can be made while Redis is down) and held until `close`, so the
    pool's `disconnect()` closes it too; replies still pending on a closed
    connection are gone with it, and the count restarts.
    """

    #: Replies read in one go once this many are waiting.
    MAX_PENDING = 256

    def __init__(self, pool: Any, *, what: str) -> None:
        self.pool = pool
        self.what = what
        self._connection: Any = None
        self._sock: Any = None
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Replies sent for and not yet read."""
        return self._pending

    def send(self, commands: Sequence[tuple[Any, ...]]) -> None:
        """Write `commands` at once; read earlier replies first if too many are waiting."""
        with self._lock:
            if self._connection is None:
                self._connection = self.pool.get_connection()
            connection = self._connection
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
            if self._connection is None:
                return
            self._forget_if_reconnected()
            self._read(self._pending)

    def close(self) -> None:
        """Read what is pending if the connection still works, then hand it back."""
        try:
            self.flush()
        except (OSError, RedisError):
            _logger.warning("%s: %d replies unread at close", self.what, self._pending)
        finally:
            self._pending = 0
            connection, self._connection = self._connection, None
            if connection is not None:
                self.pool.release(connection)

    def _forget_if_reconnected(self) -> None:
        if self._connection._sock is not self._sock:
            self._pending = 0

    def _read(self, count: int) -> None:
        connection = self._connection
        for _ in range(count):
            self._pending -= 1
            try:
                reply = connection.read_response()
            except ResponseError as error:  # a refused command, or EXECABORT
                _logger.error("%s: Redis refused a write: %s", self.what, error)
                continue
            except BaseException:
                self._pending = 0  # redis-py disconnected on the error
                raise
            if isinstance(reply, list):  # an EXEC's replies
                for item in reply:
                    if isinstance(item, ResponseError):
                        _logger.error("%s: Redis refused a write: %s", self.what, item)

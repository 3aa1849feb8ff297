"""kombu's Redis transport, with one client object per channel for its own commands.

kombu builds a new `redis.Redis` (a `PrefixedStrictRedis` under a key prefix)
for every command it runs outside the consumer's BRPOP: the ack emulation's
MULTI/EXEC on every delivery and on every ack, and every send. With redis-py
8 that object costs about 100 us of CPU (it builds its response callbacks per
instance), paid twice per job in the worker's Celery main process, the serial
stage of a job's path, and once per send in the API. A client is only a
handle on the channel's connection pool, and redis-py's clients are safe to
share, so one serves every call; a new one is made when kombu replaces the
pool (it drops its pools after a connection error). Everything else,
commands, keys and acks included, is kombu's own.

Used for `redis://` broker URLs only (`common.broker.celery_config`): naming
a transport bypasses kombu's choice by scheme, which for `rediss://` also
turns TLS on.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from kombu.transport import redis as kombu_redis

TRANSPORT = "common.kombu_redis:Transport"


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, reusing one client for the commands it runs itself."""

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


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with `Channel`."""

    Channel = Channel

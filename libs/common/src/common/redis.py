"""One async Redis client (with its connection pool) per process."""

from __future__ import annotations

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.driver_info import DriverInfo

from common.settings import CommonSettings

# What each connection reports with CLIENT SETINFO (redis-py and its version),
# resolved once. Without it redis-py reads its own package metadata for every new
# connection, a scan of sys.path costing about 0.3 ms: paid again and again by a
# pool that grows under a burst of requests or reconnects after a Redis restart.
# Every client of ours passes it (`driver_info=DRIVER_INFO`).
DRIVER_INFO = DriverInfo()


def create_redis(settings: CommonSettings) -> Redis:
    """Build the process's client; call it in `lifespan` and `aclose()` it there.

    The pool holds at most `redis_max_connections`; beyond that a command
    waits for a free connection (up to `redis_socket_timeout`) instead of
    failing at once, as redis-py's default pool does: a burst (thousands of
    sockets reconnecting after a deploy) queues rather than erroring.
    """
    pool = BlockingConnectionPool.from_url(
        settings.redis_url,
        max_connections=settings.redis_max_connections,
        timeout=settings.redis_socket_timeout,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        decode_responses=False,
        driver_info=DRIVER_INFO,
    )
    return Redis.from_pool(pool)


def create_subscriber_redis(settings: CommonSettings) -> Redis:
    """A client for pub/sub subscriptions; `aclose()` it in `lifespan`.

    Without retries: redis-py retries a failed read by reconnecting and
    resubscribing silently, which would skip what was published meanwhile (the
    realtime hub replays that gap from the streams when the error reaches it),
    and a task's cancellation can surface there as a timeout it retries, so the
    cancel would be lost and shutdown would hang. RESP2: under RESP3 redis-py
    formats every pub/sub message into a debug log string (logged or not), a
    cost paid once per event.
    """
    return Redis.from_url(
        settings.redis_url,
        socket_connect_timeout=settings.redis_socket_timeout,
        socket_timeout=settings.redis_socket_timeout,
        health_check_interval=10,
        retry=Retry(NoBackoff(), 0),
        decode_responses=False,
        protocol=2,
        driver_info=DRIVER_INFO,
    )

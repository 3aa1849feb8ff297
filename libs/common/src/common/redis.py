"""One async Redis client (with its connection pool) per process."""

from __future__ import annotations

from redis.asyncio import Redis

from common.settings import CommonSettings


def create_redis(settings: CommonSettings) -> Redis:
    """Build the process's client; call it in `lifespan` and `aclose()` it there."""
    return Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        decode_responses=False,
    )

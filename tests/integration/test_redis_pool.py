"""The process's Redis pool queues a burst beyond its size instead of failing it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from api.settings import ApiSettings
from common.redis import create_redis


async def test_a_burst_beyond_the_pool_waits_for_a_free_connection(
    settings_factory: Callable[..., ApiSettings],
) -> None:
    redis = create_redis(settings_factory(redis_max_connections=2))
    key = f"pool-test:{uuid.uuid4().hex}"
    try:
        # 50 blocking pops at once on 2 connections: each holds its connection
        # for a while, so most must wait for one rather than raise.
        await redis.rpush(key, *range(50))
        popped = await asyncio.gather(*(redis.blpop([key], timeout=1) for _ in range(50)))
        assert all(pair is not None for pair in popped)
        assert sorted(int(pair[1]) for pair in popped if pair is not None) == list(range(50))
    finally:
        await redis.delete(key)
        await redis.aclose()

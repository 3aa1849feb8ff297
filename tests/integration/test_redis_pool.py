"""The process's Redis pool queues a burst beyond its size instead of failing it."""

from __future__ import annotations

import asyncio
import importlib.metadata
import uuid
from collections.abc import Callable

import pytest

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


async def test_new_connections_report_the_client_without_reading_package_metadata(
    settings_factory: Callable[..., ApiSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pool growing by 20 connections reads redis-py's metadata never (it was once each)."""
    reads = []
    original = importlib.metadata.version

    def counted(name: str) -> str:
        reads.append(name)
        return original(name)

    monkeypatch.setattr(importlib.metadata, "version", counted)
    redis = create_redis(settings_factory(redis_max_connections=20))
    key = f"pool-test:{uuid.uuid4().hex}"
    try:
        # 20 blocking pops at once: the pool opens 20 connections.
        await redis.rpush(key, *range(20))
        await asyncio.gather(*(redis.blpop([key], timeout=1) for _ in range(20)))
        connections = list(redis.connection_pool._available_connections)
    finally:
        await redis.delete(key)
        await redis.aclose()

    assert len(connections) == 20
    assert "redis" not in reads
    # What CLIENT SETINFO tells the server (Redis 7.2 and later) is unchanged.
    reported = set()
    for connection in connections:
        assert connection.driver_info is not None
        reported.add((connection.driver_info.formatted_name, connection.driver_info.lib_version))
    assert reported == {("redis-py", original("redis"))}

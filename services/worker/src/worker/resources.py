"""Per-process database engine and Redis client for the worker.

Celery's prefork pool forks children after importing the app, so connections
are made lazily in the process that uses them and remade after a fork.

Why a sync driver (psycopg 3) here and asyncpg in the API: a Celery task is a
plain function in a worker process that runs one job at a time. Driving
asyncpg from it would mean an event loop per process and `run_until_complete`
around every query for no concurrency gain; psycopg with a tiny pool is the
simpler, equally fast tool for one job per process.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass

from redis import Redis
from sqlalchemy import Engine, create_engine
from sqlalchemy.pool import NullPool

from common.connection_budget import check_connection_budget_sync, share_of
from common.db import ping_idle_connections, pool_options
from common.pipelined import PipelinedWriter
from common.redis import DRIVER_INFO
from common.tracing import instrument_engine
from worker.settings import WorkerSettings, get_settings


@dataclass(frozen=True)
class Resources:
    """What a worker process talks to."""

    settings: WorkerSettings
    engine: Engine
    redis: Redis
    # The job events, sent without waiting for Redis's replies (`common.pipelined`).
    events: PipelinedWriter


_lock = threading.Lock()
_current: dict[int, Resources] = {}


def build(settings: WorkerSettings) -> Resources:
    """Build an engine and a Redis client for `settings`."""
    options = f"-c statement_timeout={settings.db_statement_timeout_ms}"
    engine = create_engine(
        settings.sync_database_url,
        connect_args={
            "application_name": settings.service_name,
            "connect_timeout": max(1, int(settings.health_check_timeout * 5)),
            "options": options,
        },
        **pool_options(settings),
    )
    ping_idle_connections(engine, settings)
    instrument_engine(engine)
    redis = Redis.from_url(
        settings.redis_url,
        socket_timeout=settings.redis_socket_timeout,
        socket_connect_timeout=settings.redis_socket_timeout,
        health_check_interval=30,
        driver_info=DRIVER_INFO,
    )
    events = PipelinedWriter(redis.connection_pool, what="job events")
    return Resources(settings=settings, engine=engine, redis=redis, events=events)


def get_resources() -> Resources:
    """This process's resources, built on first use (and again in a forked child)."""
    pid = os.getpid()
    with _lock:
        resources = _current.get(pid)
        if resources is None:
            _current.clear()
            resources = _current[pid] = build(get_settings())
        return resources


def close_events() -> None:
    """Read the replies to this process's job events still pending, if it has resources."""
    with _lock:
        resources = _current.get(os.getpid())
    if resources is not None:
        resources.events.close()


def check_connection_budget(settings: WorkerSettings, processes: int) -> str | None:
    """Warn (once, from the main process) when this service's pools can exceed Postgres' limit."""
    # One connection for one query, named as the pools' are so it is not counted as another's.
    engine = create_engine(
        settings.sync_database_url,
        poolclass=NullPool,
        connect_args={
            "application_name": settings.service_name,
            "connect_timeout": max(1, int(settings.health_check_timeout * 5)),
        },
    )
    try:
        share = share_of(settings, processes=processes)
        return check_connection_budget_sync(engine, service=settings.service_name, share=share)
    finally:
        engine.dispose()

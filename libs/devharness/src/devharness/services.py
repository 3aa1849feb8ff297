"""Where the tests' Postgres and Redis come from (DESIGN §7).

1. `TEST_SERVICES=docker`: testcontainers (fails if no Docker engine answers).
2. `TEST_DATABASE_URL` / `TEST_REDIS_URL`: those servers.
3. Otherwise: embedded real servers from the dev dependencies, under `.run/test/`.

Each run then creates its own database (dropped at the end) and its own Redis
key prefix, so runs sharing a server never see each other's data.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from devservices import EmbeddedPostgres, EmbeddedRedis, free_port

# Installed editable from the workspace (dev only): libs/devharness/src/devharness/.
ROOT = Path(__file__).resolve().parents[4]


@dataclass(frozen=True)
class ServiceUrls:
    """A Postgres server URL (any database) and a Redis URL, and where they came from."""

    postgres: str
    redis: str
    source: str


@contextlib.contextmanager
def _embedded() -> Iterator[ServiceUrls]:
    run_dir = ROOT / ".run" / "test"
    # One server per test session, on its own copy of an initdb'd template, so
    # sessions running side by side never share or stop each other's server.
    postgres = EmbeddedPostgres.from_template(
        run_dir / "postgres-template", run_dir / f"postgres-{os.getpid()}", port=free_port()
    )
    redis = EmbeddedRedis(run_dir / f"redis-{os.getpid()}", port=free_port(), durable=False)
    try:
        postgres_url = postgres.start()
        yield ServiceUrls(postgres=postgres_url, redis=redis.start(), source="embedded")
    finally:
        redis.stop()
        postgres.stop()
        shutil.rmtree(postgres.data_dir, ignore_errors=True)
        shutil.rmtree(redis.data_dir, ignore_errors=True)


@contextlib.contextmanager
def _docker() -> Iterator[ServiceUrls]:
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.postgres import PostgresContainer
    from testcontainers.redis import RedisContainer

    postgres_image = os.environ.get("POSTGRES_IMAGE", "postgres:17-alpine")
    redis_image = os.environ.get("REDIS_IMAGE", "redis:7-alpine")
    with PostgresContainer(postgres_image, driver=None) as pg, RedisContainer(redis_image) as rd:
        host, port = rd.get_container_host_ip(), rd.get_exposed_port(6379)
        yield ServiceUrls(
            postgres=pg.get_connection_url(), redis=f"redis://{host}:{port}/0", source="docker"
        )


@contextlib.contextmanager
def services_named_by(
    database_var: str,
    redis_var: str,
    *,
    otherwise: Callable[[], AbstractContextManager[ServiceUrls]],
) -> Iterator[ServiceUrls]:
    """The servers the two variables name; `otherwise` provides the one (or both) unset."""
    database_url = os.environ.get(database_var)
    redis_url = os.environ.get(redis_var)
    if database_url and redis_url:
        yield ServiceUrls(postgres=database_url, redis=redis_url, source="environment")
        return
    with otherwise() as urls:
        yield ServiceUrls(
            postgres=database_url or urls.postgres,
            redis=redis_url or urls.redis,
            source=f"environment+{urls.source}" if (database_url or redis_url) else urls.source,
        )


@contextlib.contextmanager
def provide_services() -> Iterator[ServiceUrls]:
    """The servers for this test session, started if need be and stopped after."""
    if os.environ.get("TEST_SERVICES") == "docker":
        with _docker() as urls:
            yield urls
        return
    with services_named_by("TEST_DATABASE_URL", "TEST_REDIS_URL", otherwise=_embedded) as urls:
        yield urls

"""Session-wide real services: a Postgres database and a Redis key prefix per run."""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterator

import pytest

from devharness.database import migrated_database
from devharness.services import ServiceUrls, provide_services


@pytest.fixture(scope="session")
def services() -> Iterator[ServiceUrls]:
    """The Postgres and Redis servers of this run (env, docker or embedded)."""
    with provide_services() as urls:
        yield urls


@pytest.fixture(scope="session")
def database_url(services: ServiceUrls) -> Iterator[str]:
    """This run's own database, migrated to head with Alembic."""
    with migrated_database(services.postgres) as url:
        yield url


@pytest.fixture(scope="session")
def redis_url(services: ServiceUrls) -> str:
    return services.redis


@pytest.fixture(scope="session")
def redis_key_prefix() -> str:
    """Keys and channels of this run start with this, so runs sharing a Redis never meet."""
    return f"test-{uuid.uuid4().hex[:8]}:"


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    return secrets.token_hex(32)


def pytest_report_header(config: pytest.Config) -> str:
    return "services: TEST_SERVICES=docker | TEST_DATABASE_URL/TEST_REDIS_URL | embedded (default)"

"""The start-up connection-budget check against the real Postgres (common.connection_budget)."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable

import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from api.main import create_app
from api.settings import ApiSettings
from common.connection_budget import Share, check_connection_budget
from devharness.polling import eventually
from tests.fixtures.api import ClientFactory
from worker import resources
from worker.settings import WorkerSettings

LOGGER = "common.connection_budget"
# Far past any server's limit, and one connection, which fits any server this suite runs on.
OVER = Share(instances=1000, processes=4, pool=10, overflow=20)
UNDER = Share(instances=1, processes=1, pool=1, overflow=0)


def _warnings(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


class TestCheckAgainstServer:
    """One query asks the server its limits; only a share that can exceed them warns."""

    async def test_a_share_over_the_limit_logs_one_warning_naming_numbers_and_fix(
        self, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger=LOGGER)
        problem = await check_connection_budget(engine, service="budget-test", share=OVER)
        [record] = _warnings(caplog)
        assert problem is not None
        assert record.getMessage() == problem
        assert "may open 120000 Postgres connections" in problem
        assert "1000 instances x 4 processes x (10 DB_POOL_SIZE + 20 DB_MAX_OVERFLOW)" in problem
        assert "max_connections" in problem
        assert "PgBouncer" in problem

    async def test_a_share_under_the_limit_logs_nothing(
        self, engine: AsyncEngine, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger=LOGGER)
        assert await check_connection_budget(engine, service="budget-test", share=UNDER) is None
        assert not _warnings(caplog)
        [record] = [r for r in caplog.records if r.name == LOGGER]
        assert record.getMessage().startswith("connection budget: budget-test may open 1 Postgres")

    async def test_an_unreachable_server_is_logged_at_info_and_ignored(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger=LOGGER)
        closed = create_async_engine("postgresql+asyncpg://postgres@127.0.0.1:1/test")
        try:
            assert await check_connection_budget(closed, service="budget-test", share=OVER) is None
        finally:
            await closed.dispose()
        [record] = [r for r in caplog.records if r.name == LOGGER]
        assert record.levelno == logging.INFO
        assert "not checked" in record.getMessage()

    def test_the_worker_checks_with_its_sync_driver(
        self, database_url: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.INFO, logger=LOGGER)
        over = WorkerSettings(
            _env_file=None, environment="test", database_url=database_url, instance_count=1000
        )
        under = over.model_copy(update={"instance_count": 1, "db_max_overflow": 0})
        assert resources.check_connection_budget(over, processes=4) is not None
        assert resources.check_connection_budget(under, processes=1) is None
        assert len(_warnings(caplog)) == 1


@pytest.fixture
def over_budget_app(settings_factory: Callable[..., ApiSettings]) -> FastAPI:
    # Built in a fixture: create_app() installs the logging config, which would
    # otherwise detach caplog's handler from the root logger mid-test.
    return create_app(settings_factory(instance_count=1000, web_concurrency=4))


class TestApiStartUp:
    """The API's lifespan runs the check off the request path and starts regardless."""

    async def test_an_api_configured_over_the_limit_warns_and_serves(
        self,
        client_factory: ClientFactory,
        over_budget_app: FastAPI,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        caplog.set_level(logging.INFO, logger=LOGGER)
        client = await client_factory(over_budget_app)
        assert (await client.get("/health/live")).status_code == 200

        async def warned() -> list[logging.LogRecord]:
            return _warnings(caplog)

        [record] = await eventually(warned)
        assert "1000 instances x 4 processes" in record.getMessage()

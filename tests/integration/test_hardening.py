"""Hardening checks not covered elsewhere: production host check, no SQL in error answers."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from sqlalchemy import text

from api.main import create_app
from api.settings import ApiSettings
from common.db import DbSession
from tests.fixtures.api import AppClient, ClientFactory
from tests.fixtures.problems import assert_plain_500, assert_problem


async def _bad_query(session: DbSession) -> None:
    await session.execute(text("SELECT secret_column FROM no_such_table_for_tests"))


@pytest.fixture
async def sql_failing_client(
    client_factory: ClientFactory, settings_factory: Callable[..., ApiSettings]
) -> httpx.AsyncClient:
    """A client of an app with a route, /test/sql, whose query fails."""
    app = create_app(settings_factory())
    app.add_api_route("/test/sql", _bad_query)
    return await client_factory(app)


class TestProductionHostCheck:
    """A production process answers only the hosts in ALLOWED_HOSTS."""

    async def test_unlisted_host_is_400_in_production(self, app_client: AppClient) -> None:
        client = await app_client(environment="production", allowed_hosts=["api.example.com"])
        for host in ("testserver", "evil.example", "api.example.com.evil.example"):
            response = await client.get("/v1/jobs/kinds", headers={"Host": host})
            assert_problem(response, 400)
        allowed = await client.get("/v1/jobs/kinds", headers={"Host": "api.example.com"})
        assert allowed.status_code == 200


class TestNoInternalsInAnswers:
    """A database error is a plain 500 problem: no SQL, table names or driver messages."""

    async def test_failed_query_answer_has_no_sql(
        self, sql_failing_client: httpx.AsyncClient
    ) -> None:
        response = await sql_failing_client.get("/test/sql")
        assert_plain_500(
            response, "SELECT", "no_such_table", "secret_column", "asyncpg", "sqlalchemy"
        )

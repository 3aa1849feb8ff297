"""Hardening checks not covered elsewhere: production host check, no SQL in error answers."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi import FastAPI
from sqlalchemy import text

from api.main import create_app
from api.settings import ApiSettings
from common.db import DbSession
from tests.fixtures.api import ClientFactory
from tests.fixtures.problems import assert_problem


async def _bad_query(session: DbSession) -> None:
    await session.execute(text("SELECT secret_column FROM no_such_table_for_tests"))


@pytest.fixture
def sql_failing_app(settings_factory: Callable[..., ApiSettings]) -> FastAPI:
    app = create_app(settings_factory())
    app.add_api_route("/test/sql", _bad_query)
    return app


class TestProductionHostCheck:
    """A production process answers only the hosts in ALLOWED_HOSTS."""

    async def test_unlisted_host_is_400_in_production(
        self,
        client_factory: ClientFactory,
        settings_factory: Callable[..., ApiSettings],
        jwt_secret: str,
    ) -> None:
        settings = settings_factory(
            environment="production", jwt_secret=jwt_secret, allowed_hosts=["api.example.com"]
        )
        client = await client_factory(create_app(settings))
        for host in ("testserver", "evil.example", "api.example.com.evil.example"):
            response = await client.get("/v1/jobs/kinds", headers={"Host": host})
            assert_problem(response, 400)
        allowed = await client.get("/v1/jobs/kinds", headers={"Host": "api.example.com"})
        assert allowed.status_code == 200


class TestNoInternalsInAnswers:
    """A database error is a plain 500 problem: no SQL, table names or driver messages."""

    async def test_failed_query_answer_has_no_sql(
        self, client_factory: ClientFactory, sql_failing_app: FastAPI
    ) -> None:
        client = await client_factory(sql_failing_app)
        response = await client.get("/test/sql")
        body = assert_problem(response, 500)
        assert body["title"] == "Internal Server Error"
        for leak in ("SELECT", "no_such_table", "secret_column", "asyncpg", "sqlalchemy"):
            assert leak.lower() not in response.text.lower()

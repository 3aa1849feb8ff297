"""The API's metrics in process, against real Postgres and Redis: routes, limits, jobs, pool."""

from __future__ import annotations

import logging
import uuid

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from api.settings import ApiSettings
from common.db import create_engine
from common.metrics import track_pool
from tests.fixtures.api import AppClient, MakeUser, RegisteredUser
from tests.fixtures.metrics import local_sample, scrape


class TestRequestMetrics:
    """Requests are labelled by route template; /metrics itself is plain and quiet."""

    async def test_a_job_read_is_labelled_with_the_route_template(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user: RegisteredUser = await make_user()
        labels = {"method": "GET", "route": "/v1/jobs/{job_id}", "status": "404"}
        before = local_sample("http_requests_total", **labels)
        job_id = uuid.uuid4()
        missing = await client.get(f"/v1/jobs/{job_id}", headers=user.headers)
        assert missing.status_code == 404
        result = await scrape(client)
        assert result.value("http_requests_total", **labels) == before + 1
        # The raw path never becomes a label value.
        assert not any(
            str(job_id) in route
            for name, labels_ in result.samples
            if name == "http_requests_total"
            for key, route in labels_
            if key == "route"
        )

    async def test_metrics_are_not_rate_limited_or_access_logged(
        self, limited_client: AppClient, caplog: pytest.LogCaptureFixture
    ) -> None:
        client = await limited_client(rate_limit_reads="1/minute", log_level="INFO")
        # create_app configured logging and so dropped caplog's root handler:
        # listen on the access logger itself, after it.
        access = logging.getLogger("access")
        access.addHandler(caplog.handler)
        try:
            for _ in range(3):
                response = await client.get("/metrics")
                assert response.status_code == 200
                assert "ratelimit" not in response.headers
            assert not [r for r in caplog.records if r.name == "access"]
            # The control: an ordinary request is access-logged through the same handler.
            assert (await client.get("/health/ready")).status_code in {200, 503}
            assert (await client.get("/v1/jobs/kinds")).status_code == 200
        finally:
            access.removeHandler(caplog.handler)
        logged = [r for r in caplog.records if r.name == "access"]
        assert logged, "the capture sees access lines (else the first half proves nothing)"
        assert all("/metrics" not in r.getMessage() for r in logged)

    async def test_metrics_token_is_enforced(self, app_client: AppClient) -> None:
        token = "metrics-" + uuid.uuid4().hex
        client = await app_client(metrics_token=token)
        refused = await client.get("/metrics")
        assert refused.status_code == 401
        assert refused.headers["content-type"] == "application/problem+json"
        assert refused.json()["request_id"] == refused.headers["x-request-id"]
        assert (await scrape(client, token=token)).has("http_requests_total")


class TestDomainMetrics:
    """Rate-limit rejections and accepted jobs are counted."""

    async def test_a_429_increments_the_rejection_counter(self, limited_client: AppClient) -> None:
        client = await limited_client(rate_limit_reads="2/minute")
        before = local_sample("rate_limit_rejections_total", policy="reads")
        statuses = [(await client.get("/v1/jobs/kinds")).status_code for _ in range(4)]
        assert statuses == [200, 200, 429, 429]
        assert local_sample("rate_limit_rejections_total", policy="reads") == before + 2

    async def test_an_accepted_job_is_counted_by_kind_and_a_replay_is_not(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user: RegisteredUser = await make_user()
        before = local_sample("jobs_accepted_total", kind="demo.countdown")
        body = {"kind": "demo.countdown", "params": {"steps": 1, "interval": 0}}
        headers = {**user.headers, "Idempotency-Key": uuid.uuid4().hex}
        first = await client.post("/v1/jobs", json=body, headers=headers)
        replay = await client.post("/v1/jobs", json=body, headers=headers)
        assert (first.status_code, replay.status_code) == (202, 200)
        assert local_sample("jobs_accepted_total", kind="demo.countdown") == before + 1


class TestPoolMetrics:
    """The pool gauges follow checkouts of an engine from `common.db`."""

    async def test_size_gauge_reads_the_pool_not_a_setting(self, settings: ApiSettings) -> None:
        # A pool built without our settings: only the pool itself knows it holds 4.
        engine = create_async_engine(settings.database_url, pool_size=4)
        try:
            track_pool(engine.sync_engine.pool)
            assert local_sample("db_pool_size") == 4
        finally:
            await engine.dispose()

    async def test_checked_out_gauge_moves_with_connections(self, settings: ApiSettings) -> None:
        engine = create_engine(settings.model_copy(update={"db_pool_size": 3}))
        try:
            base = local_sample("db_pool_checked_out")
            assert local_sample("db_pool_size") == 3
            async with engine.connect() as first, engine.connect() as second:
                await first.execute(text("SELECT 1"))
                await second.execute(text("SELECT 1"))
                assert local_sample("db_pool_checked_out") == base + 2
            assert local_sample("db_pool_checked_out") == base
        finally:
            await engine.dispose()

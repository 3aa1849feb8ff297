"""Liveness and readiness: each dependency checked under its own timeout, and the drain."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from fastapi import FastAPI
from starlette.requests import Request

from api.main import create_app
from common.health import Lifecycle
from devservices import free_port
from tests.fixtures.api import AppClient, ClientFactory, SettingsFactory

CHECK_TIMEOUT = 0.5  # seconds, the health check timeout of the apps with a broken Redis


class TestLiveness:
    """/health/live answers 200 while the process serves."""

    async def test_live_is_200(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/live")
        assert response.status_code == 200
        assert response.json() == {"status": "ok"}


class TestReadiness:
    """/health/ready checks Postgres and Redis and names whatever fails."""

    async def test_ready_is_200_with_every_check_ok(self, client: httpx.AsyncClient) -> None:
        response = await client.get("/health/ready")
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"
        body = response.json()
        assert body["status"] == "ok"
        assert "failing" not in body
        assert set(body["checks"]) == {"postgres", "redis"}
        for check in body["checks"].values():
            assert check["status"] == "ok"
            assert isinstance(check["latency_ms"], int | float)
            assert check["latency_ms"] >= 0

    @pytest.fixture
    async def without_redis(self, app_client: AppClient) -> httpx.AsyncClient:
        """A client of an app whose Redis is a port nothing listens on."""
        return await app_client(
            redis_url=f"redis://127.0.0.1:{free_port()}/0", health_check_timeout=CHECK_TIMEOUT
        )

    async def test_unreachable_redis_is_503_naming_redis(
        self, without_redis: httpx.AsyncClient
    ) -> None:
        started = time.monotonic()
        response = await without_redis.get("/health/ready")
        elapsed = time.monotonic() - started
        assert response.status_code == 503
        body = response.json()
        assert body["status"] == "fail"
        assert body["failing"] == ["redis"]
        assert body["checks"]["redis"]["status"] == "fail"
        assert body["checks"]["redis"]["error"]
        assert body["checks"]["postgres"]["status"] == "ok"
        # Bounded by the check timeout, not by the client's retries and backoff.
        assert elapsed < CHECK_TIMEOUT + 1.0

    async def test_a_redis_that_never_answers_fails_at_the_check_timeout(
        self, app_client: AppClient
    ) -> None:
        """A server that accepts and never answers (a refused port fails in milliseconds
        and never reaches the timeout branch)."""
        held: list[asyncio.StreamWriter] = []

        async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            held.append(writer)  # keep the connection open, answer nothing

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            client = await app_client(
                redis_url=f"redis://127.0.0.1:{port}/0",
                health_check_timeout=CHECK_TIMEOUT,
                redis_socket_timeout=30,
            )
            response = await client.get("/health/ready")
            body = response.json()
            assert response.status_code == 503
            assert body["failing"] == ["redis"]
            assert body["checks"]["redis"]["error"] == "timed out after 0.5s"
            assert body["checks"]["redis"]["latency_ms"] >= 500
        finally:
            for writer in held:
                writer.close()
            server.close()
            await server.wait_closed()

    async def test_liveness_does_not_depend_on_redis(
        self, without_redis: httpx.AsyncClient
    ) -> None:
        assert (await without_redis.get("/health/live")).status_code == 200


async def _drain(request: Request) -> dict[str, bool]:
    lifecycle: Lifecycle = request.state.lifecycle
    lifecycle.start_draining()
    return {"draining": lifecycle.draining}


class TestDraining:
    """Once draining starts, readiness fails while liveness still answers."""

    async def test_draining_fails_readiness_only(
        self, client_factory: ClientFactory, settings_factory: SettingsFactory
    ) -> None:
        app: FastAPI = create_app(settings_factory())
        app.add_api_route("/test/drain", _drain, methods=["POST"])
        client = await client_factory(app)
        assert (await client.get("/health/ready")).status_code == 200

        assert (await client.post("/test/drain")).json() == {"draining": True}

        ready = await client.get("/health/ready")
        assert ready.status_code == 503
        body = ready.json()
        assert body["failing"] == ["draining"]
        assert all(check["status"] == "ok" for check in body["checks"].values())
        assert (await client.get("/health/live")).status_code == 200

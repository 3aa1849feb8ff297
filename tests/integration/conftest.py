"""The API in process (ASGI transport, lifespan run) against real Postgres and Redis."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from api.main import create_app
from api.settings import ApiSettings
from devharness.ratelimits import GENEROUS_RATE_LIMITS
from worker.resources import Resources, build
from worker.settings import WorkerSettings

PASSWORD = "correct horse battery staple"


@pytest.fixture(scope="session")
def settings_factory(
    database_url: str, redis_url: str, jwt_secret: str, redis_key_prefix: str
) -> Callable[..., ApiSettings]:
    """Build ApiSettings for the real test services, overriding any field."""

    def make(**overrides: Any) -> ApiSettings:
        values: dict[str, Any] = {
            "environment": "test",
            "database_url": database_url,
            "redis_url": redis_url,
            "redis_key_prefix": redis_key_prefix,
            "jwt_secret": jwt_secret,
            "log_level": "WARNING",
            # Every test shares one client address; tests of the limits set their own.
            **GENEROUS_RATE_LIMITS,
        }
        values.update(overrides)
        return ApiSettings(_env_file=None, **values)

    return make


@pytest.fixture(scope="session")
def settings(settings_factory: Callable[..., ApiSettings]) -> ApiSettings:
    return settings_factory()


ClientFactory = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[[FastAPI], Awaitable[httpx.AsyncClient]]]:
    """Start an app's lifespan and give an HTTP client for it; all closed after the test."""
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []

    async def make(app: FastAPI, **client_kwargs: Any) -> httpx.AsyncClient:
        manager = LifespanManager(app)
        await manager.__aenter__()
        managers.append(manager)
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 5555))
        client = httpx.AsyncClient(
            transport=transport, base_url="http://testserver", **client_kwargs
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture(scope="session")
async def app(settings: ApiSettings) -> FastAPI:
    return create_app(settings)


@pytest.fixture(scope="session")
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the default app, shared by the session (its lifespan runs once)."""
    async with LifespanManager(app) as manager:
        transport = httpx.ASGITransport(app=manager.app, client=("203.0.113.7", 5555))
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield client


@dataclass
class RegisteredUser:
    id: str
    email: str
    password: str
    access_token: str
    refresh_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@pytest.fixture
def make_user(client: httpx.AsyncClient) -> Callable[[], Awaitable[RegisteredUser]]:
    """Register a fresh user through the API and log in; returns ids and tokens."""

    async def make() -> RegisteredUser:
        email = f"user-{uuid.uuid4().hex[:10]}@example.com"
        registered = await client.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        token = await client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
        assert token.status_code == 200, token.text
        body = token.json()
        return RegisteredUser(
            id=registered.json()["id"],
            email=email,
            password=PASSWORD,
            access_token=body["access_token"],
            refresh_token=body["refresh_token"],
        )

    return make


@pytest.fixture(scope="session")
async def db_engine(settings: ApiSettings) -> AsyncIterator[AsyncEngine]:
    """An engine on this run's database, for tests that look at or change rows directly."""
    engine = create_async_engine(settings.database_url)
    yield engine
    await engine.dispose()


WorkerResourcesFactory = Callable[..., Resources]


@pytest.fixture(scope="module")
def worker_resources_factory(
    database_url: str, redis_url: str, redis_key_prefix: str, jwt_secret: str
) -> Iterator[WorkerResourcesFactory]:
    """The worker's engine and Redis client on this run's services, with settings overrides."""
    built: list[Resources] = []

    def make(**overrides: Any) -> Resources:
        values = {
            "environment": "test",
            "database_url": database_url,
            "redis_url": redis_url,
            "redis_key_prefix": redis_key_prefix,
            "jwt_secret": jwt_secret,
            **overrides,
        }
        settings = WorkerSettings(_env_file=None, **values)
        built.append(build(settings))
        return built[-1]

    yield make
    for resources in built:
        resources.engine.dispose()
        resources.redis.close()

"""The API's dependencies on its lifespan state, all in one place.

Each reads one entry of `api.state.ApiState` (a dict lookup, no await of
its own); routers take these, never `request.state`. The database ones
(`DbSession`, `DbEngine`, `SessionFactory`) live in `common.db`.
"""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends
from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from api.auth.passwords import PasswordHasher
from api.jobs.intake import JobIntake
from api.settings import ApiSettings
from api.state import api_state
from common.ratelimit import RateLimiter
from common.revocation import Revocations as RevocationStore


async def get_api_settings(connection: HTTPConnection) -> ApiSettings:
    """The settings the app was created with."""
    return api_state(connection)["settings"]


async def get_password_hasher(connection: HTTPConnection) -> PasswordHasher:
    """The process's password hasher."""
    return api_state(connection)["password_hasher"]


async def get_revocations(connection: HTTPConnection) -> RevocationStore:
    """The process's access-token revocations."""
    return api_state(connection)["revocations"]


async def get_redis(connection: HTTPConnection) -> Redis:
    """The process's Redis client (events, tickets, login bookkeeping)."""
    return api_state(connection)["redis"]


async def get_rate_limiter(connection: HTTPConnection) -> RateLimiter:
    """The process's rate limiter."""
    return api_state(connection)["rate_limiter"]


async def get_intake(connection: HTTPConnection) -> JobIntake:
    """The process's job intake (group commit)."""
    return api_state(connection)["job_intake"]


async def get_celery(connection: HTTPConnection) -> Celery:
    """The process's Celery app (sending only)."""
    return api_state(connection)["celery"]


Settings = Annotated[ApiSettings, Depends(get_api_settings)]
Hasher = Annotated[PasswordHasher, Depends(get_password_hasher)]
Revocations = Annotated[RevocationStore, Depends(get_revocations)]
RedisClient = Annotated[Redis, Depends(get_redis)]
Limiter = Annotated[RateLimiter, Depends(get_rate_limiter)]
Intake = Annotated[JobIntake, Depends(get_intake)]
CeleryApp = Annotated[Celery, Depends(get_celery)]

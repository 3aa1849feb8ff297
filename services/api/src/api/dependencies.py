"""The API's dependencies on its lifespan state, all in one place.

Each reads one entry of `api.state.ApiState` (a dict lookup, no await of
its own); routers take these, never `request.state`. The database ones
(`DbSession`, `DbEngine`, `SessionFactory`) live in `common.db`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated, TypeVar

from celery import Celery
from fastapi import Depends
from redis.asyncio import Redis
from starlette.requests import HTTPConnection

from api.auth.passwords import PasswordHasher
from api.jobs.intake import JobIntake
from api.settings import ApiSettings
from api.state import ApiState, api_state
from common.ratelimit import RateLimiter
from common.revocation import Revocations as RevocationStore

T = TypeVar("T")


def _from_state(read: Callable[[ApiState], T]) -> Callable[[HTTPConnection], Awaitable[T]]:
    """A dependency answering what `read` takes from the lifespan state (mypy checks the key).

    Async though it awaits nothing: FastAPI would run a plain function in a thread.
    """

    async def dependency(connection: HTTPConnection) -> T:
        return read(api_state(connection))

    return dependency


# Outside `Annotated`, whose metadata mypy does not check.
get_api_settings = _from_state(lambda state: state["settings"])
get_password_hasher = _from_state(lambda state: state["password_hasher"])
get_revocations = _from_state(lambda state: state["revocations"])
# Events, tickets, login bookkeeping.
get_redis = _from_state(lambda state: state["redis"])
get_rate_limiter = _from_state(lambda state: state["rate_limiter"])
# Group commit of new jobs.
get_intake = _from_state(lambda state: state["job_intake"])
# Sending only.
get_celery = _from_state(lambda state: state["celery"])

Settings = Annotated[ApiSettings, Depends(get_api_settings)]
Hasher = Annotated[PasswordHasher, Depends(get_password_hasher)]
Revocations = Annotated[RevocationStore, Depends(get_revocations)]
RedisClient = Annotated[Redis, Depends(get_redis)]
Limiter = Annotated[RateLimiter, Depends(get_rate_limiter)]
Intake = Annotated[JobIntake, Depends(get_intake)]
CeleryApp = Annotated[Celery, Depends(get_celery)]

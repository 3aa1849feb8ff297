"""The lifespan state every service shares, typed, and the one way to read it.

Each service's lifespan yields one `TypedDict` (`api.state.ApiState`,
`realtime.state.RealtimeState`) built from the parts here: `CommonState`
(what `common`'s health, auth and rate-limit code read) and, for a service
with a database, `DatabaseState`. Starlette copies that dict into each
request's `scope["state"]`; `state_of` hands it back typed, without the
`State` wrapper object `request.state` builds. Routers never read the state
themselves: they ask for `Annotated` dependencies built on `state_of`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, TypedDict, TypeVar, cast

from common.settings import CommonSettings

if TYPE_CHECKING:
    from collections.abc import Mapping

    from redis.asyncio import Redis
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
    from starlette.requests import HTTPConnection

    from common.health import HealthCheck, Lifecycle
    from common.ratelimit import RateLimiter
    from common.revocation import Revocations

SettingsT = TypeVar("SettingsT", bound=CommonSettings)


class CommonState(TypedDict, Generic[SettingsT]):
    """What every service's lifespan yields, whatever else it adds."""

    settings: SettingsT
    redis: Redis
    lifecycle: Lifecycle
    health_checks: Mapping[str, HealthCheck]
    rate_limiter: RateLimiter
    revocations: Revocations


class DatabaseState(TypedDict):
    """The engines and session factory of a service that talks to Postgres."""

    engine: AsyncEngine
    autocommit_engine: AsyncEngine
    session_factory: async_sessionmaker[AsyncSession]


def state_of(connection: HTTPConnection) -> CommonState[Any]:
    """This request's (or socket's) copy of the lifespan state."""
    return cast("CommonState[Any]", connection.scope["state"])


def database_state(connection: HTTPConnection) -> DatabaseState:
    """The database part of this request's copy of the lifespan state."""
    return cast("DatabaseState", connection.scope["state"])

"""The Postgres connection budget: what a deployment may open against what the server allows.

Each process keeps a SQLAlchemy pool of `DB_POOL_SIZE` connections and may open
`DB_MAX_OVERFLOW` more under load, so at its most a service holds instances x
processes x (pool + overflow). `scripts.connection_budget` adds that up over
render.yaml; `check_connection_budget` (async, the API) and
`check_connection_budget_sync` (the worker) ask the running server at start-up
and log one WARNING when this service, plus what others hold already, can
exceed it. The check never stops a process from starting.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from common.settings import CommonSettings

_logger = logging.getLogger("common.connection_budget")

# Client sessions only: background workers and autovacuum have slots of their own.
# Sessions of other roles show no backend_type to an ordinary role; those with a
# database are counted as clients. Our own service's sessions (the same
# application_name) are already in its share, so they are left out.
_SERVER_LIMITS = text(
    """
    SELECT current_setting('max_connections')::int AS max_connections,
           current_setting('superuser_reserved_connections')::int
             + coalesce(current_setting('reserved_connections', true), '0')::int AS reserved,
           (SELECT count(*) FROM pg_stat_activity
             WHERE datid IS NOT NULL
               AND coalesce(backend_type, 'client backend') = 'client backend'
               AND pid <> pg_backend_pid()
               AND application_name IS DISTINCT FROM :service_name) AS held_by_others
    """
)


@dataclass(frozen=True)
class Share:
    """One service's share of the budget: every connection its processes may open at once."""

    instances: int
    processes: int
    pool: int
    overflow: int

    @property
    def connections(self) -> int:
        """Instances x processes x (pool + overflow)."""
        return self.instances * self.processes * (self.pool + self.overflow)


@dataclass(frozen=True)
class ServerLimits:
    """What the Postgres server allows ordinary roles, and what others hold now."""

    max_connections: int
    reserved: int
    held_by_others: int = 0

    @property
    def usable(self) -> int:
        """Connections ordinary roles may open (`max_connections` less the reserved slots)."""
        return usable_connections(self.max_connections, reserved=self.reserved)

    @property
    def free(self) -> int:
        """What is left for this service once others' connections are counted."""
        return self.usable - self.held_by_others


def share_of(settings: CommonSettings, *, processes: int) -> Share:
    """This service's share: `INSTANCE_COUNT` instances of `processes` pooled processes each."""
    return Share(
        instances=settings.instance_count,
        processes=processes,
        pool=settings.db_pool_size,
        overflow=settings.db_max_overflow,
    )


def usable_connections(max_connections: int, *, reserved: int) -> int:
    """The connections ordinary roles may open: `max_connections` less the reserved slots."""
    return max_connections - reserved


def budget_problem(service: str, share: Share, limits: ServerLimits) -> str | None:
    """The warning when `share` can exceed what `limits` leave free, or None when it fits."""
    if share.connections <= limits.free:
        return None
    return (
        f"connection budget: {service} may open {share.connections} Postgres connections "
        f"({share.instances} instances x {share.processes} processes x "
        f"({share.pool} DB_POOL_SIZE + {share.overflow} DB_MAX_OVERFLOW)), but the server "
        f"allows {limits.usable} (max_connections {limits.max_connections} less "
        f"{limits.reserved} reserved) and others hold {limits.held_by_others}, leaving "
        f"{limits.free}; under load connections will be refused. Lower DB_POOL_SIZE or "
        "DB_MAX_OVERFLOW, run fewer processes (WEB_CONCURRENCY, WORKER_CONCURRENCY) or "
        "instances, or put a pooler (PgBouncer, Render's connection pooler) in front of Postgres"
    )


def _limits_of(row: Any) -> ServerLimits:
    return ServerLimits(
        max_connections=int(row.max_connections),
        reserved=int(row.reserved),
        held_by_others=int(row.held_by_others),
    )


def _report(service: str, share: Share, limits: ServerLimits) -> str | None:
    problem = budget_problem(service, share, limits)
    if problem is None:
        _logger.info(
            "connection budget: %s may open %d Postgres connections, %d are free",
            service,
            share.connections,
            limits.free,
        )
    else:
        _logger.warning(problem)
    return problem


async def check_connection_budget(engine: AsyncEngine, *, service: str, share: Share) -> str | None:
    """Ask the server for its limits once; log (and return) a warning when `share` can exceed them.

    A failed query is logged at INFO and ignored: the check never stops a start.
    """
    try:
        async with engine.connect() as connection:
            result = await connection.execute(_SERVER_LIMITS, {"service_name": service})
            row = result.one()
    except (SQLAlchemyError, OSError) as exc:
        _logger.info("connection budget not checked: %s", type(exc).__name__)
        return None
    return _report(service, share, _limits_of(row))


def check_connection_budget_sync(engine: Engine, *, service: str, share: Share) -> str | None:
    """`check_connection_budget` for a sync engine (the worker)."""
    try:
        with engine.connect() as connection:
            row = connection.execute(_SERVER_LIMITS, {"service_name": service}).one()
    except (SQLAlchemyError, OSError) as exc:
        _logger.info("connection budget not checked: %s", type(exc).__name__)
        return None
    return _report(service, share, _limits_of(row))

"""The async SQLAlchemy engine, the session factory, and the request-scoped session."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

# Imported here (also for `driver_connection`), asyncpg loads once, at preload in
# gunicorn's master, rather than when each worker's lifespan makes its engine
# (about 35 ms of every recycled worker's start).
import asyncpg  # type: ignore[import-untyped]  # noqa: F401  (preloaded, see above)
from fastapi import Depends
from sqlalchemy import ClauseElement, Engine, MetaData, event
from sqlalchemy.dialects.postgresql.asyncpg import PGDialect_asyncpg
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase
from sqlalchemy.pool import ConnectionPoolEntry
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.util import greenlet_spawn
from starlette.requests import HTTPConnection

from common.metrics import track_pool
from common.settings import CommonSettings
from common.state import database_state

_RETURNED_AT = "returned_at"
_ASYNCPG_DIALECT = PGDialect_asyncpg()  # type: ignore[no-untyped-call]
# Named constraints so Alembic autogenerate produces stable, reviewable names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of every table; one metadata for the whole system."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def pool_options(settings: CommonSettings) -> dict[str, Any]:
    """The connection-pool arguments of `create_engine`, for async and sync engines alike.

    With `db_pool_ping_after_seconds` > 0 the engine also needs `ping_idle_connections`.
    """
    return {
        "pool_size": settings.db_pool_size,
        "max_overflow": settings.db_max_overflow,
        "pool_pre_ping": settings.db_pool_ping_after_seconds == 0,
        "pool_recycle": settings.db_pool_recycle,
        "pool_timeout": settings.db_pool_timeout,
    }


def ping_idle_connections(engine: Engine, settings: CommonSettings) -> None:
    """Ping a pooled connection before use only if it sat idle `db_pool_ping_after_seconds`.

    SQLAlchemy's pre-ping costs every request a round trip (three with
    asyncpg, whose ping runs in its own transaction); a connection returned a
    moment ago is as good as a ping. A dead one is replaced before the request
    sees it; one that dies while in use fails that statement, and SQLAlchemy
    then invalidates every older connection of the pool.
    """
    idle_limit = settings.db_pool_ping_after_seconds
    if idle_limit == 0:
        return

    def on_checkin(_: Any, record: ConnectionPoolEntry) -> None:
        record.info[_RETURNED_AT] = time.monotonic()

    def on_checkout(dbapi_connection: Any, record: ConnectionPoolEntry, _: Any) -> None:
        returned_at = record.info.get(_RETURNED_AT)
        if returned_at is None or time.monotonic() - returned_at < idle_limit:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)
        except Exception as exc:
            # The pool discards this connection and checks out (or opens) another.
            raise DisconnectionError("pooled connection failed its ping") from exc

    event.listen(engine.pool, "checkin", on_checkin)
    event.listen(engine.pool, "checkout", on_checkout)


def create_engine(settings: CommonSettings) -> AsyncEngine:
    """Build the process's engine; call it in `lifespan`, never at import."""
    server_settings = {"application_name": settings.service_name}
    if settings.db_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    engine = create_async_engine(
        settings.database_url,
        connect_args={
            "server_settings": server_settings,
            "timeout": settings.health_check_timeout * 5,
        },
        **pool_options(settings),
    )
    ping_idle_connections(engine.sync_engine, settings)
    track_pool(engine.sync_engine.pool)
    return engine


def create_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions that keep loaded objects usable after commit (no implicit refresh I/O)."""
    return async_sessionmaker(engine, expire_on_commit=False, autoflush=False)


def autocommit_engine(engine: AsyncEngine) -> AsyncEngine:
    """`engine` (same pool) without transactions: one statement alone needs no BEGIN/COMMIT."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def driver_sql(statement: ClauseElement, *params: str) -> str:
    """`statement` as asyncpg runs it: `$1, $2, ...` stand for `params`, in that order."""
    compiled = statement.compile(dialect=_ASYNCPG_DIALECT)
    assert isinstance(compiled, SQLCompiler)
    if list(compiled.positiontup or ()) != list(params):
        raise ValueError(f"parameters are {compiled.positiontup}, not {list(params)}")
    return str(compiled)


@asynccontextmanager
async def driver_connection(engine: AsyncEngine) -> AsyncIterator[Any]:
    """A pooled connection's own asyncpg connection, for the hot paths.

    asyncpg runs each statement as a cached prepared statement, without
    SQLAlchemy's execution layer: about half the CPU of a Core `execute` for a
    one-row query. The connection comes from (and goes back to) the engine's
    pool, with its checks and limits; it is in autocommit mode unless the
    caller opens `connection.transaction()`. One left closed (a broken socket)
    or inside a transaction is discarded rather than pooled.
    """
    fairy = await engine.raw_connection()
    driver: Any = fairy.driver_connection  # asyncpg is untyped
    try:
        yield driver
    finally:
        if driver.is_closed() or driver.is_in_transaction():
            await greenlet_spawn(fairy.invalidate)
        await greenlet_spawn(fairy.close)


async def get_engine(connection: HTTPConnection) -> AsyncEngine:
    """The process's engine (for `driver_connection`), from the lifespan state."""
    return database_state(connection)["engine"]


async def get_autocommit_engine(connection: HTTPConnection) -> AsyncEngine:
    """The process's engine without transactions (`autocommit_engine`), from the lifespan state."""
    return database_state(connection)["autocommit_engine"]


async def get_session_factory(connection: HTTPConnection) -> async_sessionmaker[AsyncSession]:
    """The process's session factory, for work that outlives the request's session."""
    return database_state(connection)["session_factory"]


async def get_session(connection: HTTPConnection) -> AsyncIterator[AsyncSession]:
    """One session per request: committed when the endpoint returns, rolled back if it raises."""
    async with database_state(connection)["session_factory"]() as session:
        try:
            yield session
            await session.commit()
        except BaseException:
            await session.rollback()
            raise


# scope="function": commit before the response is sent, so a failed commit is a 500
# rather than a success answer for data that was never stored.
DbSession = Annotated[AsyncSession, Depends(get_session, scope="function")]
DbEngine = Annotated[AsyncEngine, Depends(get_engine)]
AutocommitEngine = Annotated[AsyncEngine, Depends(get_autocommit_engine)]
SessionFactory = Annotated[async_sessionmaker[AsyncSession], Depends(get_session_factory)]

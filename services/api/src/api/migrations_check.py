"""`python -m api.migrations_check`: fail on several Alembic heads or on model drift.

Run by `make lint` against an empty scratch database: upgrade to head, then
`alembic check` compares the models with what the migrations built.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from alembic.util.exc import CommandError
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from api.settings import ApiSettings

ALEMBIC_INI = Path(__file__).resolve().parents[2] / "alembic.ini"


def alembic_config(database_url: str) -> Config:
    """An Alembic config for `database_url` that leaves the process's logging alone."""
    config = Config(str(ALEMBIC_INI))
    config.attributes["database_url"] = database_url
    config.attributes["skip_logging_config"] = True
    return config


async def _admin(url: str, statement: str) -> None:
    engine = create_async_engine(url, isolation_level="AUTOCOMMIT")
    try:
        async with engine.connect() as connection:
            await connection.execute(text(statement))
    finally:
        await engine.dispose()


@contextlib.contextmanager
def scratch_database(server_url: str, *, prefix: str) -> Iterator[str]:
    """Create `<prefix>_<random>` on the server, yield its URL, drop it (even if in use)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(_admin(server_url, f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(server_url).set(database=name).render_as_string(hide_password=False)
    finally:
        asyncio.run(_admin(server_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


def main() -> int:
    """Check heads and drift; print what is wrong and return non-zero."""
    base_url = ApiSettings().database_url
    heads = ScriptDirectory.from_config(alembic_config(base_url)).get_heads()
    if len(heads) != 1:
        print(f"alembic: expected one head, found {len(heads)}: {heads}", file=sys.stderr)
        return 1
    try:
        with scratch_database(base_url, prefix="migration_check") as scratch_url:
            config = alembic_config(scratch_url)
            command.upgrade(config, "head")
            command.check(config)
    except CommandError as exc:
        print(f"alembic check: {exc}", file=sys.stderr)
        return 1
    print("alembic: one head, models match the migrations")
    return 0


if __name__ == "__main__":
    sys.exit(main())

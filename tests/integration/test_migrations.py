"""Every revision's downgrade undoes its upgrade: from head to base and back, on a fresh database.

After the round trip `alembic check` still finds the models and the schema alike,
so nothing a downgrade left behind (or failed to restore) goes unnoticed.
"""

from __future__ import annotations

from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, make_url, text

from api.migrations_check import alembic_config, scratch_database
from devharness.services import ServiceUrls

# What the public schema holds besides Alembic's own bookkeeping.
_LEFT = """
SELECT (SELECT count(*) FROM pg_tables
         WHERE schemaname = 'public' AND tablename <> 'alembic_version'),
       (SELECT count(*) FROM pg_indexes
         WHERE schemaname = 'public' AND tablename <> 'alembic_version'),
       (SELECT count(*) FROM pg_proc WHERE pronamespace = 'public'::regnamespace)
"""


def _objects_left(url: str) -> tuple[int, ...]:
    engine = create_engine(make_url(url).set(drivername="postgresql+psycopg"))
    try:
        with engine.connect() as connection:
            return tuple(connection.execute(text(_LEFT)).one())
    finally:
        engine.dispose()


def test_each_revision_downgrades_and_upgrades_again(services: ServiceUrls) -> None:
    with scratch_database(services.postgres, prefix="test_migrations") as url:
        config = alembic_config(url)
        revisions = list(ScriptDirectory.from_config(config).walk_revisions("base", "heads"))
        command.upgrade(config, "head")
        # One revision at a time, newest first.
        for _ in revisions:
            command.downgrade(config, "-1")
        assert _objects_left(url) == (0, 0, 0), "tables, indexes, functions left"
        command.upgrade(config, "head")
        command.check(config)

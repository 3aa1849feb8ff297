"""A database of this test run's own, migrated with Alembic and dropped afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from alembic import command

from api.migrations_check import alembic_config, scratch_database
from common.settings import normalize_database_url


@contextlib.contextmanager
def migrated_database(server_url: str) -> Iterator[str]:
    """Create `test_<random>` on the server, `alembic upgrade head`, yield its URL, drop it."""
    with scratch_database(normalize_database_url(server_url), prefix="test") as url:
        command.upgrade(alembic_config(url), "head")
        yield url

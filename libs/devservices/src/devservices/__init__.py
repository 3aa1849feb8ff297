"""Development only: real PostgreSQL and Redis servers run from PyPI wheels.

`make dev` and the test fixtures use these when `DATABASE_URL` / `REDIS_URL`
(`TEST_DATABASE_URL` / `TEST_REDIS_URL` for tests) are not set, so a machine
with nothing but Python runs the whole stack. Production images never
install this package.
"""

from devservices._ports import free_port, free_ports
from devservices._postgres import EmbeddedPostgres
from devservices._redis import EmbeddedRedis

__all__ = ["EmbeddedPostgres", "EmbeddedRedis", "free_port", "free_ports"]

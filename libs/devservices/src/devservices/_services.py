from __future__ import annotations

import secrets
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path

from devservices._postgres import EmbeddedPostgres
from devservices._redis import EmbeddedRedis


def _dev_secret(run_dir: Path) -> str:
    path = run_dir / "jwt_secret"
    if not path.exists():
        run_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
    return path.read_text().strip()


class EmbeddedServices:
    """An embedded PostgreSQL and Redis for whichever of `DATABASE_URL` and `REDIS_URL` is unset.

    `start()` returns the environment with their URLs (and a dev `JWT_SECRET`
    outside production); `stop()` stops what `start()` started, Redis first.
    Data lives under `run_dir` between runs; ports come from
    `DEV_POSTGRES_PORT` and `DEV_REDIS_PORT` (55432 and 56379 by default).
    """

    def __init__(
        self, run_dir: Path, env: Mapping[str, str], *, say: Callable[[str], None]
    ) -> None:
        self.run_dir = run_dir
        self.env = dict(env)
        self._say = say
        self._started: list[tuple[str, EmbeddedPostgres | EmbeddedRedis]] = []

    def start(self) -> dict[str, str]:
        """Start what is missing; the environment to run the processes with."""
        env = self.env
        if not env.get("DATABASE_URL"):
            port = int(env.get("DEV_POSTGRES_PORT", "55432"))
            postgres = EmbeddedPostgres(self.run_dir / "postgres", port=port)
            postgres.start()
            if postgres.started_here:  # else another run's server: it stays up
                self._started.append(("PostgreSQL", postgres))
            postgres.create_database("app")
            env["DATABASE_URL"] = postgres.url("app")
            self._say(f"embedded PostgreSQL at {env['DATABASE_URL']}")
        if not env.get("REDIS_URL"):
            redis = EmbeddedRedis(
                self.run_dir / "redis", port=int(env.get("DEV_REDIS_PORT", "56379"))
            )
            env["REDIS_URL"] = redis.start()
            if redis.started_here:
                self._started.append(("Redis", redis))
            self._say(f"embedded Redis at {env['REDIS_URL']}")
        if not env.get("JWT_SECRET") and env.get("ENVIRONMENT", "development") != "production":
            env["JWT_SECRET"] = _dev_secret(self.run_dir)
        return env

    def stop(self) -> bool:
        """Stop the servers `start()` started, the last started first; False if one failed."""
        stopped = True
        while self._started:
            name, service = self._started.pop()
            try:
                service.stop()
            except (OSError, subprocess.SubprocessError) as exc:
                said = getattr(exc, "stderr", None) or exc
                self._say(f"embedded {name} did not stop cleanly: {str(said).strip()[:300]}")
                stopped = False
            else:
                self._say(f"embedded {name} stopped")
        return stopped

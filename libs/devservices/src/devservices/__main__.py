"""`python -m devservices run -- COMMAND...`: run COMMAND with Postgres and Redis.

For each of `DATABASE_URL` and `REDIS_URL` that is unset, start an embedded
server under `.run/` (data kept between runs) and export its URL; a dev
`JWT_SECRET` is generated once into `.run/`. The servers stop when COMMAND
exits. Variables that are set are used as they are.
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import subprocess
import sys
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


def run(command: list[str], *, run_dir: Path) -> int:
    """Run `command` with the services it needs; return its exit code."""
    env = dict(os.environ)
    started: list[EmbeddedPostgres | EmbeddedRedis] = []
    try:
        if not env.get("DATABASE_URL"):
            postgres = EmbeddedPostgres(
                run_dir / "postgres", port=int(env.get("DEV_POSTGRES_PORT", "55432"))
            )
            postgres.start()
            started.append(postgres)
            postgres.create_database("app")
            env["DATABASE_URL"] = postgres.url("app")
            print(f"devservices: embedded PostgreSQL at {env['DATABASE_URL']}", file=sys.stderr)
        if not env.get("REDIS_URL"):
            redis = EmbeddedRedis(run_dir / "redis", port=int(env.get("DEV_REDIS_PORT", "56379")))
            env["REDIS_URL"] = redis.start()
            started.append(redis)
            print(f"devservices: embedded Redis at {env['REDIS_URL']}", file=sys.stderr)
        if not env.get("JWT_SECRET") and env.get("ENVIRONMENT", "development") != "production":
            env["JWT_SECRET"] = _dev_secret(run_dir)
        child = subprocess.Popen(command, env=env)
        # Ctrl-C reaches the child through the terminal's process group; forward
        # SIGTERM ourselves so `kill <pid>` also stops the whole tree.
        signal.signal(signal.SIGTERM, lambda *_: child.terminate())
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        return child.wait()
    finally:
        for service in reversed(started):
            service.stop()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m devservices`."""
    parser = argparse.ArgumentParser(prog="devservices", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser("run", help="run a command with Postgres and Redis")
    run_parser.add_argument(
        "--run-dir", type=Path, default=Path(os.environ.get("DEV_RUN_DIR", ".run"))
    )
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("run needs a command after --")
    return run(command, run_dir=args.run_dir)


if __name__ == "__main__":
    sys.exit(main())

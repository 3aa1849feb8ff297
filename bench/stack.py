"""The processes a benchmark run starts: render.yaml's services, as a deploy starts them.

Every service runs its Blueprint `startCommand`, from the repository root, with
its env vars resolved as `make rehearse` resolves them (scripts/blueprint.py):
`fromDatabase` is this run's fresh database, `fromService` this run's Redis,
`generateValue` a random secret, `sync: false` the rehearsal's value (so the
API answers only `Host: api.onrender.com`, and the clients send it). Log level,
access log, worker recycling, pool sizes and worker counts are the shipped
ones. The overrides, all named in the report (`Stack.overrides`):

- the rate limits and the per-user socket cap are lifted: every request comes
  from 127.0.0.1 and from a few users. The per-user active-job limit is as
  shipped: the intake spreads its jobs over enough users to stay under it;
- on a Redis shared with others (`REDIS_URL` set), a key prefix of this run's own;
- whatever a `.env` in the repository root sets that the Blueprint does not
  (the services read it, as they would in a checkout).

Postgres and Redis are the ones `DATABASE_URL` / `REDIS_URL` name, else
embedded servers started as the tests start theirs. Every process runs in a
process group of its own (devharness.processes) and is stopped by
signalling that group, also when the run fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import httpx
from celery import Celery
from dotenv import dotenv_values
from redis.asyncio import Redis

from common.auth import issue_access_token
from common.broker import create_celery
from common.contracts.tasks import JOBS_QUEUE
from common.settings import CommonSettings
from devharness.database import migrated_database
from devharness.polling import eventually
from devharness.processes import ManagedProcess, start_process
from devharness.ratelimits import GENEROUS_RATE_LIMIT_ENV
from devharness.services import ROOT, ServiceUrls, provide_services, services_named_by
from devservices import free_port
from scripts import blueprint

BIN = ROOT / ".venv" / "bin"
PYTHON = BIN / "python"
STARTUP_TIMEOUT = 60.0
PASSWORD = "correct horse battery staple"  # noqa: S105 (the bench users' password)
# Limits no benchmark reaches: every request comes from 127.0.0.1. The active-job
# and running caps are not lifted: the intake and the end-to-end rows spread
# their jobs over many users, as a service's traffic is, and run under the caps
# as shipped.
LIFTED_LIMITS = {
    **dict.fromkeys(GENEROUS_RATE_LIMIT_ENV, "100000000/minute"),
    # The fan-out and memory scenarios open hundreds of sockets per user.
    "WS_MAX_CONNECTIONS_PER_USER": "100000",
}
# What the worker logs (at INFO, as shipped) once it consumes.
WORKER_READY = " ready."


@contextlib.contextmanager
def services() -> Iterator[ServiceUrls]:
    """Postgres and Redis: `DATABASE_URL`/`REDIS_URL` when set, else embedded, as the tests do."""
    with services_named_by("DATABASE_URL", "REDIS_URL", otherwise=provide_services) as urls:
        yield urls


def _render_style(database_url: str) -> str:
    """A database URL as Render's `connectionString` gives it (no SQLAlchemy driver)."""
    scheme, _, rest = database_url.partition("://")
    return f"{scheme.split('+')[0]}://{rest}"


@dataclass(frozen=True)
class Web:
    """A started web service: where the bench reaches it, and the Host it must send."""

    url: str
    host: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Host": self.host}


@dataclass
class Stack:
    """This run's services, the Blueprint they come from, and the processes started so far."""

    database_url: str
    redis_url: str
    source: str
    run_dir: Path
    # A key prefix only when the Redis is shared with others (see the module docstring).
    prefix: str = ""
    spec: dict[str, Any] = field(default_factory=blueprint.load)
    generated: dict[str, str] = field(default_factory=dict)
    processes: list[ManagedProcess] = field(default_factory=list)
    # By process name: a command prefix and environment start() adds (bench/memory.py
    # runs a service inside a cgroup holding it to its Render plan's memory).
    confinement: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    def resolved(self, name: str) -> dict[str, str]:
        """The env vars render.yaml gives service `name`, resolved as `make rehearse` does."""
        backing = blueprint.Backing(_render_style(self.database_url), self.redis_url)
        return blueprint.resolve_env(
            blueprint.service(self.spec, name),
            blueprint=self.spec,
            backing=backing,
            peers={},
            generated=self.generated,
        )

    @property
    def overrides(self) -> dict[str, str]:
        """Every env var that differs from what render.yaml gives the services, with why."""
        named = {key: f"{value} (limits lifted)" for key, value in LIFTED_LIMITS.items()}
        if "embedded" in self.source:
            # Not a setting of ours, but it changes what a commit costs: say so.
            named["(Postgres)"] = (
                "the embedded test server, fsync=off and synchronous_commit=off: a commit "
                "costs no disk flush here (set DATABASE_URL for a durable server)"
            )
        if self.prefix:
            named["REDIS_KEY_PREFIX"] = f"{self.prefix} (a Redis shared with others)"
        dotenv = ROOT / ".env"
        if dotenv.exists():
            for key in dotenv_values(dotenv):
                if key.upper() not in self.resolved("api"):
                    named.setdefault(key.upper(), f"from {dotenv} (read by the services)")
        return named

    @property
    def jwt_env(self) -> dict[str, str]:
        """What a process needs to verify (or issue) this run's tokens."""
        env = self.resolved("api")
        return {key: env[key] for key in ("JWT_SECRET", "JWT_ISSUER", "JWT_AUDIENCE")}

    def tokens_for(self, subjects: Iterable[uuid.UUID]) -> list[str]:
        """An access token of this run's for each subject (in order), as the API signs them."""
        settings = CommonSettings(
            _env_file=None,
            **{key.lower(): value for key, value in self.jwt_env.items()},  # type: ignore[arg-type]
        )
        return [issue_access_token(settings, subject=subject) for subject in subjects]

    @contextlib.asynccontextmanager
    async def minted_users(self, count: int) -> AsyncIterator[list[uuid.UUID]]:
        """`count` users written straight into the run's database, deleted (with their jobs) after.

        For scenarios that need many owners of jobs but never log them in: their
        tokens come from `tokens_for`, and their password hash is not a valid one.
        Deleting them leaves no job behind for the worker's relay to send later.
        """
        ids = [uuid.uuid4() for _ in range(count)]
        connection = await asyncpg.connect(_render_style(self.database_url))
        try:
            await connection.execute(
                "INSERT INTO users (id, email, password_hash) "
                "SELECT id, 'bench-' || id || '@example.com', 'minted' FROM unnest($1::uuid[]) id",
                ids,
            )
            yield ids
        finally:
            try:
                # Requests the load generator gave up on may still be in an intake
                # round, holding these users' key-share locks. The delete waits for
                # the database to be quiet, so Postgres need not break a deadlock by
                # failing one of those requests (a 500 in the API's log) or this
                # statement; should it still fail this one, it is tried again.
                await _quiet(connection)
                for attempt in range(5):
                    try:
                        await connection.execute("DELETE FROM users WHERE id = ANY($1)", ids)
                        break
                    except asyncpg.exceptions.DeadlockDetectedError:
                        if attempt == 4:
                            raise
                        await asyncio.sleep(0.5)
            finally:
                await connection.close()

    def service_env(self, name: str, *, port: int | None = None) -> dict[str, str]:
        """The whole environment of service `name`'s process (the Blueprint's, plus overrides)."""
        env = blueprint.base_env(BIN)
        env.update(self.resolved(name))
        env.update(blueprint.render_env(blueprint.service(self.spec, name), port=port))
        env.update(LIFTED_LIMITS)
        if self.prefix:
            env["REDIS_KEY_PREFIX"] = self.prefix
        return env

    def start(
        self, name: str, command: list[str], *, service: str = "api", port: int | None = None
    ) -> ManagedProcess:
        """Start `command` with service `service`'s environment, from the repository root."""
        log_path = self.run_dir / f"{name}-{len(self.processes)}.log"
        env = self.service_env(service, port=port)
        prefix, confined_env = self.confinement.get(name, ([], {}))
        env.update(confined_env)
        process = start_process(name, [*prefix, *command], env=env, cwd=ROOT, log_path=log_path)
        self.processes.append(process)
        return process

    def command(self, service: str, *, app: str | None = None) -> list[str]:
        """Service `service`'s startCommand; `app` replaces its ASGI app (for a baseline)."""
        words = shlex.split(blueprint.service(self.spec, service)["startCommand"])
        if app is not None:
            words = [app if word.endswith(":app") else word for word in words]
        return words

    async def start_web(self, service: str, *, app: str | None = None, name: str = "") -> Web:
        """Service `service` (or `app` under its command and env) on a free port, once ready."""
        spec = blueprint.service(self.spec, service)
        port = free_port()
        process = self.start(name or service, self.command(service, app=app), service=service,
                             port=port)  # fmt: skip
        host = self.resolved(service)["ALLOWED_HOSTS"].split(",")[0]
        web = Web(f"http://127.0.0.1:{port}", host)
        await wait_ready(process, f"{web.url}{spec['healthCheckPath']}", web.headers)
        return web

    async def start_worker(self) -> ManagedProcess:
        """The Celery worker (its startCommand); returns once it consumes."""
        process = self.start("worker", self.command("worker"), service="worker")
        await process.wait_for_log(WORKER_READY, within=STARTUP_TIMEOUT)
        return process

    def celery(self) -> Celery:
        """A Celery app on this run's broker and key prefix, configured as the API's."""
        settings = CommonSettings(
            _env_file=None, redis_url=self.redis_url, redis_key_prefix=self.prefix
        )
        return create_celery(settings, main="bench")

    async def stop(self, process: ManagedProcess) -> None:
        """Stop one process group (SIGTERM, then SIGKILL after a grace period)."""
        await process.stop()
        self.processes.remove(process)

    async def stop_named(self, name: str) -> None:
        """Stop every process started under `name`."""
        await asyncio.gather(
            *(self.stop(process) for process in self.processes if process.name == name)
        )

    async def stop_all(self) -> None:
        await asyncio.gather(*(process.stop() for process in self.processes))
        self.processes.clear()

    def purge_jobs_queue(self) -> int:
        """Drop every message waiting in the jobs queue (blocking); how many there were."""
        celery = self.celery()
        try:
            with celery.connection_for_write() as connection:
                channel = connection.default_channel  # kombu types it as the abstract StdChannel
                return int(channel.queue_purge(JOBS_QUEUE) or 0)  # type: ignore[attr-defined]
        finally:
            celery.close()

    async def delete_keys(self) -> None:
        """Delete this run's Redis keys (a shared Redis keeps nothing of ours)."""
        if not self.prefix:
            return
        redis = Redis.from_url(self.redis_url, socket_timeout=10)
        try:
            batch = [key async for key in redis.scan_iter(match=f"{self.prefix}*", count=1000)]
            for start in range(0, len(batch), 1000):
                await redis.delete(*batch[start : start + 1000])
        finally:
            await redis.aclose()


async def wait_ready(process: ManagedProcess, url: str, headers: dict[str, str]) -> None:
    """Return once `url` answers 200; raise with the log if the process exits or hangs."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0, headers=headers) as client:
        while time.monotonic() < deadline:
            if not process.is_running():
                raise RuntimeError(f"{process.name} exited while starting:\n{process.log()}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(url)).status_code == 200:
                    return
            await asyncio.sleep(0.1)  # poll interval: nothing signals readiness
    raise TimeoutError(f"{process.name} not ready within {STARTUP_TIMEOUT:g}s:\n{process.log()}")


@contextlib.asynccontextmanager
async def open_stack(urls: ServiceUrls, database_url: str, run_dir: Path) -> AsyncIterator[Stack]:
    """A stack on `database_url`; every process stopped on exit."""
    shared_redis = urls.source.endswith("docker") or any(
        os.environ.get(name) for name in ("REDIS_URL", "TEST_REDIS_URL")
    )
    stack = Stack(
        database_url=database_url,
        redis_url=urls.redis,
        source=urls.source,
        run_dir=run_dir,
        prefix=f"bench-{uuid.uuid4().hex[:8]}:" if shared_redis else "",
    )
    try:
        yield stack
    finally:
        # Shielded so Ctrl-C during the run still stops every process group.
        await asyncio.shield(stack.stop_all())
        with contextlib.suppress(Exception):
            await stack.delete_keys()


@contextlib.contextmanager
def database() -> Iterator[tuple[ServiceUrls, str]]:
    """The services and a fresh database migrated to head (dropped on exit); outside any loop."""
    with services() as urls, migrated_database(urls.postgres) as database_url:
        yield urls, database_url


_BUSY_BACKENDS = """
SELECT count(*) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND backend_type = 'client backend' AND state IN ('active', 'idle in transaction')
"""


async def _quiet(connection: Any, *, within: float = 10.0) -> None:
    """Until no other session of the database runs a statement or holds a transaction open,
    for at most `within` seconds (a session busy for longer is left to the delete's retries)."""

    async def quiet() -> bool:
        return not await connection.fetchval(_BUSY_BACKENDS)

    with contextlib.suppress(TimeoutError):
        await eventually(quiet, within=within, interval=0.05)

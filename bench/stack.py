"""The processes a benchmark run starts, on its own database and Redis key prefix.

Postgres and Redis are the ones `DATABASE_URL` / `REDIS_URL` name, else
embedded servers started as the tests start theirs. Every process runs in a
process group of its own (tests.support.processes) and is stopped by
signalling that group, also when the run fails or is interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from celery import Celery
from redis.asyncio import Redis

from common.broker import create_celery
from common.contracts.tasks import JOBS_QUEUE
from common.settings import CommonSettings
from devservices import free_port
from tests.support.database import migrated_database
from tests.support.processes import ManagedProcess, start_process
from tests.support.ratelimits import GENEROUS_RATE_LIMIT_ENV
from tests.support.services import ROOT, ServiceUrls, provide_services

BIN = ROOT / ".venv" / "bin"
PYTHON = BIN / "python"
API_CONFIG = ROOT / "services" / "api" / "gunicorn.conf.py"
REALTIME_CONFIG = ROOT / "services" / "realtime" / "gunicorn.conf.py"
STARTUP_TIMEOUT = 60.0
PASSWORD = "correct horse battery staple"  # noqa: S105 (the bench users' password)
# Limits no benchmark reaches: every request comes from 127.0.0.1 and a few users.
BENCH_LIMITS_ENV = dict.fromkeys(GENEROUS_RATE_LIMIT_ENV, "100000000/minute")
# Settings a developer's shell may hold that would change what the processes do.
_SCRUBBED = (
    "WEB_CONCURRENCY",
    "SHUTDOWN_DRAIN_SECONDS",
    "GUNICORN_CMD_ARGS",
    "PORT",
    "PYTHONPATH",
)


@contextlib.contextmanager
def services() -> Iterator[ServiceUrls]:
    """Postgres and Redis: `DATABASE_URL`/`REDIS_URL` when set, else embedded, as the tests do."""
    database_url = os.environ.get("DATABASE_URL")
    redis_url = os.environ.get("REDIS_URL")
    if database_url and redis_url:
        yield ServiceUrls(postgres=database_url, redis=redis_url, source="environment")
        return
    with provide_services() as urls:
        yield ServiceUrls(
            postgres=database_url or urls.postgres,
            redis=redis_url or urls.redis,
            source=urls.source,
        )


@dataclass
class Stack:
    """This run's services, settings and the processes started so far."""

    database_url: str
    redis_url: str
    source: str
    prefix: str
    jwt_secret: str
    run_dir: Path
    processes: list[ManagedProcess] = field(default_factory=list)
    # By process name: a command prefix and environment start() adds (bench/memory.py
    # runs a service inside a cgroup holding it to its Render plan's memory).
    confinement: dict[str, tuple[list[str], dict[str, str]]] = field(default_factory=dict)

    @property
    def jwt_env(self) -> dict[str, str]:
        """What a process needs to verify (or issue) this run's tokens."""
        return {"JWT_SECRET": self.jwt_secret}

    def env(self, **overrides: str) -> dict[str, str]:
        """The environment of a service process: production mode, quiet logs, this run's data."""
        env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
        env.update(
            ENVIRONMENT="production",
            DATABASE_URL=self.database_url,
            REDIS_URL=self.redis_url,
            REDIS_KEY_PREFIX=self.prefix,
            JWT_SECRET=self.jwt_secret,
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
            # The bench package (baselines) is importable from any working directory.
            PYTHONPATH=str(ROOT),
            JOBS_MAX_ACTIVE_PER_USER="1000000000",
            # Recycling a worker every 1,000 requests would measure restarts, not the stack.
            GUNICORN_MAX_REQUESTS="0",
            **BENCH_LIMITS_ENV,
        )
        env.update(overrides)
        return env

    def start(self, name: str, command: list[str], **overrides: str) -> ManagedProcess:
        """Start `command` in its own process group with `env(**overrides)`; log to run_dir."""
        log_path = self.run_dir / f"{name}-{len(self.processes)}.log"
        prefix, confined_env = self.confinement.get(name, ([], {}))
        # cwd outside the repository: no developer's .env is read.
        process = start_process(
            name,
            [*prefix, *command],
            env=self.env(**{**overrides, **confined_env}),
            cwd=self.run_dir,
            log_path=log_path,
        )
        self.processes.append(process)
        return process

    async def start_gunicorn(
        self, name: str, app: str, *, config: Path = API_CONFIG, workers: int = 2
    ) -> str:
        """`gunicorn -c <config> <app>` on a free loopback port; its base URL once ready."""
        port = free_port()
        command = [str(BIN / "gunicorn"), "-c", str(config), "--bind", f"127.0.0.1:{port}", app]
        process = self.start(name, command, PORT=str(port), WEB_CONCURRENCY=str(workers))
        base_url = f"http://127.0.0.1:{port}"
        await wait_ready(process, f"{base_url}/health/ready")
        return base_url

    async def start_worker(self, *, concurrency: int = 2) -> ManagedProcess:
        """`celery -A worker.app worker` (prefork); returns once it consumes."""
        command = [
            str(BIN / "celery"), "-A", "worker.app", "worker", "--pool", "prefork",
            "--concurrency", str(concurrency), "--without-gossip", "--without-mingle",
            "--loglevel", "INFO", "--hostname", f"bench-{uuid.uuid4().hex[:8]}@127.0.0.1",
        ]  # fmt: skip
        process = self.start(
            "worker", command, WORKER_METRICS_HOST="127.0.0.1", WORKER_METRICS_PORT=str(free_port())
        )
        await self._wait_consuming(process)
        return process

    async def _wait_consuming(self, process: ManagedProcess) -> None:
        # At LOG_LEVEL=WARNING the worker logs no " ready."; a control ping answers once it is.
        celery = self.celery()
        deadline = time.monotonic() + STARTUP_TIMEOUT
        try:
            while not await asyncio.to_thread(celery.control.ping, timeout=0.5):
                if not process.is_running() or time.monotonic() > deadline:
                    raise RuntimeError(f"worker not consuming:\n{process.log()}")
        finally:
            celery.close()

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
        for process in [process for process in self.processes if process.name == name]:
            await self.stop(process)

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
        redis = Redis.from_url(self.redis_url, socket_timeout=10)
        try:
            batch = [key async for key in redis.scan_iter(match=f"{self.prefix}*", count=1000)]
            for start in range(0, len(batch), 1000):
                await redis.delete(*batch[start : start + 1000])
        finally:
            await redis.aclose()


async def wait_ready(process: ManagedProcess, url: str) -> None:
    """Return once `url` answers 200; raise with the log if the process exits or hangs."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(timeout=2.0) as client:
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
    """A stack on `database_url` with a fresh key prefix; every process stopped on exit."""
    stack = Stack(
        database_url=database_url,
        redis_url=urls.redis,
        source=urls.source,
        prefix=f"bench-{uuid.uuid4().hex[:8]}:",
        jwt_secret=secrets.token_hex(32),
        run_dir=run_dir,
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

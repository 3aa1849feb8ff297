"""Real `celery worker` and `worker.scheduler` processes around the API (run in process).

Each test gets a stack of its own: a Redis key prefix nobody else uses (Celery's
`global_keyprefix` follows it, so queues are private too), the API built with
that prefix, and factories for workers and the scheduler with test-sized
leases and intervals. Every process runs in its own process group and is
stopped by signalling that group only.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgi_lifespan import LifespanManager
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from api.main import create_app
from api.settings import ApiSettings
from devharness.processes import ManagedProcess, start_process
from devharness.ratelimits import GENEROUS_RATE_LIMITS
from devharness.services import ROOT
from devservices import EmbeddedRedis, free_port
from tests.fixtures.jobs import EventTap, JobsUser, new_prefix
from worker.settings import WorkerSettings

CELERY = ROOT / ".venv" / "bin" / "celery"
PYTHON = Path(sys.executable)
PASSWORD = "correct horse battery staple"
STARTUP_TIMEOUT = 30.0
# Test-sized reliability settings: a lease lapses 3 s after its worker dies.
TEST_SIZED_ENV = {
    "JOB_LEASE_SECONDS": "3",
    "JOB_HEARTBEAT_SECONDS": "0.5",
    "JOB_MAX_ATTEMPTS": "5",
    "JOB_RETRY_BACKOFF_SECONDS": "0.2",
    "JOB_RETRY_BACKOFF_MAX_SECONDS": "1",
    "SCHEDULER_INTERVAL_SECONDS": "0.5",
    "RELAY_GRACE_SECONDS": "0",
}
_PROCESSES = pytest.StashKey[list[ManagedProcess]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach every worker and scheduler log to a failed test's report."""
    report = yield
    if report.failed:
        for process in item.stash.get(_PROCESSES, []):
            report.sections.append((f"{process.name} log (pid {process.pid})", process.log()))
    return report


@pytest.fixture(scope="session")
def process_env(database_url: str, jwt_secret: str) -> dict[str, str]:
    """The environment of worker and scheduler processes, minus any setting the shell held."""
    settings_names = {name.upper() for name in WorkerSettings.model_fields}
    env = {key: value for key, value in os.environ.items() if key.upper() not in settings_names}
    env.update(
        ENVIRONMENT="test",
        DATABASE_URL=database_url,
        JWT_SECRET=jwt_secret,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
        # Several workers run at once; a test that scrapes one gives it a free port.
        WORKER_METRICS_PORT="0",
        **TEST_SIZED_ENV,
    )
    return env


@pytest.fixture(scope="session")
async def db_engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on this run's database, to read what the API does not show (attempt, sent_at)."""
    engine = create_async_engine(database_url)
    yield engine
    await engine.dispose()


JobRow = dict[str, Any]


@pytest.fixture
def job_row(db_engine: AsyncEngine) -> Callable[[str], Awaitable[JobRow]]:
    """Read a job's row straight from Postgres."""

    async def read(job_id: str) -> JobRow:
        async with db_engine.connect() as connection:
            row = await connection.execute(
                text("SELECT * FROM jobs WHERE id = :id"), {"id": uuid.UUID(job_id)}
            )
            return dict(row.mappings().one())

    return read


@dataclass
class JobsStack:
    """One test's API client, Redis key prefix, workers and scheduler."""

    redis_url: str
    prefix: str
    env: dict[str, str]
    log_dir: Path
    client: httpx.AsyncClient
    redis: Redis
    processes: list[ManagedProcess] = field(default_factory=list)

    def _start(self, name: str, command: list[str], **overrides: str) -> ManagedProcess:
        log_path = self.log_dir / f"{name}-{len(self.processes)}.log"
        env = {**self.env, **overrides}
        # cwd outside the repository: no developer's .env is read.
        process = start_process(name, command, env=env, cwd=self.log_dir, log_path=log_path)
        self.processes.append(process)
        return process

    async def start_worker(self, **overrides: str) -> ManagedProcess:
        """`celery -A worker.app worker` with one prefork child; returns once it is ready."""
        hostname = f"jobs-{uuid.uuid4().hex[:8]}@127.0.0.1"
        command = [
            str(CELERY), "-A", "worker.app", "worker", "--pool", "prefork",
            "--concurrency", "1", "--without-gossip", "--without-mingle",
            "--loglevel", "INFO", "--hostname", hostname,
        ]  # fmt: skip
        process = self._start("worker", command, **overrides)
        await process.wait_for_log(" ready.", within=STARTUP_TIMEOUT)
        return process

    async def start_scheduler(self, **overrides: str) -> ManagedProcess:
        """`python -m worker.scheduler` (the loop); returns once it has started."""
        process = self._start("scheduler", [str(PYTHON), "-m", "worker.scheduler"], **overrides)
        await process.wait_for_log("scheduler started", within=STARTUP_TIMEOUT)
        return process

    async def run_scheduler_once(self) -> None:
        """`python -m worker.scheduler --once`: one full round, which must succeed."""
        process = self._start("scheduler-once", [str(PYTHON), "-m", "worker.scheduler", "--once"])
        code = await process.wait_exit(STARTUP_TIMEOUT)
        assert code == 0, process.log()

    async def new_user(self) -> JobsUser:
        """Register a fresh user through the API and log in."""
        email = f"jobs-{uuid.uuid4().hex[:10]}@example.com"
        registered = await self.client.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        token = await self.client.post(
            "/v1/auth/token", data={"username": email, "password": PASSWORD}
        )
        assert token.status_code == 200, token.text
        return JobsUser(self.client, registered.json()["id"], token.json()["access_token"])

    async def stream(self, user: JobsUser, job_id: str) -> list[dict[str, Any]]:
        """The events about `job_id` in `user`'s stream, oldest first."""
        return await self.tap(user).stream(job_id)

    def tap(self, user: JobsUser) -> EventTap:
        """Collect `user`'s events; enter it before posting the jobs to watch."""
        return EventTap(self.redis, self.prefix, user.id)


StackFactory = Callable[..., Awaitable[JobsStack]]


@pytest.fixture
async def stack_factory(
    request: pytest.FixtureRequest,
    database_url: str,
    redis_url: str,
    redis_key_prefix: str,
    jwt_secret: str,
    process_env: dict[str, str],
    tmp_path: Path,
) -> AsyncIterator[StackFactory]:
    """Build a `JobsStack`: `make(redis_url=..., **api_settings)`; all stopped after the test."""
    processes: list[ManagedProcess] = []
    request.node.stash[_PROCESSES] = processes
    managers: list[LifespanManager] = []
    clients: list[httpx.AsyncClient] = []
    redises: list[Redis] = []

    async def make(*, redis_url: str = redis_url, **api_settings: Any) -> JobsStack:
        prefix = new_prefix(redis_key_prefix)
        settings = ApiSettings(
            _env_file=None,
            environment="test",
            database_url=database_url,
            redis_url=redis_url,
            redis_key_prefix=prefix,
            jwt_secret=jwt_secret,
            log_level="WARNING",
            **{**GENEROUS_RATE_LIMITS, **api_settings},
        )
        manager = LifespanManager(create_app(settings))
        await manager.__aenter__()
        managers.append(manager)
        transport = httpx.ASGITransport(app=manager.app, client=("127.0.0.1", 5555))
        client = httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=30)
        clients.append(client)
        redis = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
        redises.append(redis)
        env = {**process_env, "REDIS_URL": redis_url, "REDIS_KEY_PREFIX": prefix}
        return JobsStack(redis_url, prefix, env, tmp_path, client, redis, processes)

    yield make
    await asyncio.gather(*(process.stop() for process in processes))
    for client in clients:
        await client.aclose()
    for redis in redises:
        await redis.aclose()
    for manager in reversed(managers):
        await manager.__aexit__(None, None, None)


@pytest.fixture
async def private_redis(tmp_path: Path) -> AsyncIterator[EmbeddedRedis]:
    """A Redis of this test's own on a free port, which the test stops and starts."""
    server = EmbeddedRedis(tmp_path / "redis", port=free_port(), durable=False)
    server.start()
    yield server
    await asyncio.to_thread(server.stop)


@pytest.fixture
async def stack(stack_factory: StackFactory) -> JobsStack:
    """A stack on the session's Redis, with a key prefix of this test's own."""
    return await stack_factory()

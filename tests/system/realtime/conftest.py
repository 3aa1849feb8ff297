"""The realtime service under real gunicorn (two uvicorn workers), reached over loopback TCP.

`realtime_factory(**env)` starts `gunicorn -c services/realtime/gunicorn.conf.py
realtime.main:app` with a Redis key prefix of the test's own (or the one given)
and returns once `/health/ready` answers 200. The jobs stack (API in process,
Celery workers) comes from the jobs tests' fixtures, imported here.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from common import publisher
from common.auth import issue_access_token
from common.contracts import events
from common.settings import CommonSettings
from devharness.services import ROOT
from devservices import free_port
from realtime.settings import RealtimeSettings
from tests.fixtures.jobs import new_prefix
from tests.system.conftest import GUNICORN, Server, wait_ready
from tests.system.jobs.conftest import process_env, stack_factory  # noqa: F401 (fixtures)

REALTIME_CONFIG = ROOT / "services" / "realtime" / "gunicorn.conf.py"
ORIGIN = "https://app.example.com"
_SERVERS = pytest.StashKey[list[Server]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach each realtime server's log to a failed test's report."""
    report = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            report.sections.append((f"realtime log (pid {server.pid})", server.log()))
    return report


class Realtime(Server):
    """A running realtime gunicorn master, its key prefix and where its sockets are."""

    prefix: str = ""

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def socket_pids(self) -> dict[str, int]:
        """connection id → pid of the worker that opened it, from the JSON log."""
        return {
            record["connection_id"]: record["pid"]
            for record in self.log_records()
            if record.get("message") == "websocket open"
        }

    async def readiness(self) -> int | None:
        """The status of one `/health/ready` (None when nothing answers)."""
        async with httpx.AsyncClient(base_url=self.base_url, timeout=5.0) as client:
            with contextlib.suppress(httpx.TransportError):
                return (await client.get("/health/ready")).status_code
        return None


RealtimeFactory = Callable[..., Awaitable[Realtime]]


ROUTINGS = pytest.mark.parametrize("ws_routing", ["pattern", "per_user"])
"""Run a test under both fan-out routings (`WS_ROUTING`)."""


@pytest.fixture
def ws_routing() -> str:
    """The servers' `WS_ROUTING` (the default); a test marked `ROUTINGS` runs under both."""
    return str(RealtimeSettings.model_fields["ws_routing"].default.value)


@pytest.fixture
async def realtime_factory(
    request: pytest.FixtureRequest,
    ws_routing: str,
    server_env: dict[str, str],
    redis_key_prefix: str,
    tmp_path: Path,
) -> AsyncIterator[RealtimeFactory]:
    """Start realtime servers (two workers unless WEB_CONCURRENCY is given); stopped after."""
    servers: list[Server] = []
    request.node.stash[_SERVERS] = servers

    async def make(*, prefix: str | None = None, **overrides: str) -> Realtime:
        port = free_port()
        prefix = prefix or new_prefix(redis_key_prefix)
        env = {
            **server_env,
            "PORT": str(port),
            "WEB_CONCURRENCY": "2",
            "REDIS_KEY_PREFIX": prefix,
            "CORS_ORIGINS": ORIGIN,
            "PUBSUB_BACKOFF_MAX_SECONDS": "0.5",
            "WS_ROUTING": ws_routing,
            **overrides,
        }
        log_path = tmp_path / f"realtime-{port}.log"
        log_file = log_path.open("wb")
        process = await asyncio.create_subprocess_exec(
            str(GUNICORN), "-c", str(REALTIME_CONFIG), "--bind", f"127.0.0.1:{port}",
            "realtime.main:app",
            cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log_file,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        server = Realtime(f"http://127.0.0.1:{port}", port, process, log_path, log_file)
        server.prefix = prefix
        servers.append(server)
        await wait_ready(server, workers=int(env["WEB_CONCURRENCY"]), what="realtime")
        return server

    yield make
    await asyncio.gather(*(server.stop() for server in servers))


@pytest.fixture(scope="session")
def token_settings(jwt_secret: str) -> CommonSettings:
    """Settings that sign tokens the servers accept (same secret, issuer, audience)."""
    return CommonSettings(_env_file=None, environment="test", jwt_secret=jwt_secret)


TokenFor = Callable[[uuid.UUID], str]


@pytest.fixture
def token_for(token_settings: CommonSettings) -> TokenFor:
    """An access token for a user id; the realtime service needs no database row."""
    return lambda user_id: issue_access_token(token_settings, subject=user_id)


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    yield client
    await client.aclose()


async def publish(
    redis: Redis, prefix: str, user_id: uuid.UUID, count: int, **data: Any
) -> list[str]:
    """Publish `count` progress events of one made-up job of `user_id`; their ids."""
    job_id = uuid.uuid4()
    return [
        await publisher.apublish_event(
            redis,
            events.make_event(events.JOB_PROGRESS, user_id=user_id, job_id=job_id, step=n, **data),
            prefix=prefix,
        )
        for n in range(count)
    ]

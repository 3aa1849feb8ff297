"""The processes a browser test talks to: API, realtime, worker and two console origins.

Everything is a real process in its own process group, on 127.0.0.1, started
by `start_stack` and stopped by `BrowserStack.stop` (only those processes).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from api.settings import ApiSettings
from devharness.polling import eventually
from devharness.processes import ManagedProcess, start_process
from devharness.ratelimits import GENEROUS_RATE_LIMIT_ENV
from devharness.services import ROOT
from devservices import free_port
from realtime.settings import RealtimeSettings
from tests.fixtures.servers import service_env
from worker.settings import WorkerSettings

BIN = ROOT / ".venv" / "bin"
CONSOLE_SERVER = ROOT / "services" / "console" / "serve.py"
STARTUP_TIMEOUT = 30.0
# Not the default (10): the console must take the rule from the API, not know it.
PASSWORD_MIN_LENGTH = 12


def base_env(*, database_url: str, redis_url: str, jwt_secret: str, prefix: str) -> dict[str, str]:
    """This run's services and secrets, minus any setting a developer's shell holds."""
    names = {
        name.upper()
        for model in (ApiSettings, RealtimeSettings, WorkerSettings)
        for name in model.model_fields
    } | {"PORT", "WEB_CONCURRENCY", "GUNICORN_CMD_ARGS", "CONSOLE_API_URL", "CONSOLE_REALTIME_URL"}
    return service_env(
        {key: value for key, value in os.environ.items() if key.upper() not in names},
        database_url=database_url, redis_url=redis_url, jwt_secret=jwt_secret, prefix=prefix,
    )  # fmt: skip


async def wait_http(url: str, process: ManagedProcess, *, within: float = STARTUP_TIMEOUT) -> None:
    """Return once `url` answers 200; raise with the log if the process exits or time runs out."""
    async with httpx.AsyncClient(timeout=2.0) as client:

        async def answers() -> bool:
            process.check_running("it was ready")
            with contextlib.suppress(httpx.TransportError):
                return (await client.get(url)).status_code == 200
            return False

        await eventually(
            answers,
            within=within,
            interval=0.05,
            explain=lambda: f"{process.name} not ready:\n{process.log()}",
        )


@dataclass
class BrowserStack:
    """Where everything listens, and the processes behind it."""

    env: dict[str, str]
    log_dir: Path
    api_port: int
    realtime_port: int
    console_port: int
    foreign_port: int
    processes: dict[str, ManagedProcess] = field(default_factory=dict)
    api_url: str = field(init=False)
    realtime_url: str = field(init=False)
    console_url: str = field(init=False)
    foreign_url: str = field(init=False)

    def __post_init__(self) -> None:
        self.api_url = f"http://127.0.0.1:{self.api_port}"
        self.realtime_url = f"ws://127.0.0.1:{self.realtime_port}/ws"
        # The console on an origin in CORS_ORIGINS, and the same on an origin that is not.
        self.console_url = f"http://127.0.0.1:{self.console_port}"
        self.foreign_url = f"http://127.0.0.1:{self.foreign_port}"

    def _start(self, name: str, command: list[str], **overrides: str) -> ManagedProcess:
        log_path = self.log_dir / f"{name}-{uuid.uuid4().hex[:6]}.log"
        # cwd outside the repository: no developer's .env is read.
        process = start_process(
            name, command, env={**self.env, **overrides}, cwd=self.log_dir, log_path=log_path
        )
        self.processes[name] = process
        return process

    async def start_api(self) -> None:
        config = ROOT / "services" / "api" / "gunicorn.conf.py"
        command = [str(BIN / "gunicorn"), "-c", str(config), "--bind", f"127.0.0.1:{self.api_port}"]
        process = self._start("api", [*command, "api.main:app"], WEB_CONCURRENCY="2")
        await wait_http(f"{self.api_url}/health/ready", process)

    async def start_realtime(self) -> None:
        config = ROOT / "services" / "realtime" / "gunicorn.conf.py"
        bind = f"127.0.0.1:{self.realtime_port}"
        command = [str(BIN / "gunicorn"), "-c", str(config), "--bind", bind, "realtime.main:app"]
        process = self._start("realtime", command, WEB_CONCURRENCY="1")
        await wait_http(f"http://{bind}/health/ready", process)

    async def stop_realtime(self) -> None:
        await self.processes["realtime"].stop()

    async def start_worker(self) -> None:
        command = [
            str(BIN / "celery"), "-A", "worker.app", "worker", "--pool", "prefork",
            "--concurrency", "2", "--without-gossip", "--without-mingle", "--loglevel", "INFO",
            "--hostname", f"browser-{uuid.uuid4().hex[:8]}@127.0.0.1",
        ]  # fmt: skip
        process = self._start("worker", command)
        await process.wait_for_log(" ready.", within=STARTUP_TIMEOUT)

    async def start_console(self, name: str, port: int) -> None:
        command = [sys.executable, str(CONSOLE_SERVER), "--host", "127.0.0.1", "--port", str(port)]
        process = self._start(
            name, command, CONSOLE_API_URL=self.api_url, CONSOLE_REALTIME_URL=self.realtime_url
        )
        await wait_http(f"http://127.0.0.1:{port}/", process)

    def logs(self) -> list[tuple[str, str]]:
        return [(f"{name} log (pid {p.pid})", p.log()) for name, p in self.processes.items()]

    async def stop(self) -> None:
        await asyncio.gather(*(process.stop() for process in self.processes.values()))


async def start_stack(env: dict[str, str], log_dir: Path) -> BrowserStack:
    """Start every process; on a failure, stop the ones already started and re-raise."""
    console_port = free_port()
    env = {
        **env,
        # Every browser request comes from 127.0.0.1; the limits are not under test here.
        **GENEROUS_RATE_LIMIT_ENV,
        "CORS_ORIGINS": f"http://127.0.0.1:{console_port}",
        "PASSWORD_MIN_LENGTH": str(PASSWORD_MIN_LENGTH),
        "PUBSUB_BACKOFF_MAX_SECONDS": "0.5",
    }
    stack = BrowserStack(env, log_dir, free_port(), free_port(), console_port, free_port())
    try:
        await asyncio.gather(
            stack.start_api(),
            stack.start_realtime(),
            stack.start_worker(),
            stack.start_console("console", stack.console_port),
            stack.start_console("foreign-console", stack.foreign_port),
        )
    except BaseException:
        await stack.stop()
        raise
    return stack

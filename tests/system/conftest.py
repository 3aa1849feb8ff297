"""The API under real gunicorn + uvicorn workers, reached over TCP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from devharness.processes import json_records
from devharness.ratelimits import GENEROUS_RATE_LIMIT_ENV
from devharness.services import ROOT
from devservices import free_port

GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN_CONFIG = ROOT / "services" / "api" / "gunicorn.conf.py"
PASSWORD = "correct horse battery staple"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
# Settings a developer's shell may hold that would change what the server under test does.
_SCRUBBED = ("WEB_CONCURRENCY", "SHUTDOWN_DRAIN_SECONDS", "GUNICORN_CMD_ARGS", "PORT")


@dataclass
class Server:
    """A running gunicorn master: where it listens, its process and its log."""

    base_url: str
    port: int
    process: asyncio.subprocess.Process
    log_path: Path
    _log_file: Any = field(repr=False)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        """Everything gunicorn and its workers wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines; other output (a traceback) is skipped."""
        return json_records(self.log())

    def started_workers(self) -> int:
        """How many workers have finished their application startup, from the log."""
        return sum(
            record.get("message") == "Application startup complete."
            for record in self.log_records()
        )

    def worker_pids(self) -> set[int]:
        """The pids of the master's live child processes (its workers)."""
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return set()
        pids = set()
        for child in children:
            with contextlib.suppress(psutil.NoSuchProcess):  # reaped meanwhile
                if child.status() != psutil.STATUS_ZOMBIE:
                    pids.add(child.pid)
        return pids

    async def wait_exit(self, seconds: float) -> int | None:
        """The master's exit code, or None if it is still running after `seconds`."""
        with contextlib.suppress(TimeoutError):
            return await asyncio.wait_for(self.process.wait(), seconds)
        return None

    async def stop(self) -> int:
        """SIGTERM the master and wait for it; SIGKILL its process group only if it hangs."""
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        code = await self.wait_exit(STOP_TIMEOUT)
        if code is None:
            # The group is the one this fixture created for gunicorn (start_new_session).
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, signal.SIGKILL)
            code = await self.process.wait()
        self._log_file.close()
        return code


ServerFactory = Callable[..., Awaitable[Server]]
_SERVERS = pytest.StashKey[list[Server]]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Attach each server's log to a failed test's report, so the failure explains itself."""
    report = yield
    if report.failed:
        for server in item.stash.get(_SERVERS, []):
            report.sections.append((f"gunicorn log (pid {server.pid})", server.log()))
    return report


@pytest.fixture(scope="session")
def server_env(
    database_url: str, redis_url: str, jwt_secret: str, redis_key_prefix: str
) -> dict[str, str]:
    """The environment of a server process: this run's services, test mode."""
    env = {key: value for key, value in os.environ.items() if key not in _SCRUBBED}
    env.update(
        ENVIRONMENT="test",
        DATABASE_URL=database_url,
        REDIS_URL=redis_url,
        JWT_SECRET=jwt_secret,
        REDIS_KEY_PREFIX=redis_key_prefix,
        LOG_LEVEL="INFO",
        PYTHONUNBUFFERED="1",
    )
    # Every test connects from 127.0.0.1; tests of the limits set their own.
    env.update(GENEROUS_RATE_LIMIT_ENV)
    return env


async def wait_ready(server: Server, *, workers: int, what: str = "gunicorn") -> None:
    """Wait for `/health/ready` and for each of the master's `workers` to finish starting.

    Readiness answers as soon as one worker serves, and gunicorn forks the next ones a
    random fraction of a second apart: a test that spreads connections needs them all.
    """
    deadline = time.monotonic() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(base_url=server.base_url, timeout=2.0) as client:
        while time.monotonic() < deadline:
            if server.process.returncode is not None:
                raise RuntimeError(
                    f"{what} exited with {server.process.returncode} while starting:\n"
                    + server.log()
                )
            if server.started_workers() >= workers:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/health/ready")).status_code == 200:
                        return
            await asyncio.sleep(0.05)  # poll interval, not a wait for an event
    raise TimeoutError(f"{what} not ready within {STARTUP_TIMEOUT:g}s:\n{server.log()}")


async def _start_server(env: dict[str, str], log_dir: Path, **overrides: str) -> Server:
    port = free_port()
    env = {**env, "PORT": str(port), "WEB_CONCURRENCY": "2", **overrides}
    log_path = log_dir / f"gunicorn-{port}.log"
    log_file = log_path.open("wb")
    # --bind keeps the server on loopback; the config alone would bind 0.0.0.0:$PORT.
    command = [str(GUNICORN), "-c", str(GUNICORN_CONFIG), "--bind", f"127.0.0.1:{port}"]
    process = await asyncio.create_subprocess_exec(
        *command,
        "api.main:app",
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log_file,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = Server(f"http://127.0.0.1:{port}", port, process, log_path, log_file)
    try:
        await wait_ready(server, workers=int(env["WEB_CONCURRENCY"]))
    except BaseException:
        await server.stop()
        raise
    return server


@pytest.fixture
async def server_factory(
    request: pytest.FixtureRequest, server_env: dict[str, str], tmp_path: Path
) -> AsyncIterator[ServerFactory]:
    """Start `gunicorn -c services/api/gunicorn.conf.py api.main:app`; stop it after the test.

    `make(**env)` overrides environment variables (WEB_CONCURRENCY is 2 unless
    given) and returns once `/health/ready` answers 200.
    """
    servers: list[Server] = []
    request.node.stash[_SERVERS] = servers

    async def make(**overrides: str) -> Server:
        server = await _start_server(server_env, tmp_path, **overrides)
        servers.append(server)
        return server

    yield make
    for server in servers:
        await server.stop()


@pytest.fixture(scope="module")
async def _module_server(
    server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Server]:
    server = await _start_server(server_env, tmp_path_factory.mktemp("gunicorn"))
    yield server
    await server.stop()


@pytest.fixture
def api_server(request: pytest.FixtureRequest, _module_server: Server) -> Server:
    """One server with two workers, shared by a module's tests that do not stop it."""
    request.node.stash[_SERVERS] = [_module_server]
    return _module_server


@dataclass(frozen=True)
class Credentials:
    email: str
    password: str

    @property
    def form(self) -> dict[str, str]:
        return {"username": self.email, "password": self.password}


RegisterUser = Callable[[Server], Awaitable[Credentials]]


@pytest.fixture
def register_user() -> RegisterUser:
    """Register a fresh user on a server over HTTP; returns its login."""

    async def register(server: Server) -> Credentials:
        credentials = Credentials(f"user-{uuid.uuid4().hex[:10]}@example.com", PASSWORD)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
            response = await client.post(
                "/v1/auth/register", json={"email": credentials.email, "password": PASSWORD}
            )
        assert response.status_code == 201, response.text
        return credentials

    return register

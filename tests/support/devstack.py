"""`make dev` as the system tests start it: embedded services of its own, on free ports."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from devharness.processes import ManagedProcess, environment_without
from devservices import free_ports

# What a developer's shell may hold that would point `make dev` elsewhere.
_SCRUBBED = ("DATABASE_URL", "REDIS_URL", "JWT_SECRET", "ENVIRONMENT")


@dataclass(frozen=True)
class DevPorts:
    """Where one `make dev` listens."""

    postgres: int
    redis: int
    api: int
    realtime: int
    console: int
    worker_metrics: int


def dev_environment(run_dir: Path) -> tuple[dict[str, str], DevPorts]:
    """The environment of a `make dev` with its data in `run_dir`, and its ports.

    Test-sized: one worker process, and a scheduler round every second.
    """
    ports = DevPorts(*free_ports(6))
    env = environment_without(*_SCRUBBED)
    env.update(
        DEV_RUN_DIR=str(run_dir),
        DEV_POSTGRES_PORT=str(ports.postgres),
        DEV_REDIS_PORT=str(ports.redis),
        API_PORT=str(ports.api),
        REALTIME_PORT=str(ports.realtime),
        CONSOLE_PORT=str(ports.console),
        WORKER_METRICS_PORT=str(ports.worker_metrics),
        WORKER_CONCURRENCY="1",
        SCHEDULER_INTERVAL_SECONDS="1",
    )
    return env, ports


async def wait_ready(client: httpx.AsyncClient, dev: ManagedProcess, *, within: float) -> None:
    """Return once the API's `/health/ready` answers 200; fail if `make dev` exits first."""
    await get_when_up(client, "/health/ready", dev, within=within)


async def get_when_up(
    client: httpx.AsyncClient, url: str, dev: ManagedProcess, *, within: float
) -> httpx.Response:
    """GET `url` until it answers 200; fail with the log if `make dev` exits or time runs out."""
    deadline = time.monotonic() + within
    while True:
        try:
            response = await client.get(url)
            if response.status_code == 200:
                return response
        except httpx.TransportError:
            pass
        assert dev.is_running(), f"make dev exited early:\n{dev.log()}"
        assert time.monotonic() < deadline, f"{url} not up in {within:g}s:\n{dev.log()}"
        await dev.wait_exit(0.1)  # poll interval that also notices an early exit

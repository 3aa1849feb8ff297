"""The realtime app served in process by uvicorn on a free loopback port.

Real TCP and real WebSocket handshakes, with the same uvicorn WebSocket options
the gunicorn workers use, in the test's own event loop (no gunicorn).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import httpx
import uvicorn

from devservices import free_port
from realtime.main import create_app
from realtime.serving import websocket_options
from realtime.settings import RealtimeSettings

STARTUP_TIMEOUT = 15.0


class _InProcessServer(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        # Leave pytest's signal handlers alone; the test stops the server itself.
        yield


@dataclass(frozen=True)
class RunningRealtime:
    """Where an in-process realtime server listens, and its settings."""

    settings: RealtimeSettings
    port: int

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.asynccontextmanager
async def serve_realtime(settings: RealtimeSettings) -> AsyncIterator[RunningRealtime]:
    """Serve `create_app(settings)` until the block ends; ready (subscribed) on entry."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings),
        host="127.0.0.1",
        port=port,
        log_config=None,
        lifespan="on",
        **websocket_options(settings),
    )
    server = _InProcessServer(config)
    task = asyncio.create_task(server.serve())
    running = RunningRealtime(settings, port)
    try:
        await _wait_ready(running, task)
        yield running
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, STARTUP_TIMEOUT)


async def _wait_ready(running: RunningRealtime, task: asyncio.Task[None]) -> None:
    deadline = asyncio.get_running_loop().time() + STARTUP_TIMEOUT
    async with httpx.AsyncClient(base_url=running.http_url, timeout=2.0) as client:
        while asyncio.get_running_loop().time() < deadline:
            if task.done():
                task.result()
                raise RuntimeError("the realtime server stopped while starting")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.02)  # poll interval
    raise TimeoutError(f"realtime not ready within {STARTUP_TIMEOUT:g}s")

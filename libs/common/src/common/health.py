"""Liveness and readiness endpoints, and the drain that starts on SIGTERM.

`GET /health/live` answers while the process can serve. `GET /health/ready`
runs every named check concurrently, each under its own timeout, and answers
503 naming the failing ones; it also answers 503 from the moment the process
receives SIGTERM, so a load balancer stops routing to it while in-flight
requests finish.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from types import FrameType
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import HTTPConnection

from common.state import state_of

HealthCheck = Callable[[], Awaitable[object]]
_logger = logging.getLogger("common.health")


class Lifecycle:
    """Tracks whether the process is draining; chains itself onto the server's SIGTERM."""

    def __init__(self, *, drain_seconds: float = 0.0) -> None:
        self.drain_seconds = drain_seconds
        self.draining = False
        self._previous: Any = None

    def start_draining(self) -> None:
        """Make readiness fail from now on."""
        if not self.draining:
            _logger.info("draining: readiness now fails")
        self.draining = True

    def install(self) -> None:
        """Wrap the server's SIGTERM handler (uvicorn's) so the drain starts first.

        Installed only in the main thread and only over a handler a server put
        there; a test client's process keeps its default SIGTERM behaviour.
        """
        if threading.current_thread() is not threading.main_thread():
            return
        previous = signal.getsignal(signal.SIGTERM)
        if not callable(previous):
            return
        self._previous = previous
        loop = asyncio.get_running_loop()

        def on_sigterm(signum: int, frame: FrameType | None) -> None:
            self.start_draining()
            if self.drain_seconds > 0:
                # Keep serving (readiness 503) so the balancer notices first.
                loop.call_soon_threadsafe(
                    loop.call_later, self.drain_seconds, previous, signum, frame
                )
            else:
                previous(signum, frame)

        signal.signal(signal.SIGTERM, on_sigterm)

    def uninstall(self) -> None:
        """Put the server's handler back."""
        if self._previous is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


def postgres_check(engine: AsyncEngine) -> HealthCheck:
    """A check that runs `SELECT 1` on a pooled connection."""

    async def check() -> None:
        async with engine.connect() as connection:
            await connection.execute(text("SELECT 1"))

    return check


def redis_check(redis: Redis) -> HealthCheck:
    """A check that PINGs Redis."""

    async def check() -> None:
        await redis.ping()

    return check


async def _run_check(check: HealthCheck, limit: float) -> dict[str, Any]:
    started = time.perf_counter()
    error: str | None
    try:
        async with asyncio.timeout(limit):
            await check()
    except TimeoutError:
        status, error = "fail", f"timed out after {limit:g}s"
    except Exception as exc:
        status, error = "fail", type(exc).__name__
    else:
        status, error = "ok", None
    result: dict[str, Any] = {
        "status": status,
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
    }
    if error is not None:
        result["error"] = error
    return result


async def run_checks(checks: Mapping[str, HealthCheck], *, limit: float) -> dict[str, Any]:
    """Run every check concurrently, each under `limit` seconds; name each result."""
    names = list(checks)
    results = await asyncio.gather(*(_run_check(checks[name], limit) for name in names))
    return dict(zip(names, results, strict=True))


def create_health_router() -> APIRouter:
    """`/health/live` and `/health/ready`, reading checks from the lifespan state.

    They read `lifecycle`, `health_checks` and `settings` (for
    `health_check_timeout`) of the lifespan's `common.state.CommonState`.
    """
    router = APIRouter(prefix="/health", tags=["health"])

    @router.get("/live", summary="The process answers")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @router.get(
        "/ready",
        summary="Every dependency answers",
        responses={503: {"description": "A dependency failed, or the process is draining"}},
    )
    async def ready(connection: HTTPConnection) -> JSONResponse:
        state = state_of(connection)
        lifecycle = state["lifecycle"]
        checks = await run_checks(
            state["health_checks"], limit=state["settings"].health_check_timeout
        )
        failing = [name for name, result in checks.items() if result["status"] != "ok"]
        if lifecycle.draining:
            failing.append("draining")
        body: dict[str, Any] = {"status": "fail" if failing else "ok", "checks": checks}
        if failing:
            body["failing"] = failing
        headers = {"Cache-Control": "no-store"}
        return JSONResponse(body, status_code=503 if failing else 200, headers=headers)

    return router

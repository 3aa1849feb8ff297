"""Worker recycling under keep-alive load: every request answered, no connection reset.

The mechanism under test is the request-count backstop with a low threshold
(`GUNICORN_MAX_REQUESTS=400`, no jitter), so each worker retires every few
hundred requests; the memory trigger retires a worker through the same path.
Two kinds of keep-alive clients drive the API meanwhile: a pool of httpx
connections (authenticated reads and liveness) and wrk.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import psutil
import pytest

from bench import wrk
from devharness.polling import eventually
from tests.fixtures.servers import RegisterUser, Server, ServerFactory, start_probe

pytestmark = pytest.mark.system

MAX_REQUESTS = 400
WORKERS = 2
RECYCLES_PER_WORKER = 3
HTTPX_LOOPS = 6
WRK_ROUND = wrk.WrkSettings(threads=1, connections=8, seconds=3)
DEADLINE = 90.0
_RETIRING = re.compile(r"worker (\d+) retiring: served \d+ requests")


def _retirees(server: Server) -> list[int]:
    """The pids of the workers that retired by themselves, in order."""
    return [int(match.group(1)) for match in _RETIRING.finditer(server.log())]


async def _httpx_loop(
    client: httpx.AsyncClient, job_path: str, *, stop: asyncio.Event, tally: Counter[str]
) -> None:
    while not stop.is_set():
        for path in ("/health/live", job_path):
            try:
                response = await client.get(path)
            except httpx.TransportError as exc:
                tally[type(exc).__name__] += 1
            else:
                tally["ok" if response.status_code == 200 else str(response.status_code)] += 1


class TestRecyclingUnderLoad:
    """Workers retire while keep-alive clients keep sending, and nobody notices."""

    async def test_three_recycles_per_worker_fail_and_reset_nothing(
        self, server_factory: ServerFactory, register_user: RegisterUser
    ) -> None:
        server = await server_factory(
            GUNICORN_MAX_REQUESTS=str(MAX_REQUESTS), GUNICORN_MAX_REQUESTS_JITTER="0"
        )
        first_workers = server.worker_pids()
        credentials = await register_user(server)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as setup:
            token = (await setup.post("/v1/auth/token", data=credentials.form)).json()
            headers = {"Authorization": f"Bearer {token['access_token']}"}
            job = await setup.post(
                "/v1/jobs",
                json={"kind": "demo.countdown", "params": {"steps": 1, "interval": 0}},
                headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
            )
            assert job.status_code == 202, job.text
        job_path = f"/v1/jobs/{job.json()['id']}"

        stop = asyncio.Event()
        tally: Counter[str] = Counter()
        wrk_errors: Counter[str] = Counter()
        wrk_requests = 0
        limits = httpx.Limits(max_connections=HTTPX_LOOPS, max_keepalive_connections=HTTPX_LOOPS)
        async with httpx.AsyncClient(
            base_url=server.base_url, headers=headers, limits=limits, timeout=10.0
        ) as client:
            loops = [
                asyncio.create_task(_httpx_loop(client, job_path, stop=stop, tally=tally))
                for _ in range(HTTPX_LOOPS)
            ]
            try:
                deadline = time.monotonic() + DEADLINE
                while len(_retirees(server)) < WORKERS * RECYCLES_PER_WORKER:
                    assert time.monotonic() < deadline, f"retired: {_retirees(server)}"
                    result = await wrk.run(f"{server.base_url}/health/live", WRK_ROUND)
                    wrk_requests += result.requests
                    wrk_errors.update(result.errors)
            finally:
                stop.set()
                with contextlib.suppress(asyncio.CancelledError):
                    await asyncio.gather(*loops)

        retirees = _retirees(server)
        assert len(retirees) >= WORKERS * RECYCLES_PER_WORKER
        # The worker due longest goes first: both first workers reach the count within a
        # fraction of a second, long before a replacement can.
        assert set(retirees[:WORKERS]) == first_workers, "the first workers retired first"
        assert len(set(retirees)) == len(retirees), "a worker retires once"
        # wrk counts a reset or an unanswered request as a read error.
        assert +wrk_errors == Counter(), wrk_errors
        assert wrk_requests > WORKERS * RECYCLES_PER_WORKER * MAX_REQUESTS
        failures = {outcome: count for outcome, count in tally.items() if outcome != "ok"}
        assert failures == {}, f"{failures}; ok: {tally['ok']}"
        assert tally["ok"] > 0


class TestEvenAfterAReplacement:
    """A retired worker's clients, which reconnected to the other worker before its
    replacement existed, come back to the replacement though their connections persist."""

    async def test_the_replacement_gets_its_share_of_keep_alive_connections(
        self, server_env: dict[str, str], tmp_path: Path
    ) -> None:
        server = await start_probe(server_env, tmp_path)
        served: list[int] = []
        errors: Counter[str] = Counter()
        stop = asyncio.Event()

        async def loop(client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                try:
                    served.append((await client.get("/test/heap")).json()["pid"])
                except httpx.TransportError as exc:
                    errors[type(exc).__name__] += 1

        # Keep-alive connections that live as long as the client: nothing else moves them.
        limits = httpx.Limits(max_connections=8, max_keepalive_connections=8)
        master = psutil.Process(server.pid)
        try:
            async with httpx.AsyncClient(
                base_url=server.base_url, limits=limits, timeout=10.0
            ) as client:
                loops = [asyncio.create_task(loop(client)) for _ in range(8)]
                try:
                    first = server.worker_pids()
                    await eventually(lambda: set(served) >= first, within=15, interval=0.1)
                    retiree, survivor = min(first), max(first)
                    # The master held still, so the replacement cannot exist before every
                    # client has reconnected to the survivor (on a slow machine it could
                    # start while the retiree still ends its connections, and take them).
                    master.suspend()
                    # Retired as a recycle retires it: its connections end cleanly, and
                    # their clients reconnect to the only worker then accepting.
                    os.kill(retiree, signal.SIGTERM)
                    await eventually(
                        lambda: psutil.Process(retiree).status() == psutil.STATUS_ZOMBIE,
                        within=30,
                        interval=0.1,
                    )
                    # Each of the 8 loops may yet append one answer the retiree gave before
                    # it exited; every answer after those is the survivor's.
                    mark = len(served) + 8
                    await eventually(lambda: len(served) >= mark + 50, within=15, interval=0.1)
                    assert set(served[mark:]) == {survivor}
                    master.resume()

                    def replacement() -> int | None:
                        new = server.worker_pids() - first
                        return next(iter(new)) if new and server.started_workers() >= 3 else None

                    fresh = await eventually(replacement, within=30, interval=0.1)

                    def even() -> bool:
                        window = served[-200:]
                        return len(window) == 200 and window.count(fresh) >= 50

                    await eventually(even, within=15, interval=0.1)
                finally:
                    stop.set()
                    await asyncio.gather(*loops)
        finally:
            with contextlib.suppress(psutil.NoSuchProcess):
                master.resume()
            await server.stop()
        assert +errors == Counter(), errors
        # The survivor held all 8 when the replacement appeared, and ended its excess:
        # an even share of 8 between two workers leaves it 4.
        shed = f"worker {survivor}: ending 4 of its 8 connections for new worker(s) [{fresh}]"
        assert shed in server.log()

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
import re
import time
import uuid
from collections import Counter

import httpx
import pytest

from bench import wrk
from tests.fixtures.servers import RegisterUser, Server, ServerFactory

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
        assert first_workers <= set(retirees), "each first worker retired"
        assert len(set(retirees)) == len(retirees), "a worker retires once"
        # wrk counts a reset or an unanswered request as a read error.
        assert +wrk_errors == Counter(), wrk_errors
        assert wrk_requests > WORKERS * RECYCLES_PER_WORKER * MAX_REQUESTS
        failures = {outcome: count for outcome, count in tally.items() if outcome != "ok"}
        assert failures == {}, f"{failures}; ok: {tally['ok']}"
        assert tally["ok"] > 0

"""Start-up objects are out of every full collection in the shipped servers (common.heap)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

from tests.fixtures.servers import start_probe

pytestmark = pytest.mark.system


async def test_each_gunicorn_worker_walks_only_what_it_made_since_start(
    server_env: dict[str, str], tmp_path: Path
) -> None:
    server = await start_probe(server_env, tmp_path)
    seen: dict[int, dict[str, int]] = {}
    try:
        for _ in range(10):
            # Connections open together: a worker ahead in open connections leaves the next
            # to the other (api.serving). One after another, each closed before the next
            # opens, they all could go to whichever worker wakes first.
            clients = [httpx.AsyncClient(base_url=server.base_url, timeout=10) for _ in range(4)]
            try:
                answers = await asyncio.gather(*(client.get("/test/heap") for client in clients))
            finally:
                await asyncio.gather(*(client.aclose() for client in clients))
            seen.update((answer.json()["pid"], answer.json()) for answer in answers)
            if len(seen) == 2:
                break
    finally:
        await server.stop()
    assert len(seen) == 2, seen
    for answer in seen.values():
        # The preloaded app (frozen by the master) and the lifespan's pools (by the worker).
        assert answer["frozen"] > 100_000, answer
        assert answer["tracked"] < answer["frozen"] // 4, answer


def test_a_process_that_is_not_a_forked_worker_freezes_nothing() -> None:
    # A test session builds and drops apps: what a frozen cycle holds is never freed.
    code = textwrap.dedent(
        """
        import gc
        from common.heap import freeze_worker_heap, gunicorn_when_ready
        freeze_worker_heap()
        print(gc.get_freeze_count())
        gunicorn_when_ready(None)
        frozen = gc.get_freeze_count()
        garbage = [[]]
        garbage[0].append(garbage)
        freeze_worker_heap()
        print(frozen > 0, gc.get_freeze_count() > frozen)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split() == ["0", "True", "True"]

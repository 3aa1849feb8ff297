"""Start-up objects are out of every full collection in the shipped servers (common.heap)."""

from __future__ import annotations

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
    try:
        seen: dict[int, dict[str, int]] = {}
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10) as client:
            for _ in range(40):
                # A new connection each time: the workers share them out.
                answer = (await client.get("/test/heap", headers={"Connection": "close"})).json()
                seen[answer["pid"]] = answer
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

"""The login storm's physical floor: what Argon2 does to a server with no Python in it.

A C server that answers every request with a fixed 200 (bench/baselines/noop_http.c,
compiled here with the system's C compiler) is probed exactly as the login storm
probes `/health/live`: one connection, alone and then while C Argon2 runs flat out
in separate processes (the argon2 command-line tool, Debian's `argon2` package) at
SCHED_IDLE, as many at once and with the same parameters as the API's hashing plan
runs them on this machine. The ratio of the two p99s is what the machine itself
(CPU time, caches, memory bandwidth) costs a server during a storm of hashes: no
Python service can do better, so a login-storm target below it is physically out of
reach here.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

from api.auth.passwords import Argon2Params
from api.capacity import hashing_plan
from api.settings import ApiSettings
from bench import wrk
from bench.profiles import Profile
from bench.report import Row, make_row
from devservices import free_port

SOURCE = Path(__file__).resolve().parent / "baselines" / "noop_http.c"
TARGET = 3.0
_LEAD_SECONDS = 1.0


class FloorUnavailable(RuntimeError):
    """Raised when this machine lacks a C compiler or the argon2 tool."""


def _tools() -> tuple[str, str]:
    compiler = shutil.which("cc") or shutil.which("gcc")
    argon2 = shutil.which("argon2")
    if compiler is None or argon2 is None:
        missing = " and ".join(
            name for name, path in (("a C compiler", compiler), ("argon2", argon2)) if not path
        )
        raise FloorUnavailable(f"{missing} missing (Debian: apt-get install gcc argon2)")
    return compiler, argon2


def _hash_loop(argon2: str, params: Argon2Params) -> list[str]:
    """A shell loop hashing forever with the argon2 tool, at the lowest CPU priority."""
    command = (
        f"while :; do printf %s 'correct horse battery staple' | {argon2} saltsaltsaltsalt "
        f"-id -t {params.time_cost} -k {params.memory_kib} -p {params.parallelism} -r "
        ">/dev/null; done"
    )
    idle = ["chrt", "--idle", "0"] if shutil.which("chrt") else ["nice", "-n", "19"]
    return [*idle, "/bin/sh", "-c", command]


@contextlib.contextmanager
def _hashing(
    argon2: str, params: Argon2Params, count: int
) -> Iterator[list[subprocess.Popen[bytes]]]:
    loops = [
        subprocess.Popen(_hash_loop(argon2, params), start_new_session=True)  # noqa: S603
        for _ in range(count)
    ]
    try:
        yield loops
    finally:
        for loop in loops:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(loop.pid, signal.SIGKILL)
            loop.wait()


async def login_floor(profile: Profile, run_dir: Path, *, workers: int = 2) -> list[Row]:
    """The floor row: the C server's p99 during C Argon2 vs alone, as the storm probes it."""
    try:
        compiler, argon2 = _tools()
    except FloorUnavailable as exc:
        return [_skipped(str(exc))]
    binary = run_dir / "noop_http"
    build = [compiler, "-O2", "-o", str(binary), str(SOURCE)]
    await asyncio.to_thread(subprocess.run, build, check=True)
    plan = hashing_plan(ApiSettings(_env_file=None, web_concurrency=workers))
    hashes = plan.slots * workers
    port = free_port()
    server = await asyncio.create_subprocess_exec(str(binary), str(port))
    url = f"http://127.0.0.1:{port}/health/live"
    probe = replace(profile.wrk, connections=1)
    try:
        await _listening(port)
        await wrk.run(url, replace(probe, seconds=profile.warmup_seconds))
        idle_runs, loaded_runs = [], []
        for _ in range(profile.rounds):
            idle_runs.append(await wrk.run(url, probe))
            with _hashing(argon2, plan.params, hashes):
                await asyncio.sleep(_LEAD_SECONDS)
                loaded_runs.append(await wrk.run(url, probe))
    finally:
        server.kill()
        await server.wait()
    idle = sorted(run.latency_ms["p99"] for run in idle_runs)[len(idle_runs) // 2]
    loaded = sorted(run.latency_ms["p99"] for run in loaded_runs)[len(loaded_runs) // 2]
    return [
        make_row(
            "Login storm",
            "physical floor: C server p99 during C Argon2 vs idle",
            ours=loaded,
            baseline=idle,
            unit="ms",
            target=TARGET,
            higher_is_better=False,
            note=f"{hashes} argon2 processes at SCHED_IDLE ({plan.params}); no Python; "
            f"median of {profile.rounds} rounds",
        )
    ]


async def _listening(port: int) -> None:
    for _ in range(100):
        with contextlib.suppress(OSError):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        await asyncio.sleep(0.05)  # poll interval: the server signals nothing when it listens
    raise FloorUnavailable(f"the C server did not listen on port {port}")


def _skipped(reason: str) -> Row:
    return {
        "scenario": "Login storm",
        "metric": "physical floor: C server p99 during C Argon2 vs idle",
        "ours": None,
        "baseline": None,
        "unit": "ms",
        "ratio": None,
        "target": f"<= {TARGET:g}x",
        "met": False,
        "note": f"not measured: {reason}",
    }

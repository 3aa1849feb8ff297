"""The login storm's floor: what Argon2 does to a server with no Python in it.

A C server that answers every request with a fixed 200 (bench/baselines/noop_http.c,
compiled here with the system's C compiler) is probed exactly as the login storm
probes `/health/live`: one connection, alone and then while C Argon2 runs flat out
in separate processes (the argon2 command-line tool, Debian's `argon2` package)
the way the API's hashing servers run it: as many at once and with the same
parameters as the API's hashing plan on this machine, `NICE` steps below the
server, giving the CPU away every `YIELD_EVERY` seconds by a sleep of a few
microseconds (bench/baselines/yield_shim.c, preloaded into the tool), in the
server's session as the API's hashing servers are in their worker's. The ratio
of the two p99s is the floor row: what hashing the way the API does costs a
server here, with no Python anywhere.

An informative row beside it hashes the same way without the yield, as the API
did before the seventeenth pass: on kernels where a waking task does not preempt
one in user space until the next tick, that is what the yield buys (see
docs/performance.md).
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

from api.auth._hash_server import NICE, TIMER_SLACK_NS, YIELD_EVERY
from api.auth.passwords import Argon2Params
from api.capacity import hashing_plan
from api.settings import ApiSettings
from bench import wrk
from bench.profiles import Profile
from bench.report import Row, make_row
from devservices import free_port

SOURCE = Path(__file__).resolve().parent / "baselines" / "noop_http.c"
SHIM = Path(__file__).resolve().parent / "baselines" / "yield_shim.c"
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


def _hash_loop(argon2: str, params: Argon2Params, shim: Path | None) -> list[str]:
    """A shell loop hashing forever with the argon2 tool, `NICE` steps below this process.

    With `shim`, each hash gives its CPU away every `YIELD_EVERY` seconds.
    """
    preload = (
        f"YIELD_EVERY_US={round(YIELD_EVERY * 1e6)} TIMER_SLACK_NS={TIMER_SLACK_NS} "
        f"LD_PRELOAD={shim} "
        if shim is not None
        else ""
    )
    command = (
        "while :; do printf %s 'correct horse battery staple' | "
        f"{preload}{argon2} saltsaltsaltsalt -id -t {params.time_cost} "
        f"-k {params.memory_kib} -p {params.parallelism} -r "
        ">/dev/null; done"
    )
    return ["nice", "-n", str(NICE), "/bin/sh", "-c", command]


@contextlib.contextmanager
def _hashing(
    argon2: str, params: Argon2Params, count: int, shim: Path | None
) -> Iterator[list[subprocess.Popen[bytes]]]:
    # A process group of their own, to be stopped together, but the server's session, as
    # the API's hashing servers share their worker's: a session of its own would be an
    # autogroup of its own, which Linux weighs against the server's as an equal whatever
    # the hashes' policy.
    loops = [
        subprocess.Popen(_hash_loop(argon2, params, shim), process_group=0)  # noqa: S603
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
    """The floor rows: the C server's p99 during C Argon2 (as ours, then not yielding) vs alone."""
    try:
        compiler, argon2 = _tools()
    except FloorUnavailable as exc:
        return [_skipped(str(exc))]
    binary, shim = run_dir / "noop_http", run_dir / "yield_shim.so"
    for build in (
        [compiler, "-O2", "-o", str(binary), str(SOURCE)],
        [compiler, "-O2", "-shared", "-fPIC", "-o", str(shim), str(SHIM)],
    ):
        await asyncio.to_thread(subprocess.run, build, check=True)
    plan = hashing_plan(ApiSettings(_env_file=None, web_concurrency=workers))
    hashes = plan.slots * workers
    port = free_port()
    server = await asyncio.create_subprocess_exec(str(binary), str(port))
    url = f"http://127.0.0.1:{port}/health/live"
    probe = replace(profile.wrk, connections=1)
    p99s: dict[str, list[float]] = {"idle": [], "yielding": [], "plain": []}
    try:
        await _listening(port)
        await wrk.run(url, replace(probe, seconds=profile.warmup_seconds))
        for _ in range(profile.rounds):
            p99s["idle"].append((await wrk.run(url, probe)).latency_ms["p99"])
            for kind, preloaded in (("yielding", shim), ("plain", None)):
                with _hashing(argon2, plan.params, hashes, preloaded):
                    await asyncio.sleep(_LEAD_SECONDS)
                    p99s[kind].append((await wrk.run(url, probe)).latency_ms["p99"])
    finally:
        server.kill()
        await server.wait()
    idle, yielding, plain = (sorted(runs)[len(runs) // 2] for runs in p99s.values())
    how = f"{hashes} argon2 processes at nice {NICE} ({plan.params}); no Python; "

    def row(metric: str, loaded: float, note: str) -> Row:
        return make_row(
            "Login storm", metric, ours=loaded, baseline=idle, unit="ms", target=TARGET,
            higher_is_better=False, note=f"{how}{note}; median of {profile.rounds} rounds",
        )  # fmt: skip

    floor = row(
        "floor: C server p99 during C Argon2 hashing as ours does vs idle",
        yielding,
        f"giving way every {YIELD_EVERY * 1000:g} ms (a {int(signal.SIGALRM)} us sleep), "
        "in the server's session",
    )
    holding_on = row(
        "C server p99 during C Argon2 not yielding vs idle",
        plain,
        "informative: what the yield buys (the API's hashes before the seventeenth pass)",
    )
    return [floor, {**holding_on, "target": "-", "met": None}]


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
        "metric": "floor: C server p99 during C Argon2 hashing as ours does vs idle",
        "ours": None,
        "baseline": None,
        "unit": "ms",
        "ratio": None,
        "target": f"<= {TARGET:g}x",
        "met": False,
        "note": f"not measured: {reason}",
    }

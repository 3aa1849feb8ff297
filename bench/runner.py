"""One benchmark run: start the stack, run every scenario in turn, collect rows and details.

A scenario that fails outright becomes a missed row naming the error, and the
run goes on: a failure is reported like a missed target, never hidden.
"""

from __future__ import annotations

import asyncio
import os
import time
import traceback
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from bench import scenarios
from bench.e2e import end_to_end
from bench.profiles import Profile
from bench.report import Row
from bench.stack import Stack, open_stack
from devharness.services import ServiceUrls

SCENARIOS = ("overhead", "read", "intake", "e2e", "login", "memory", "fanout")


_STARTED = time.monotonic()


def _say(message: str) -> None:
    print(f"bench [{time.monotonic() - _STARTED:5.0f}s] {message}", flush=True)


def _first_line(exc: Exception) -> str:
    lines = str(exc).splitlines()
    return lines[0][:200] if lines else ""


async def _guarded(name: str, work: Awaitable[list[Row]], rows: list[Row]) -> None:
    started = time.monotonic()
    _say(f"{name} ...")
    try:
        rows.extend(await work)
    except Exception as exc:
        traceback.print_exc()
        rows.append(
            {
                "scenario": name,
                "metric": "scenario failed",
                "ours": None,
                "baseline": None,
                "unit": "",
                "ratio": None,
                "target": "completes",
                "met": False,
                "note": f"{type(exc).__name__}: {_first_line(exc)}",
            }
        )
    _say(f"{name} done in {time.monotonic() - started:.0f}s")


async def _with_detail(
    work: Awaitable[tuple[list[Row], dict[str, Any]]], details: dict[str, Any], key: str
) -> list[Row]:
    rows, detail = await work
    details[key] = detail
    return rows


async def _http_scenarios(
    stack: Stack, profile: Profile, chosen: set[str], rows: list[Row], details: dict[str, Any]
) -> None:
    # Started side by side: on a busy 2-core machine each start takes seconds. The
    # baseline runs under the API's startCommand and env, with its own app.
    api, bare, realtime = await asyncio.gather(
        stack.start_web("api"),
        stack.start_web("api", app="bench.baselines.bare:app", name="bare"),
        stack.start_web("realtime"),
    )
    _say("api, baseline and realtime ready")
    users = await scenarios.register(api, 1 + profile.e2e_users)
    _say(f"{len(users)} users registered")
    e2e_users = users[1:]
    targets = scenarios.Targets(api, bare, users[:1])
    if "overhead" in chosen:
        await _guarded("API overhead", scenarios.api_overhead(targets, profile), rows)
    if "read" in chosen:
        await _guarded("Authenticated read", scenarios.authenticated_read(targets, profile), rows)
    if "intake" in chosen:
        await _guarded("Job intake", scenarios.job_intake(targets, stack, profile), rows)
    await stack.stop_named("bare")
    if "e2e" in chosen:
        # Only now a worker: the intake's jobs were purged, nothing is left for it.
        await stack.start_worker()
        _say("worker consuming")
        e2e = end_to_end(api, realtime, e2e_users, profile, stack.processes)
        work = _with_detail(e2e, details, "e2e")
        await _guarded("End-to-end latency", work, rows)
        await stack.stop_named("worker")
    await stack.stop_named("realtime")
    if "login" in chosen:
        work = _with_detail(scenarios.login_storm(targets, profile), details, "login_storm")
        await _guarded("Login storm", work, rows)
        from bench.floor import login_floor

        await _guarded("Login storm floor", login_floor(profile, stack.run_dir), rows)


async def _none(work: Awaitable[None]) -> list[Row]:
    await work
    return []


async def _fanout(stack: Stack, profile: Profile, out_dir: Path, rows: list[Row]) -> None:
    try:
        from bench.fanout import run_fanout
    except ImportError as exc:
        _say(f"fan-out skipped: bench/fanout.py cannot be imported ({exc})")
        return
    affinity = os.sched_getaffinity(0)
    try:
        work = run_fanout(stack, profile=profile.name, out_dir=out_dir)
        await _guarded("Fan-out", work, rows)
    finally:
        # run_fanout pins this process to the load core; later work gets every core back.
        os.sched_setaffinity(0, affinity)


async def run(
    urls: ServiceUrls,
    database_url: str,
    *,
    profile: Profile,
    chosen: set[str],
    out_dir: Path,
    run_dir: Path,
) -> tuple[list[Row], dict[str, Any]]:
    """Every chosen scenario on one stack; the rows and the plot details."""
    rows: list[Row] = []
    details: dict[str, Any] = {}
    async with open_stack(urls, database_url, run_dir) as stack:
        details["overrides"] = stack.overrides
        _say(f"services: {stack.source}; logs in {run_dir}")
        _say("configuration: render.yaml's startCommand and env vars; overrides:")
        for key, why in stack.overrides.items():
            _say(f"  {key}={why}")
        if chosen & {"overhead", "read", "intake", "e2e", "login"}:
            work = _http_scenarios(stack, profile, chosen, rows, details)
            await _guarded("HTTP scenarios", _none(work), rows)
        await stack.stop_all()
        if "memory" in chosen:
            from bench.memory import run_memory

            await _guarded("Memory", run_memory(stack, profile), rows)
        if "fanout" in chosen:
            await _fanout(stack, profile, out_dir, rows)
    return rows, details

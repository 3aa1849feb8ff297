"""Memory: each service's peak PSS under load, against its budget and the plan render.yaml gives it.

Each service starts as the other scenarios start it, with the worker counts
render.yaml sets, inside a cgroup that holds it to its plan's memory as
Render's does (the service finds its limit there itself). Where this machine
cannot make a cgroup, `MEMORY_LIMIT` tells the service the same figure and
the row's note says so. Its process tree's proportional set size (PSS: each
shared page split among its sharers, so copy-on-write pages count once;
psutil's `memory_full_info().pss`, summed) is sampled every 100 ms:

- api: during a login storm shaped like the login storm scenario's;
- worker: while jobs run on every one of its processes;
- realtime: while 10,000 idle sockets are open (each authenticated, each
  having received its hello), spread over the plan's workers.

Target: every peak at most 80% of the plan's memory. The note gives the
plan, the budget the service plans with (the limit less MEMORY_HEADROOM),
the idle PSS, and the peak as a share of the plan; a row is a miss if the
kernel's OOM killer acted in the cgroup.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import httpx
import psutil
import yaml
from websockets.asyncio.client import ClientConnection
from websockets.protocol import State

from bench import wrk
from bench.profiles import Profile
from bench.report import Row, make_row
from bench.scenarios import FORM, register
from bench.stack import PASSWORD, Stack, Web
from common.contracts.job_kinds import DEMO_COUNTDOWN
from devharness.cgroups import memory_cgroup_or_reason
from devharness.realtime import open_idle_sockets
from devharness.services import ROOT

MIB = 1 << 20
# Render's instance types, memory as Render states it (render.com/pricing and
# render.com/docs/workflows-limits, read 2026-11): free and starter 512 MB (0.1 and
# 0.5 CPU), standard 2 GB (1 CPU), pro 4 GB (2 CPU), pro plus 8 GB (4 CPU),
# pro max 16 GB, pro ultra 32 GB. Counted in decimal megabytes, the smaller reading.
PLAN_MEMORY_MB = {
    "free": 512,
    "starter": 512,
    "standard": 2_000,
    "pro": 4_000,
    "pro plus": 8_000,
    "pro max": 16_000,
    "pro ultra": 32_000,
}
TARGET_SHARE = 0.8
HEADROOM = 0.2  # CommonSettings.memory_headroom's default: the budget is the rest
SAMPLE_SECONDS = 0.1
IDLE_SOCKETS = 10_000
_JOB_STEPS = 30
_JOB_INTERVAL = 0.1


def blueprint() -> dict[str, dict[str, Any]]:
    """render.yaml's services by name: plan and the env values set as plain values."""
    document = yaml.safe_load((ROOT / "render.yaml").read_text())
    services = {}
    for service in document.get("services", []):
        env = {
            item["key"]: str(item["value"])
            for item in service.get("envVars", [])
            if "key" in item and "value" in item
        }
        services[service["name"]] = {"plan": service.get("plan", "starter"), "env": env}
    return services


def plan_bytes(plan: str) -> int:
    """The memory of a Render plan in bytes."""
    return PLAN_MEMORY_MB[plan] * 1_000_000


def tree_pss(pid: int) -> tuple[int, int]:
    """PSS summed over `pid` and all its descendants, and how many processes that was."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0, 0
    total = count = 0
    for process in processes:
        with contextlib.suppress(psutil.Error):  # gone meanwhile
            total += process.memory_full_info().pss
            count += 1
    return total, count


@dataclass
class PssSampler:
    """Samples a process tree's PSS every `interval` seconds while in its `async with`."""

    pid: int
    interval: float = SAMPLE_SECONDS
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        started = time.monotonic()
        while True:
            pss, count = await asyncio.to_thread(tree_pss, self.pid)
            self.samples.append((time.monotonic() - started, pss, count))
            await asyncio.sleep(self.interval)

    async def __aenter__(self) -> PssSampler:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        pss, count = await asyncio.to_thread(tree_pss, self.pid)
        self.samples.append((self.samples[-1][0] if self.samples else 0.0, pss, count))

    @property
    def peak(self) -> tuple[int, int]:
        """The highest PSS seen and the process count at that sample."""
        _, pss, count = max(self.samples, key=lambda sample: sample[1])
        return pss, count


@dataclass
class Confinement:
    """How a service was held to its plan: a cgroup, or only told the limit."""

    plan: str
    how: str = ""
    oom_kills: int = 0


@contextlib.asynccontextmanager
async def confined(stack: Stack, name: str, plan: str) -> AsyncIterator[Confinement]:
    """Run the `name` processes started inside in a cgroup of the plan's memory; stop them after."""
    limit = plan_bytes(plan)
    cgroup, reason = memory_cgroup_or_reason(f"bench-{name}-{os.getpid()}", limit)
    confinement = Confinement(plan)
    if cgroup is not None:
        stack.confinement[name] = (cgroup.prefix(), {})
        confinement.how = f"cgroup {cgroup.version} limit {limit / 1e6:,.0f} MB"
    else:
        stack.confinement[name] = ([], {"MEMORY_LIMIT": str(limit)})
        confinement.how = f"MEMORY_LIMIT={limit} (no cgroup: {reason[:120]})"
    try:
        yield confinement
    finally:
        await stack.stop_named(name)
        stack.confinement.pop(name, None)
        if cgroup is not None:
            confinement.oom_kills = cgroup.oom_kills()
            await asyncio.to_thread(cgroup.remove)


def _pid(stack: Stack, name: str) -> int:
    return next(process.pid for process in stack.processes if process.name == name)


def memory_row(
    service: str,
    during: str,
    confinement: Confinement,
    *,
    idle: int,
    peak: tuple[int, int],
    note: str = "",
    valid: bool = True,
) -> Row:
    """A row: the peak in MiB against 80% of the plan; budget, idle and share in the note."""
    limit = plan_bytes(confinement.plan)
    pss, processes = peak
    details = (
        f"plan {confinement.plan} ({limit / 1e6:,.0f} MB); budget "
        f"{limit * (1 - HEADROOM) / MIB:,.0f} MiB; idle {idle / MIB:,.0f} MiB; peak "
        f"{pss / limit:.0%} of plan, {processes} processes; {confinement.how}"
    )
    if confinement.oom_kills:
        details = f"OOM KILLER ACTED {confinement.oom_kills}x; {details}"
    return make_row(
        "Memory",
        f"{service} peak PSS ({during})",
        ours=pss / MIB,
        baseline=None,
        unit="MiB",
        target=round(limit * TARGET_SHARE / MIB, 1),
        higher_is_better=False,
        note=f"{note}; {details}" if note else details,
        valid=valid and confinement.oom_kills == 0,
    )


async def _api_and_worker(stack: Stack, profile: Profile, plans: dict[str, Any]) -> list[Row]:
    rows = []
    api_plan, worker_plan = plans["api"], plans["worker"]
    async with confined(stack, "api", api_plan["plan"]) as api_confinement:
        # render.yaml's own command and env (its WEB_CONCURRENCY), as the other scenarios.
        api = await stack.start_web("api")
        pid = _pid(stack, "api")
        users = await register(api, 2)  # logs in too: the hashing servers run from here on
        await asyncio.sleep(1)  # let start-up garbage settle before the idle figure
        idle, _ = await asyncio.to_thread(tree_pss, pid)
        storm = replace(
            profile.wrk, connections=profile.storm_connections, seconds=profile.wrk.seconds
        )
        body = urlencode({"username": users[0].email, "password": PASSWORD})
        async with PssSampler(pid) as sampler:
            result = await wrk.run(
                f"{api.url}/v1/auth/token",
                storm,
                method="POST",
                body=body,
                content_type=FORM,
                host=api.host,
            )
        note = (
            f"{result.rate:.1f} logins/s on {profile.storm_connections} connections, "
            f"{result.errors['status']} non-2xx"
        )
        rows.append(
            memory_row(
                "api",
                "login storm",
                api_confinement,
                idle=idle,
                peak=sampler.peak,
                note=note,
                valid=result.error_count - result.errors["status"] == 0,
            )
        )
        async with confined(stack, "worker", worker_plan["plan"]) as worker_confinement:
            concurrency = int(worker_plan["env"].get("WORKER_CONCURRENCY", "2"))
            await stack.start_worker()
            worker_pid = _pid(stack, "worker")
            await asyncio.sleep(1)
            idle, _ = await asyncio.to_thread(tree_pss, worker_pid)
            async with PssSampler(worker_pid) as sampler:
                finished, total = await _run_jobs(api, users[1].token, 2 * concurrency)
        rows.append(
            memory_row(
                "worker",
                "jobs running",
                worker_confinement,
                idle=idle,
                peak=sampler.peak,
                note=f"{finished} of {total} jobs succeeded ({concurrency} processes)",
                valid=finished == total,
            )
        )
    return rows


async def _run_jobs(api: Web, token: str, count: int) -> tuple[int, int]:
    """Submit `count` countdown jobs and wait until they end; how many succeeded."""
    job = {"kind": DEMO_COUNTDOWN, "params": {"steps": _JOB_STEPS, "interval": _JOB_INTERVAL}}
    headers = {**api.headers, "Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=api.url, headers=headers, timeout=30) as client:
        answers = await asyncio.gather(*(client.post("/v1/jobs", json=job) for _ in range(count)))
        ids = [answer.json()["id"] for answer in answers if answer.status_code == 202]
        deadline = time.monotonic() + 30 + count * _JOB_STEPS * _JOB_INTERVAL
        states: dict[str, str] = {}
        while time.monotonic() < deadline:
            for job_id in ids:
                if states.get(job_id) not in {"succeeded", "failed", "cancelled"}:
                    states[job_id] = (await client.get(f"/v1/jobs/{job_id}")).json()["state"]
            if all(state in {"succeeded", "failed", "cancelled"} for state in states.values()):
                break
            await asyncio.sleep(0.2)  # poll interval: the API has no completion push for us
    return sum(1 for state in states.values() if state == "succeeded"), count


async def _realtime(stack: Stack, plans: dict[str, Any], count: int) -> list[Row]:
    plan = plans["realtime"]
    # 10,000 sockets here and up to 10,000 descriptors across the server's workers.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    users = [uuid.uuid4() for _ in range(100)]
    tokens = stack.tokens_for(users[i % len(users)] for i in range(count))
    async with confined(stack, "realtime", plan["plan"]) as confinement:
        realtime = await stack.start_web("realtime")
        pid = _pid(stack, "realtime")
        await asyncio.sleep(1)
        idle, _ = await asyncio.to_thread(tree_pss, pid)
        sockets: list[ClientConnection] = []
        try:
            async with PssSampler(pid) as sampler:
                opening = time.monotonic()
                port = int(realtime.url.rsplit(":", 1)[1])
                outcomes, sockets = await open_idle_sockets(
                    f"ws://{realtime.host}/ws", tokens, address=("127.0.0.1", port)
                )
                _say(f"{count:,} handshakes in {time.monotonic() - opening:.0f}s: {outcomes}")
                await asyncio.sleep(1)  # all open: a few samples at the full count
                still_open = sum(1 for socket in sockets if socket.state is State.OPEN)
        finally:
            for socket in sockets:
                socket.transport.abort()  # at once: the server is stopped right after
    opened = outcomes.get("open", 0)
    refused = ", ".join(f"{count} {what}" for what, count in outcomes.items() if what != "open")
    note = f"{opened:,} of {count:,} sockets open" + (f", {refused}" if refused else "")
    if still_open != opened:
        note += f"; only {still_open:,} still open at the end"
    failed = sum(count for what, count in outcomes.items() if what not in {"open", "close 1013"})
    return [
        memory_row(
            "realtime",
            f"{count:,} idle sockets",
            confinement,
            idle=idle,
            peak=sampler.peak,
            note=note,
            valid=failed == 0 and still_open == opened,
        )
    ]


def _say(message: str) -> None:
    print(f"bench memory: {message}", flush=True)


async def run_memory(stack: Stack, profile: Profile) -> list[Row]:
    """The memory rows: api during a login storm, worker running jobs, realtime's idle sockets."""
    plans = blueprint()
    started = time.monotonic()
    rows = await _api_and_worker(stack, profile, plans)
    _say(f"api and worker measured in {time.monotonic() - started:.0f}s")
    started = time.monotonic()
    rows += await _realtime(stack, plans, IDLE_SOCKETS)
    _say(f"realtime measured in {time.monotonic() - started:.0f}s")
    return rows

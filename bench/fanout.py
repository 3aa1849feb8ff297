"""Fan-out: how many events per second one realtime process delivers within p99 100 ms.

`run_fanout` starts the realtime service as render.yaml starts it (its
`startCommand` and env vars, resolved by `bench.stack.Stack` as for every
other scenario: LOG_LEVEL INFO, WEB_CONCURRENCY 2) and then the baseline
(`bench/baselines/minimal_ws.py` under the same command, env and uvicorn
settings), each in turn on the same Redis. The overrides, named in the output:
the lifted rate limits (as everywhere in the bench), a Redis key prefix of the
run's own, and a bind to loopback. For each
client count it connects that many WebSocket clients, spread over
`USERS` users and several client processes (`bench/fanout_client.py`), then
publishes events to the users' channels with the worker's own
`publish_event` script at increasing rates. A step passes when every event
reached every socket of its user, none was closed, and the p99 of
publish-to-receive latency is at most 100 ms; the result is the highest
delivery rate (frames reaching sockets per second) that passed.

It also measures memory per idle connection: the workers' RSS after the
clients connected minus before (summed over the workers), divided by their
number.

CPU placement on a 2-core machine: the server under test is pinned to CPU 0,
the clients, the publisher and this process to CPU 1 (Redis runs where the OS
puts it), all at niceness -10 when run as root, so that other work on the
machine takes less from them. Both servers get the same placement and clients.

Alone: `python -m bench.fanout --profile quick` (embedded Redis unless
`REDIS_URL` is set); results in `bench/results/`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil
from redis.asyncio import Redis

from bench.stack import Stack
from common import publisher
from common.contracts import events

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
GUNICORN = ROOT / ".venv" / "bin" / "gunicorn"
USERS = 20
P99_LIMIT = 0.100
RATIO_TARGET = 1.5
MEMORY_TARGET_KIB = 20.0
SERVER_CPU = 0
REFINE_STEPS = 2
PRIORITY = -10  # niceness of the servers, clients and publisher (see _raise_priority)
LOAD_CPU = 1
_BUCKETS_PER_SECOND = 10_000  # as bench.fanout_client
_READY_TIMEOUT = 30.0

# The baseline: realtime's startCommand with its app and worker class swapped.
BASELINE_APP = "bench.baselines.minimal_ws:app"
BASELINE_WORKER = ["-k", "bench.baselines.minimal_ws.StockUvicornWorker"]


@dataclass(frozen=True)
class Profile:
    """How far a run goes: client counts, rate ladder and step length."""

    ladder_clients: tuple[int, ...]
    memory_clients: tuple[int, ...]
    step_seconds: float
    first_rate: float
    growth: float
    max_steps: int
    client_processes: int


PROFILES = {
    # 10,000 clients only in the full profile: the quick one must stay under 3 minutes.
    "quick": Profile((1_000,), (), 2.0, 4_000, 1.5, 10, 2),
    "full": Profile((1_000, 10_000), (), 5.0, 4_000, 1.3, 14, 4),
}


@dataclass
class Step:
    """One rung of the ladder: what was asked, what arrived, how late."""

    rate: float
    delivered_rate: float
    expected: int
    delivered: int
    p50: float
    p99: float
    closed: int
    server_cpu: float = 0.0

    @property
    def cpu_us_per_frame(self) -> float:
        """Server CPU time per delivered frame: steadier than rates on a shared machine."""
        return self.server_cpu / self.delivered * 1e6 if self.delivered else float("inf")

    @property
    def passed(self) -> bool:
        return self.closed == 0 and self.delivered >= self.expected and self.p99 <= P99_LIMIT


@dataclass
class Outcome:
    """One server at one client count."""

    server: str
    clients: int
    memory_kib: float
    steps: list[Step] = field(default_factory=list)
    client_cpu: float = 0.0

    @property
    def saturated(self) -> bool:
        """Whether the ladder found a rate this server failed (else `best` is a lower bound)."""
        return any(not step.passed for step in self.steps)

    @property
    def cpu_per_frame(self) -> float:
        """Median server CPU microseconds per delivered frame over the ladder's steps."""
        costs = sorted(step.cpu_us_per_frame for step in self.steps)
        return costs[len(costs) // 2] if costs else 0.0

    @property
    def best(self) -> float:
        passed = [step.delivered_rate for step in self.steps if step.passed]
        return max(passed, default=0.0)


# --- processes ---------------------------------------------------------------


def _raise_fd_limit() -> None:
    # Children inherit it: the server holds one descriptor per socket.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _pin(cpu: int) -> Any:
    cpus = {cpu % (os.cpu_count() or 1)}

    def pin() -> None:
        os.sched_setaffinity(0, cpus)
        _raise_priority()

    return pin


def _raise_priority() -> None:
    # On a machine shared with other test runs, a server at normal priority gets a
    # fraction of its core and its latency measures the neighbours. Needs root;
    # without it the run goes on at normal priority.
    with contextlib.suppress(PermissionError):
        os.setpriority(os.PRIO_PROCESS, 0, PRIORITY)


@dataclass(frozen=True)
class Servers:
    """How both servers start: realtime's startCommand and env, and what differs from them."""

    command: list[str]
    env: dict[str, str]
    overrides: dict[str, str]

    @classmethod
    def from_stack(cls, stack: Stack, prefix: str) -> Servers:
        overrides = dict(stack.overrides)
        overrides.pop("(Postgres)", None)  # realtime has no database
        overrides["REDIS_KEY_PREFIX"] = f"{prefix} (this fan-out run's own keys)"
        overrides["--bind"] = "127.0.0.1:<port> (loopback only)"
        # The baseline module is imported from the repository root.
        overrides["PYTHONPATH"] = f"{ROOT} (for the baseline's module)"
        env = {**stack.service_env("realtime"), "REDIS_KEY_PREFIX": prefix, "PYTHONPATH": str(ROOT)}
        return cls(stack.command("realtime"), env, overrides)

    def argv(self, kind: str, port: int) -> list[str]:
        words = list(self.command)
        if kind == "baseline":
            words = [BASELINE_APP if word.endswith(":app") else word for word in words]
            words[1:1] = BASELINE_WORKER
        binary, *rest = words
        # The startCommand names `gunicorn`; the one in this checkout's virtualenv runs it.
        binary = str(GUNICORN) if binary == "gunicorn" else binary
        return [binary, *rest, "--bind", f"127.0.0.1:{port}"]


@contextlib.asynccontextmanager
async def _server(
    kind: str, *, servers: Servers, log_dir: Path
) -> AsyncIterator[tuple[int, list[psutil.Process]]]:
    """Start one server as render.yaml does; yield its port and its worker processes."""
    port = _free_port()
    log = (log_dir / f"{kind}-{port}.log").open("wb")
    process = subprocess.Popen(  # noqa: ASYNC220, S603 (our own command; start is instant)
        servers.argv(kind, port), cwd=ROOT, env={**servers.env, "PORT": str(port)},
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        preexec_fn=_pin(SERVER_CPU),
    )  # fmt: skip
    try:
        workers = await _wait_workers(port, process, servers.env)
        yield port, workers
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, 15)
        try:
            await asyncio.to_thread(process.wait, 30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, 9)
            await asyncio.to_thread(process.wait)
        log.close()


async def _wait_workers(
    port: int, process: subprocess.Popen[bytes], env: dict[str, str]
) -> list[psutil.Process]:
    """Wait until every worker runs and readiness answers 200 repeatedly; the workers."""
    expected = int(env.get("WEB_CONCURRENCY", "1"))
    deadline = time.monotonic() + _READY_TIMEOUT
    while len(workers := psutil.Process(process.pid).children()) < expected:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(workers)} of {expected} workers within {_READY_TIMEOUT:g}s")
        await asyncio.sleep(0.05)  # poll interval: gunicorn forks its workers in turn
    # Each check may reach either worker: several in a row make an unready one unlikely
    # (and `_connect` fails the run if a worker refuses sockets anyway).
    for _ in range(5 * expected):
        await _wait_ready(port, process, env)
    return workers


async def _wait_ready(port: int, process: subprocess.Popen[bytes], env: dict[str, str]) -> None:
    deadline = time.monotonic() + _READY_TIMEOUT
    # The Host the service allows (render.yaml's ALLOWED_HOSTS, as the rehearsal resolves it).
    headers = {"Host": env.get("ALLOWED_HOSTS", "localhost").split(",")[0]}
    async with httpx.AsyncClient(timeout=2.0, headers=headers) as client:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"server on {port} exited with {process.returncode}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get(f"http://127.0.0.1:{port}/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.05)  # poll interval
    raise TimeoutError(f"server on {port} not ready within {_READY_TIMEOUT:g}s")


def _free_port() -> int:
    from devservices import free_port

    return free_port()


class _ClientProcess:
    """One `bench.fanout_client` process and its command pipe."""

    def __init__(self, process: asyncio.subprocess.Process, source_ip: str) -> None:
        self.process = process
        self.source_ip = source_ip

    @classmethod
    async def start(cls, index: int) -> _ClientProcess:
        process = await asyncio.create_subprocess_exec(
            str(PYTHON), "-m", "bench.fanout_client",
            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            preexec_fn=_pin(LOAD_CPU), limit=2**24,
        )  # fmt: skip
        # A source address of its own per process: each has a full ephemeral port range.
        return cls(process, f"127.0.0.{2 + index}")

    async def call(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        line = await self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"client process {self.process.pid} exited")
        answer: dict[str, Any] = json.loads(line)
        return answer

    async def close(self) -> None:
        with contextlib.suppress(RuntimeError, ConnectionError):
            await asyncio.wait_for(self.call({"cmd": "close"}), 10)
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()


async def _call_all(clients: list[_ClientProcess], command: dict[str, Any]) -> list[dict[str, Any]]:
    return list(await asyncio.gather(*(client.call(command) for client in clients)))


# --- measuring ---------------------------------------------------------------


@dataclass(frozen=True)
class _Audience:
    """The connected sockets a step publishes to: the clients, their users, the server's workers."""

    clients: list[_ClientProcess]
    workers: list[psutil.Process]
    redis: Redis
    prefix: str
    users: list[uuid.UUID]
    per_user: int


def _percentile(histogram: dict[int, int], fraction: float) -> float:
    total = sum(histogram.values())
    if not total:
        return float("inf")
    rank = fraction * total
    seen = 0
    for bucket in sorted(histogram):
        seen += histogram[bucket]
        if seen >= rank:
            return (bucket + 1) / _BUCKETS_PER_SECOND
    return float("inf")


async def _publish(
    redis: Redis, prefix: str, users: list[uuid.UUID], rate: float, seconds: float
) -> int:
    """Publish events round-robin over `users` at `rate` per second; how many."""
    job_id = uuid.uuid4()
    tick = 0.01
    loop = asyncio.get_running_loop()
    start = loop.time()
    sent = 0
    while (now := loop.time()) - start < seconds:
        due = int((now - start + tick) * rate) - sent
        batch = []
        for _ in range(max(due, 0)):
            user = users[sent % len(users)]
            event = events.make_event(
                events.JOB_PROGRESS, user_id=user, job_id=job_id, step=sent, sent=time.time()
            )
            batch.append(publisher.apublish_event(redis, event, prefix=prefix))
            sent += 1
        # In chunks: each call in flight holds one of the client's 100 pooled connections.
        for chunk in range(0, len(batch), 50):
            await asyncio.gather(*batch[chunk : chunk + 50])
        await asyncio.sleep(max(0.0, start + (now - start) + tick - loop.time()))
    return sent


async def _step(audience: _Audience, *, rate: float, seconds: float) -> Step:
    clients, workers, per_user = audience.clients, audience.workers, audience.per_user
    await _call_all(clients, {"cmd": "reset"})
    cpu_before = _cpu(workers)
    published = await _publish(
        audience.redis, audience.prefix, audience.users, rate / per_user, seconds
    )
    expected = published * per_user
    deadline = time.monotonic() + 2.0
    while True:
        reports = await _call_all(clients, {"cmd": "report"})
        delivered = sum(report["delivered"] for report in reports)
        if delivered >= expected or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.1)  # poll interval while the last frames arrive
    histogram: dict[int, int] = {}
    for report in reports:
        for bucket, count in report["hist"].items():
            histogram[int(bucket)] = histogram.get(int(bucket), 0) + count
    return Step(
        rate=rate,
        delivered_rate=delivered / seconds,
        expected=expected,
        delivered=delivered,
        p50=_percentile(histogram, 0.50),
        p99=_percentile(histogram, 0.99),
        closed=sum(report["closed"] for report in reports),
        server_cpu=_cpu(workers) - cpu_before,
    )


def _cpu(processes: list[psutil.Process]) -> float:
    return float(sum(p.cpu_times().user + p.cpu_times().system for p in processes))


async def _connect(clients: list[_ClientProcess], port: int, host: str, tokens: list[str]) -> None:
    shares = [tokens[i :: len(clients)] for i in range(len(clients))]
    answers = await asyncio.gather(
        *(
            client.call({"cmd": "connect", "port": port, "source_ip": client.source_ip,
                         "tokens": share, "host": host})
            for client, share in zip(clients, shares, strict=True)
        )
    )  # fmt: skip
    failed = sum(answer["failed"] for answer in answers)
    if failed:
        errors = [error for answer in answers for error in answer["errors"]]
        raise RuntimeError(f"{failed} of {len(tokens)} clients failed to connect: {errors}")
    # A server may accept, greet, then close (1013 when its Redis calls fail): not connected.
    await asyncio.sleep(0.5)
    closed = sum(report["closed_total"] for report in await _call_all(clients, {"cmd": "report"}))
    if closed:
        raise RuntimeError(f"{closed} of {len(tokens)} clients were closed after connecting")


def _rss(workers: list[psutil.Process]) -> int:
    return sum(int(worker.memory_info().rss) for worker in workers)


async def _measure(
    kind: str,
    clients_count: int,
    *,
    ladder: bool,
    profile: Profile,
    servers: Servers,
    redis: Redis,
    prefix: str,
    tokens: dict[uuid.UUID, str],
    log_dir: Path,
) -> Outcome:
    users = list(tokens)
    per_user = clients_count // len(users)
    user_tokens = [tokens[user] for user in users for _ in range(per_user)]
    processes = max(profile.client_processes, clients_count // 2_500)
    host = servers.env.get("ALLOWED_HOSTS", "localhost").split(",")[0]
    async with _server(kind, servers=servers, log_dir=log_dir) as (port, workers):
        clients = [await _ClientProcess.start(i) for i in range(processes)]
        try:
            # Warm up: code paths imported, caches and the Redis pool grown (handshakes
            # use it) before the baseline RSS, so that only per-socket state is counted.
            await _connect(clients, port, host, user_tokens[: min(len(user_tokens), 400)])
            await _call_all(clients, {"cmd": "close"})
            for client in clients:
                await client.process.wait()
            clients = [await _ClientProcess.start(i) for i in range(processes)]
            await asyncio.sleep(1.0)  # let the closed sockets' state go
            before = _rss(workers)
            await _connect(clients, port, host, user_tokens)
            await asyncio.sleep(1.0)  # settle: handshakes' transient allocations freed
            outcome = Outcome(
                kind, clients_count, (_rss(workers) - before) / 1024 / len(user_tokens)
            )
            if ladder:
                audience = _Audience(clients, workers, redis, prefix, users, per_user)
                await _ladder(outcome, audience, profile=profile)
        finally:
            await asyncio.gather(*(client.close() for client in clients))
    return outcome


async def _ladder(outcome: Outcome, audience: _Audience, *, profile: Profile) -> None:
    client_procs = [psutil.Process(client.process.pid) for client in audience.clients]
    cpu_before = sum(proc.cpu_times().user + proc.cpu_times().system for proc in client_procs)
    busy = 0.0
    rate = profile.first_rate
    # Warm-up, not counted: the first events meet cold caches and a cold client.
    await _step(audience, rate=rate, seconds=1.0)
    retried = False
    # A retry does not use up a rung: the ladder ends on a confirmed failure or its top.
    while len(outcome.steps) < profile.max_steps:
        started = time.monotonic()
        step = await _step(audience, rate=rate, seconds=profile.step_seconds)
        busy += time.monotonic() - started
        if not step.passed and not retried:
            # Other work on a shared machine can stall one step: a rate fails only twice.
            retried = True
            print(f"  {outcome.server:8} {rate:>9,.0f}/s failed once; again", flush=True)
            continue
        retried = False
        outcome.steps.append(step)
        print(
            f"  {outcome.server:8} {outcome.clients:>6} clients  asked {rate:>9,.0f}/s  "
            f"delivered {step.delivered_rate:>9,.0f}/s  p50 {step.p50 * 1000:6.1f} ms  "
            f"p99 {step.p99 * 1000:7.1f} ms  closed {step.closed}  "
            f"server {step.cpu_us_per_frame:5.1f} us/frame  {'ok' if step.passed else 'FAIL'}",
            flush=True,
        )
        if not step.passed:
            break
        rate *= profile.growth
    else:
        rate = 0.0  # never failed: the top of the ladder is a lower bound
    # Between the last rate that passed and the first that failed, halve the gap
    # (geometrically) twice, so the result is not just a power of the growth factor.
    passed = [step.rate for step in outcome.steps if step.passed]
    low, high = (max(passed) if passed else 0.0), rate
    for _ in range(REFINE_STEPS if low and high else 0):
        middle = (low * high) ** 0.5
        step = await _step(audience, rate=middle, seconds=profile.step_seconds)
        outcome.steps.append(step)
        print(
            f"  {outcome.server:8} refine {middle:>9,.0f}/s  p99 {step.p99 * 1000:7.1f} ms  "
            f"{'ok' if step.passed else 'FAIL'}",
            flush=True,
        )
        low, high = (middle, high) if step.passed else (low, middle)
    cpu_after = sum(proc.cpu_times().user + proc.cpu_times().system for proc in client_procs)
    outcome.client_cpu = (cpu_after - cpu_before) / busy if busy else 0.0


# --- results -----------------------------------------------------------------


def _rows(
    outcomes: dict[tuple[str, int], Outcome], profile: Profile, workers: int
) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    placement = f"{workers} worker{'s' * (workers != 1)} (render.yaml) pinned to CPU 0"
    for count in profile.ladder_clients:
        ours, base = outcomes[("ours", count)], outcomes[("baseline", count)]
        ratio = ours.best / base.best if base.best else float("inf")
        rows.append({
            "scenario": f"fan-out, {count:,} clients",
            "metric": "highest delivery rate with p99 <= 100 ms",
            "ours": round(ours.best), "baseline": round(base.best), "unit": "events/s",
            "ratio": round(ratio, 2), "target": f">= {RATIO_TARGET}x",
            "met": ratio >= RATIO_TARGET,
            "note": f"{USERS} users, {count // USERS} sockets each; {placement}; "
                    + ("" if ours.saturated else "ours never failed (a lower bound); ")
                    + f"clients used {ours.client_cpu:.2f}/{base.client_cpu:.2f} CPU",
        })  # fmt: skip
    for count in profile.ladder_clients:
        ours, base = outcomes[("ours", count)], outcomes[("baseline", count)]
        ours_cpu, base_cpu = ours.cpu_per_frame, base.cpu_per_frame
        rows.append({
            "scenario": f"fan-out, {count:,} clients",
            "metric": "server CPU per delivered frame (median over steps)",
            "ours": round(ours_cpu, 1), "baseline": round(base_cpu, 1), "unit": "us",
            "ratio": round(base_cpu / ours_cpu, 2) if ours_cpu else None,
            "target": "-", "met": None,
            "note": "user+system time of the workers; steadier than rates on a busy machine",
        })  # fmt: skip
    for (kind, count), outcome in sorted(outcomes.items()):
        if kind != "ours":
            continue
        base = outcomes[("baseline", count)]
        rows.append({
            "scenario": f"fan-out, {count:,} idle clients",
            "metric": "memory per idle connection (workers' RSS)",
            "ours": round(outcome.memory_kib, 1), "baseline": round(base.memory_kib, 1),
            "unit": "KiB", "ratio": round(outcome.memory_kib / base.memory_kib, 2)
            if base.memory_kib > 0 else None,
            "target": f"<= {MEMORY_TARGET_KIB:g} KiB",
            "met": outcome.memory_kib <= MEMORY_TARGET_KIB,
            "note": f"RSS after connecting minus before, / clients; {placement}",
        })  # fmt: skip
    return rows


def _plot(outcomes: dict[tuple[str, int], Outcome], out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    styles = {"ours": "-o", "baseline": "--s"}
    for (kind, count), outcome in sorted(outcomes.items()):
        if not outcome.steps:
            continue
        steps = sorted(outcome.steps, key=lambda step: step.delivered_rate)
        xs = [step.delivered_rate for step in steps]
        ys = [min(step.p99, 5.0) * 1000 for step in steps]
        ax.plot(xs, ys, styles[kind], label=f"{kind}, {count:,} clients")
    ax.axhline(P99_LIMIT * 1000, color="grey", linewidth=1, linestyle=":")
    ax.set_yscale("log")
    ax.set_xlabel("events delivered to sockets per second")
    ax.set_ylabel("p99 publish-to-receive latency (ms)")
    ax.set_title("Realtime fan-out: one instance, as render.yaml starts it")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "fanout.png", dpi=110)
    plt.close(fig)


async def run_fanout(stack: Stack, *, profile: str, out_dir: Path) -> list[dict[str, Any]]:
    """Measure ours against the baseline; write `fanout.png` into `out_dir`; the table rows.

    Both servers run realtime's startCommand with `stack`'s env for it; the
    overrides are printed (and named in the rows' notes).
    """
    chosen = PROFILES[profile]
    out_dir.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (once, before any load)
    _raise_fd_limit()
    affinity, priority = os.sched_getaffinity(0), os.getpriority(os.PRIO_PROCESS, 0)
    _pin(LOAD_CPU)()
    prefix = f"{stack.prefix}fanout-{secrets.token_hex(3)}:"
    servers = Servers.from_stack(stack, prefix)
    print("fan-out: realtime's startCommand and render.yaml env; overrides:", flush=True)
    for key, why in servers.overrides.items():
        print(f"  {key}={why}", flush=True)
    users = [uuid.uuid4() for _ in range(USERS)]
    tokens = dict(zip(users, stack.tokens_for(users), strict=True))
    outcomes: dict[tuple[str, int], Outcome] = {}
    counts = [(count, True) for count in chosen.ladder_clients]
    counts += [(count, False) for count in chosen.memory_clients]
    redis = Redis.from_url(stack.redis_url, socket_timeout=10)
    log_dir = Path(tempfile.mkdtemp(prefix="fanout-logs-"))
    try:
        for count, ladder in counts:
            for kind in ("ours", "baseline"):
                print(f"fan-out: {kind}, {count:,} clients{'' if ladder else ' (memory only)'}",
                      flush=True)  # fmt: skip
                outcomes[(kind, count)] = await _measure(
                    kind, count, ladder=ladder, profile=chosen, servers=servers, redis=redis,
                    prefix=prefix, tokens=tokens, log_dir=log_dir,
                )  # fmt: skip
    finally:
        await redis.aclose()
        os.sched_setaffinity(0, affinity)
        with contextlib.suppress(PermissionError):
            os.setpriority(os.PRIO_PROCESS, 0, priority)
    shutil.rmtree(log_dir, ignore_errors=True)
    _plot(outcomes, out_dir)
    rows = _rows(outcomes, chosen, int(servers.env.get("WEB_CONCURRENCY", "1")))
    named = "; ".join(f"{key}={why}" for key, why in servers.overrides.items())
    for row in rows:
        row["note"] = f"{row['note']}; overrides: {named}"
    return rows


# --- standalone ----------------------------------------------------------------


@contextlib.contextmanager
def _redis_url() -> Any:
    if url := os.environ.get("REDIS_URL"):
        yield url
        return
    from devservices import EmbeddedRedis

    data = Path(tempfile.mkdtemp(prefix="fanout-redis-"))
    server = EmbeddedRedis(data, port=_free_port(), durable=False)
    try:
        yield server.start()
    finally:
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


@contextlib.contextmanager
def standalone_stack(name: str) -> Iterator[Stack]:
    """A Stack for a realtime-only run on its own: `REDIS_URL`'s Redis, else an embedded one.

    Realtime needs no database: the Blueprint's database URL is never read.
    """
    run_dir = Path(tempfile.mkdtemp(prefix=f"{name}-run-"))
    try:
        with _redis_url() as url:
            yield Stack(
                database_url="postgresql://unused@127.0.0.1/unused",
                redis_url=url,
                source="environment" if os.environ.get("REDIS_URL") else "embedded",
                run_dir=run_dir,
                prefix="bench:" if os.environ.get("REDIS_URL") else "",
            )
    finally:
        shutil.rmtree(run_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with standalone_stack("fanout") as stack:
        rows = asyncio.run(run_fanout(stack, profile=args.profile, out_dir=args.out))
    json.dump(rows, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

"""End-to-end latency: POST /v1/jobs sent -> `job.succeeded` received on a WebSocket.

An open-loop asyncio generator (uvloop; wrk cannot wait for a WebSocket
event): send times are fixed in advance at a steady rate and each POST runs as
its own task, so a slow reply never delays the next send. The jobs come from
`e2e_users` users in turn, each with its own socket, under the running cap as
shipped (one job per user at a time: a user's job that arrives while their
previous one runs waits for it). Each client follows the real path: a ticket
from POST /v1/realtime/ticket, then ws /ws?ticket=...
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import websockets

from bench.cpu import delta, group_cpu_seconds
from bench.profiles import Profile
from bench.report import Row, make_row
from bench.scenarios import NOOP_JOB, User
from bench.stack import Web
from common.contracts.events import JOB_SUCCEEDED
from devharness.processes import ManagedProcess

WARMUP_JOBS = 25
FINISH_TIMEOUT = 30.0


class _Run:
    """Send and receive times (perf_counter) by job id; set `done` when all arrived."""

    def __init__(self) -> None:
        self.sent: dict[str, float] = {}
        self.received: dict[str, float] = {}
        self.expected = 0
        # POSTs answered with another status than 202, by status (a 429 is the
        # shipped active-job limit: the stack fell behind), and exchanges broken.
        self.refused: Counter[int] = Counter()
        self.broken = 0
        self.done = asyncio.Event()

    def arrived(self, job_id: str) -> None:
        self.received.setdefault(job_id, time.perf_counter())
        self.check()

    def check(self) -> None:
        """Set `done` once every accepted job's event has arrived."""
        if self.expected and len(self.received.keys() & self.sent.keys()) >= self.expected:
            self.done.set()


async def _read(socket: websockets.ClientConnection, run: _Run) -> None:
    async for raw in socket:
        message = orjson.loads(raw)
        if message.get("type") == JOB_SUCCEEDED and message.get("job_id"):
            run.arrived(str(message["job_id"]))


class _Poster:
    """`POST /v1/jobs` over keep-alive HTTP/1.1 connections, one request per connection at a time.

    The generator shares the machine with what it measures, so its own CPU per
    request must be small: the request's bytes are built once, and a reply is
    read by its Content-Length. (httpx costs several times more per request,
    and its pool scans its queue per request once replies fall behind.) A POST
    never waits for a connection: with none idle, it opens another. A
    connection idle longer than `IDLE_SECONDS` is closed rather than reused
    (the server may be closing it: uvicorn's keep-alive timeout is 5 s).
    """

    IDLE_SECONDS = 2.0

    def __init__(self, url: str, headers: dict[str, str]) -> None:
        parts = urlsplit(url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        body = orjson.dumps(NOOP_JOB)
        lines = ["POST /v1/jobs HTTP/1.1", *(f"{k}: {v}" for k, v in headers.items()),
                 f"Content-Length: {len(body)}"]  # fmt: skip
        self._request = ("\r\n".join(lines) + "\r\n\r\n").encode() + body
        self._idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter, float]] = []
        self._all: list[asyncio.StreamWriter] = []

    async def post(self) -> tuple[int, bytes]:
        """Send one job; (status, body). Raises OSError or ValueError on a broken exchange."""
        reader, writer = await self._connection()
        writer.write(self._request)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        body = await reader.readexactly(length)
        if b"connection: close" in head.lower():
            writer.close()
        else:
            self._idle.append((reader, writer, time.monotonic()))
        return status, body

    async def _connection(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        while self._idle:
            reader, writer, since = self._idle.pop()
            if time.monotonic() - since < self.IDLE_SECONDS and not reader.at_eof():
                return reader, writer
            writer.close()
        reader, writer = await asyncio.open_connection(*self._address)
        self._all.append(writer)
        return reader, writer

    async def aclose(self) -> None:
        for writer in self._all:
            writer.close()
        self._idle.clear()


async def _post(poster: _Poster, run: _Run) -> None:
    started = time.perf_counter()
    try:
        status, body = await poster.post()
    except (OSError, ValueError, asyncio.IncompleteReadError):
        run.broken += 1
        return
    if status != 202:
        run.refused[status] += 1
        return
    run.sent[orjson.loads(body)["id"]] = started
    run.check()


async def _open_loop(posters: list[_Poster], run: _Run, *, count: int, rate: float) -> None:
    """Start `count` POSTs at fixed times `rate` per second apart, the users in turn."""
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    tasks = []
    for index in range(count):
        delay = start + index / rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(_post(posters[index % len(posters)], run)))
    await asyncio.gather(*tasks)


class _Readers:
    """One task per socket, each recording `job.succeeded` into the current run."""

    def __init__(self, sockets: list[websockets.ClientConnection]) -> None:
        self._sockets = sockets
        self._tasks: list[asyncio.Task[None]] = []

    def record_into(self, run: _Run) -> None:
        self.stop()
        self._tasks = [asyncio.create_task(_read(socket, run)) for socket in self._sockets]

    def stop(self) -> None:
        for task in self._tasks:
            task.cancel()


@contextlib.contextmanager
def _own_core() -> Iterator[None]:
    """Pin this process (the generator) to the last core while it runs, then unpin."""
    before = os.sched_getaffinity(0)
    cores = sorted(before)
    if len(cores) > 1:
        os.sched_setaffinity(0, {cores[-1]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def _percentile(values: list[float], fraction: float) -> float:
    ranked = sorted(values)
    return ranked[min(len(ranked) - 1, int(fraction * len(ranked)))]


def _ws_connect(realtime: Web, ticket: str) -> websockets.connect:
    """Connect to `realtime` over loopback, naming its Host as a client would."""
    port = urlsplit(realtime.url).port
    url = f"ws://{realtime.host}:{port}/ws?ticket={ticket}"
    return websockets.connect(url, host="127.0.0.1", port=port, open_timeout=10)


async def end_to_end(
    api: Web,
    realtime: Web,
    users: Sequence[User],
    profile: Profile,
    processes: Sequence[ManagedProcess] = (),
) -> tuple[list[Row], dict[str, Any]]:
    """Drive a steady rate of no-op jobs for the profile's duration; the latency rows.

    With the services' `processes`, the rows also say how much CPU each service
    spent per job in that time (their process groups, workers included): on a
    busy machine that figure holds still while the latencies do not.
    """
    groups = {process.pgid: process.name for process in processes}
    headers = [
        {"Authorization": f"Bearer {user.token}", "Content-Type": "application/json"}
        for user in users
    ]
    posters = [_Poster(api.url, {**api.headers, **auth}) for auth in headers]
    async with contextlib.AsyncExitStack() as stack:
        async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=30) as client:
            tickets = [await client.post("/v1/realtime/ticket", headers=auth) for auth in headers]
        sockets = []
        for ticket in tickets:
            ticket.raise_for_status()
            socket = await stack.enter_async_context(_ws_connect(realtime, ticket.json()["ticket"]))
            hello = orjson.loads(await asyncio.wait_for(socket.recv(), 10))
            assert hello.get("type") == "hello", hello
            sockets.append(socket)
        readers = _Readers(sockets)
        stack.callback(readers.stop)
        warmup, run = _Run(), _Run()
        readers.record_into(warmup)
        await _open_loop(posters, warmup, count=WARMUP_JOBS, rate=profile.e2e_rate)
        warmup.expected = len(warmup.sent)
        warmup.check()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(warmup.done.wait(), FINISH_TIMEOUT)
        readers.record_into(run)
        count = int(profile.e2e_seconds * profile.e2e_rate)
        before = group_cpu_seconds(groups)
        with _own_core():
            await _open_loop(posters, run, count=count, rate=profile.e2e_rate)
            run.expected = len(run.sent)
            run.check()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(run.done.wait(), FINISH_TIMEOUT)
        used = delta(before, group_cpu_seconds(groups))
    for poster in posters:
        await poster.aclose()
    return _rows(run, profile, count, used)


def _rows(
    run: _Run, profile: Profile, count: int, used: dict[str, float]
) -> tuple[list[Row], dict[str, Any]]:
    latencies = [
        (run.received[job] - sent) * 1000 for job, sent in run.sent.items() if job in run.received
    ]
    lost = count - len(latencies)
    # Of those: accepted (202) but no `job.succeeded` seen, refused, broken.
    unseen = len(run.sent) - len(latencies)
    why = [f"{unseen} accepted and not seen to succeed"] if unseen else []
    why += [f"{n} answered {status}" for status, n in sorted(run.refused.items())]
    why += [f"{run.broken} exchanges broken"] if run.broken else []
    reasons = f" ({', '.join(why)})" if why else ""
    done = len(latencies) or 1
    cpu_per_job = {name: seconds * 1000 / done for name, seconds in sorted(used.items())}
    note = (
        f"{count} no-op jobs at {profile.e2e_rate:g}/s from {profile.e2e_users} users, "
        "open loop, running cap as shipped; "
        f"p90 {_percentile(latencies, 0.9):.1f} ms, max {max(latencies):.1f} ms, "
        f"mean {statistics.fmean(latencies):.1f} ms; not completed {lost}{reasons}"
        + "".join(f"; {name} CPU {ms:.2f} ms/job" for name, ms in cpu_per_job.items())
        if latencies
        else f"no job completed of {count}{reasons}"
    )
    valid = bool(latencies) and lost == 0
    rows = [
        make_row(
            "End-to-end latency",
            f"POST -> job.succeeded on WS, {name}",
            ours=_percentile(latencies, fraction) if latencies else float("inf"),
            baseline=None,
            unit="ms",
            target=limit,
            higher_is_better=False,
            note=note if name == "p50" else "",
            valid=valid,
        )
        for name, fraction, limit in (("p50", 0.5, 25.0), ("p99", 0.99, 100.0))
    ]
    detail = {
        "rate": profile.e2e_rate,
        "users": profile.e2e_users,
        "latencies_ms": [round(v, 3) for v in latencies],
    }
    return rows, detail

"""A rolling deploy of the API and realtime behind a load balancer, under load, loses nothing.

Clients reach both services through `tests.fixtures.balancer` (health checks on
`/health/ready`, new connections to ready backends only), as on a platform.
Each service is replaced the way a rolling deploy does it: start the new
gunicorn on a new port, wait until the balancer sees it ready, SIGTERM the
old one, which drains (readiness 503 for SHUTDOWN_DRAIN_SECONDS while it still
serves) and then stops gracefully. HTTP clients keep their keep-alive
connections and, like a browser or a proxy, retry once a request that got no
response head, which they only send when it is safe to repeat (GET, or POST
with an Idempotency-Key). WebSocket clients reconnect after a close, once
their user's stream has moved on, and resume from their last event id; at the
end each must hold exactly its user's stream.
"""

from __future__ import annotations

import asyncio
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
import pytest
import websockets

from common.contracts.events import STREAM_MAXLEN
from devharness.polling import eventually
from devharness.realtime import Listener, listen, ws_url
from tests.fixtures.balancer import Backend, Balancer
from tests.fixtures.jobs import EventTap, JobsUser
from tests.fixtures.realtime import Realtime, RealtimeFactory
from tests.fixtures.servers import Server, ServerFactory
from tests.fixtures.workers import JobsStack, StackFactory

pytestmark = pytest.mark.system

DRAIN_SECONDS = "1"
USERS = 3
HTTP_CLIENTS_PER_USER = 4
WATCHERS_PER_USER = 2
# Each HTTP client posts a job at most this often: bounded work, and each
# user's stream stays well under its cap (about 1,000 events).
POST_INTERVAL = 2.0
COUNTDOWN = {"steps": 1, "interval": 0}
# The per-user quota (429 beyond it) is not under test: a worker slowed by a
# busy machine must not turn a backlog into failed requests.
MAX_ACTIVE_JOBS = "1000"
REQUESTS_PER_PHASE = 60
STEP_TIMEOUT = 30.0
RECONNECT_BACKOFF = 0.05
# POST answers 200 only when a retry replays an Idempotency-Key the first attempt used.
EXPECTED_STATUS = {
    "GET /health/live": {200},
    "GET /v1/jobs/{id}": {200},
    "POST /v1/jobs": {200, 202},
}


@dataclass
class HttpTally:
    """What the HTTP clients saw: statuses by route, retries, failures, jobs posted."""

    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    retries: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    jobs: dict[str, list[str]] = field(default_factory=dict)  # user id -> job ids
    ok: int = 0

    def record(self, route: str, response: httpx.Response) -> None:
        self.statuses[route, response.status_code] += 1
        if response.status_code in EXPECTED_STATUS[route]:
            self.ok += 1
        else:
            self.failures.append(f"{route}: {response.status_code} {response.text[:200]}")


async def _request(
    client: httpx.AsyncClient, tally: HttpTally, route: str, method: str, url: str, **kwargs: Any
) -> httpx.Response | None:
    """Send a request that is safe to repeat; retry it once if no response head came back.

    That happens when the old backend closes an idle keep-alive connection as
    the request goes out on it; httpx then opens a fresh one, which the
    balancer sends to a ready backend.
    """
    for attempt in (1, 2):
        got_head = False

        async def trace(event: str, info: dict[str, Any]) -> None:
            nonlocal got_head
            if event == "http11.receive_response_headers.complete":
                got_head = True

        try:
            response = await client.request(method, url, extensions={"trace": trace}, **kwargs)
        except httpx.TransportError as exc:
            if attempt == 1 and not got_head:
                tally.retries.append(f"{route}: {type(exc).__name__}")
                continue
            tally.failures.append(f"{route} (attempt {attempt}): {exc!r}")
            return None
        tally.record(route, response)
        return response
    raise AssertionError("unreachable")


async def _http_client(
    base_url: str, user: JobsUser, *, stop: asyncio.Event, tally: HttpTally
) -> None:
    """A keep-alive client: a job post every POST_INTERVAL, reads of its jobs and liveness."""
    mine = tally.jobs.setdefault(user.id, [])
    async with httpx.AsyncClient(base_url=base_url, headers=user.headers, timeout=10.0) as client:
        next_post = 0.0
        turn = 0
        while not stop.is_set():
            turn += 1
            if time.monotonic() >= next_post:
                next_post = time.monotonic() + POST_INTERVAL
                headers = {"Idempotency-Key": uuid.uuid4().hex}
                body = {"kind": "demo.countdown", "params": COUNTDOWN}
                route = "POST /v1/jobs"
                response = await _request(
                    client, tally, route, "POST", "/v1/jobs", json=body, headers=headers
                )
                if response is not None and response.status_code in {200, 202}:
                    mine.append(response.json()["id"])
            elif mine and turn % 2:
                job_id = mine[turn % len(mine)]
                await _request(client, tally, "GET /v1/jobs/{id}", "GET", f"/v1/jobs/{job_id}")
            else:
                await _request(client, tally, "GET /health/live", "GET", "/health/live")


@dataclass
class Watcher:
    """A WebSocket client that reconnects after every close, resuming from its last event."""

    url: str
    user: JobsUser
    tap: EventTap
    listeners: list[Listener] = field(default_factory=list)
    refusals: list[str] = field(default_factory=list)
    missed: int = 0  # events published while it was away, which the resume must replay

    @property
    def event_ids(self) -> list[str]:
        return [event_id for listener in self.listeners for event_id in listener.event_ids]

    @property
    def current(self) -> Listener | None:
        """The open connection, if there is one."""
        if self.listeners and not self.listeners[-1].is_closed:
            return self.listeners[-1]
        return None

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            ids = self.event_ids
            query = {"last_event_id": ids[-1]} if ids else {}
            try:
                listener = await listen(ws_url(self.url, **query), token=self.user.access_token)
            except (websockets.ConnectionClosed, websockets.InvalidHandshake, OSError) as exc:
                # Refused (a draining server closes with 1012 before its hello)
                # or cut by the balancer: try again, as a client's backoff does.
                self.refusals.append(repr(exc))
                await asyncio.sleep(RECONNECT_BACKOFF)
                continue
            self.listeners.append(listener)
            await listener.wait_until(
                lambda item: item.is_closed or stop.is_set(), within=120, what="close or stop"
            )
            if not stop.is_set() and listener.event_ids:
                await self._stay_away_until_missing_events()

    async def _stay_away_until_missing_events(self) -> None:
        # A reconnect within milliseconds rarely misses anything, which would
        # let a resume that replays nothing pass. Like a client whose backoff
        # outlasts a few events, come back only once the stream has moved on.
        last = self.event_ids[-1]

        async def missed() -> int:
            ids = [event["id"] for event in await self.tap.stream()]
            return len(ids) - 1 - ids.index(last)

        self.missed += await eventually(missed, within=STEP_TIMEOUT, interval=0.05)

    async def close(self) -> None:
        if self.current is not None:
            await self.current.close()


async def _until(predicate: Callable[[], bool], *, what: str) -> None:
    async def probe() -> bool:
        return predicate()

    try:
        await eventually(probe, within=STEP_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(f"{what}: not within {STEP_TIMEOUT:g}s") from None


S = TypeVar("S", bound=Server)


@dataclass
class Roll:
    """One service's replacement: the new server and when each step was reached."""

    server: Server
    backend: Backend
    steps: dict[str, float]

    def timeline(self) -> str:
        return ", ".join(f"{name} {at:.1f} s" for name, at in self.steps.items())


async def _roll(
    balancer: Balancer, old: Backend, old_server: S, start_new: Callable[[], Awaitable[S]]
) -> tuple[S, Roll]:
    """Start the new server, wait until the balancer routes to it, then SIGTERM the old one."""
    began = time.monotonic()
    steps: dict[str, float] = {}
    new_server = await start_new()
    new = balancer.add(new_server.port)
    await balancer.wait_until(new, is_ready=True, within=STEP_TIMEOUT)
    steps["new routed"] = time.monotonic() - began
    old_server.process.send_signal(signal.SIGTERM)
    await balancer.wait_until(old, is_ready=False, within=STEP_TIMEOUT)
    steps["old unrouted"] = time.monotonic() - began
    assert await old_server.wait_exit(STEP_TIMEOUT) == 0, "the old server stops gracefully"
    steps["old exited"] = time.monotonic() - began
    await balancer.remove(old)
    return new_server, Roll(new_server, new, steps)


async def _wait_for_events(stack: JobsStack, tally: HttpTally, watchers: list[Watcher]) -> int:
    """Wait until every posted job succeeded and every watcher saw its user's last event."""
    users = {watcher.user.id: watcher.user for watcher in watchers}
    streams: dict[str, list[dict[str, Any]]] = {}

    async def all_succeeded() -> bool:
        for user_id, user in users.items():
            streams[user_id] = await stack.tap(user).stream()
            done = {e["job_id"] for e in streams[user_id] if e["type"] == "job.succeeded"}
            if not done >= set(tally.jobs.get(user_id, [])):
                return False
        return True

    await eventually(all_succeeded, within=STEP_TIMEOUT, interval=0.1)
    await _until(
        lambda: all(
            watcher.event_ids[-1:] == [streams[watcher.user.id][-1]["id"]] for watcher in watchers
        ),
        what="every watcher has its user's last event",
    )
    for watcher in watchers:
        stream_ids = [event["id"] for event in streams[watcher.user.id]]
        # A trimmed stream would make the comparison below meaningless.
        assert len(stream_ids) < STREAM_MAXLEN * 0.9, "load too long for the stream cap"
        received = watcher.event_ids
        assert len(set(received)) == len(received), "no event twice"
        assert received == stream_ids, "every event of the user's stream, in order"
    return sum(len(watcher.event_ids) for watcher in watchers)


class TestRollingDeploy:
    """Replacing the API and realtime processes behind the balancer fails no client."""

    async def test_no_failed_request_and_no_lost_event_across_both_restarts(
        self,
        stack_factory: StackFactory,
        server_factory: ServerFactory,
        realtime_factory: RealtimeFactory,
    ) -> None:
        stack = await stack_factory()
        drain = {"SHUTDOWN_DRAIN_SECONDS": DRAIN_SECONDS}

        async def start_api() -> Server:
            return await server_factory(
                REDIS_KEY_PREFIX=stack.prefix, JOBS_MAX_ACTIVE_PER_USER=MAX_ACTIVE_JOBS, **drain
            )

        async def start_realtime() -> Realtime:
            return await realtime_factory(prefix=stack.prefix, **drain)

        old_api, old_realtime, _ = await asyncio.gather(
            start_api(), start_realtime(), stack.start_worker()
        )
        users = [await stack.new_user() for _ in range(USERS)]
        api_balancer = await Balancer().start()
        realtime_balancer = await Balancer().start()
        stop = asyncio.Event()
        tally = HttpTally()
        watchers = [
            Watcher(f"ws://127.0.0.1:{realtime_balancer.port}/ws", user, stack.tap(user))
            for user in users
            for _ in range(WATCHERS_PER_USER)
        ]
        tasks: list[asyncio.Task[None]] = []
        try:
            old_api_backend = api_balancer.add(old_api.port)
            old_realtime_backend = realtime_balancer.add(old_realtime.port)
            await api_balancer.wait_until(old_api_backend, is_ready=True, within=STEP_TIMEOUT)
            await realtime_balancer.wait_until(
                old_realtime_backend, is_ready=True, within=STEP_TIMEOUT
            )
            tasks += [asyncio.create_task(watcher.run(stop)) for watcher in watchers]
            # Every watcher listens before the first job, so it must see all of its events.
            await _until(
                lambda: all(watcher.current is not None for watcher in watchers),
                what="every watcher connected",
            )
            api_url = f"http://127.0.0.1:{api_balancer.port}"
            tasks += [
                asyncio.create_task(_http_client(api_url, user, stop=stop, tally=tally))
                for user in users
                for _ in range(HTTP_CLIENTS_PER_USER)
            ]
            started = time.monotonic()
            await _until(lambda: tally.ok >= REQUESTS_PER_PHASE, what="load before the deploy")

            # A watcher with no event yet would resume from nothing and could miss some.
            await _until(
                lambda: all(watcher.event_ids for watcher in watchers),
                what="an event for every watcher",
            )
            # Both services at once, as a platform deploys a change to both.
            (new_api, api_roll), (new_realtime, realtime_roll) = await asyncio.gather(
                _roll(api_balancer, old_api_backend, old_api, start_api),
                _roll(realtime_balancer, old_realtime_backend, old_realtime, start_realtime),
            )
            await _until(
                lambda: all(watcher.current is not None for watcher in watchers),
                what="every watcher reconnected",
            )
            after_rolls = tally.ok
            await _until(
                lambda: tally.ok >= after_rolls + REQUESTS_PER_PHASE, what="load after the deploy"
            )
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), timeout=STEP_TIMEOUT)
            stopped = time.monotonic()
            events_checked = await _wait_for_events(stack, tally, watchers)
            settle_seconds = time.monotonic() - stopped
        finally:
            stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for watcher in watchers:
                await watcher.close()
            await api_balancer.close()
            await realtime_balancer.close()

        jobs = sum(len(ids) for ids in tally.jobs.values())
        first_closes = Counter(watcher.listeners[0].close_code for watcher in watchers)
        reconnects = sum(len(watcher.listeners) - 1 for watcher in watchers)
        new_sockets = new_realtime.socket_pids()
        statuses = ", ".join(f"{r} {c}: {n}" for (r, c), n in sorted(tally.statuses.items()))
        print(
            f"\nrolling deploy under load ({stopped - started:.1f} s of load):"
            f"\n  HTTP: {tally.statuses.total()} responses ({statuses}); "
            f"failures {len(tally.failures)}; retried once {len(tally.retries)} "
            f"{dict(Counter(tally.retries))}"
            f"\n  API roll: {api_roll.timeline()}; realtime roll: {realtime_roll.timeline()}"
            f"\n  jobs posted {jobs}; new API took {api_roll.backend.connections} connections; "
            f"balancer unrouted {api_balancer.unrouted}, refused {api_balancer.refused.total()}"
            f"\n  WebSocket: {len(watchers)} clients, first close codes {dict(first_closes)}, "
            f"reconnects {reconnects} (refused and retried "
            f"{sum(len(watcher.refusals) for watcher in watchers)}), each after events it "
            f"missed ({sum(watcher.missed for watcher in watchers)} in all); "
            f"events checked against the streams {events_checked} "
            f"(all delivered {settle_seconds:.1f} s after the load stopped)"
        )
        assert tally.failures == [], tally.failures
        assert all(status < 500 for _, status in tally.statuses)
        assert {route for route, _ in tally.statuses} == set(EXPECTED_STATUS)
        assert api_roll.backend.connections > 0
        assert new_api.pid != old_api.pid
        assert jobs > 0
        # Every socket was closed by the old realtime with 1012 and came back on the new one.
        assert first_closes == {1012: len(watchers)}
        assert all(len(watcher.listeners) >= 2 for watcher in watchers)
        # ... and each resume had events to replay, which arrived (the stream check above).
        assert all(watcher.missed >= len(watcher.listeners) - 1 for watcher in watchers)
        assert all(
            watcher.listeners[-1].hello["connection_id"] in new_sockets for watcher in watchers
        )

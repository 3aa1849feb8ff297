"""The cluster (`make cluster`, scripts/cluster.py): several hosts of every service behind HAProxy.

One cluster per module, on its own subnet and namespace names (`clt-*`), so a
developer's `make cluster` is left alone: 3 API, 2 realtime and 3 worker hosts,
a scheduler host running render.yaml's cron command, a data host, HAProxy.
Every request and socket goes through HAProxy, as it would through Render's
balancer; faults are done to hosts (every process on one SIGKILLed, its
network cut), never to single processes. Taking the cluster down is checked
too: no namespace, link or process may be left.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shlex
import shutil
import signal
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import psycopg
import pytest
import websockets
from redis.asyncio import Redis

from common.contracts.events import user_stream
from devharness.polling import eventually
from devharness.processes import environment_without, json_records
from devharness.realtime import listen
from devharness.services import ROOT
from scripts import blueprint
from scripts import cluster as clusters
from scripts.cluster import Cluster, Host
from tests.fixtures.jobs import JobsUser

HAPROXY = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")
pytestmark = [
    pytest.mark.system,
    pytest.mark.skipif(
        HAPROXY is None, reason="haproxy is not installed (apt-get install haproxy)"
    ),
]
NAMESPACES = clusters.can_use_namespaces()
needs_namespaces = pytest.mark.skipif(
    not NAMESPACES, reason="cutting a host's network needs network namespaces (run as root)"
)
NAME = "clt"
SUBNET = 214
PASSWORD = "correct horse battery staple"
# A short cron period: the lease sweep and relay run every 2 s here (Render: every minute).
CRON_SECONDS = 2.0
JOB_TIMEOUT = 60.0
# A job of 5 s: long enough to be cut short, short enough to rerun quickly.
LONG_JOB = {"steps": 20, "interval": 0.25}


def _make(target: str) -> subprocess.CompletedProcess[str]:
    env = environment_without()
    env.update(
        CLUSTER_NAME=NAME, CLUSTER_SUBNET=str(SUBNET), CLUSTER_CRON_SECONDS=f"{CRON_SECONDS:g}"
    )
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """`make cluster` for the module; `make cluster-down` after it, with nothing left behind."""
    if clusters.leftovers(NAME) or Cluster.load(NAME) is not None:
        clusters.down(NAME, say=lambda _: None)  # a crashed run's remains
    started = _make("cluster")
    assert started.returncode == 0, started.stdout + started.stderr
    assert f"cluster {NAME} up" in started.stdout
    loaded = Cluster.load(NAME)
    assert loaded is not None
    try:
        yield loaded
    finally:
        stopped = _make("cluster-down")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert f"cluster {NAME} down, nothing left" in stopped.stdout
        assert clusters.leftovers(NAME) == []


def edge(cluster: Cluster, address: str | None = None) -> httpx.AsyncClient:
    """A client of the edge (HAProxy), connecting from `address` (a client machine's)."""
    transport = httpx.AsyncHTTPTransport(local_address=address or cluster.client_address)
    return httpx.AsyncClient(base_url=cluster.edge_url, transport=transport, timeout=30.0)


_ADDRESSES = itertools.count()


async def new_user(cluster: Cluster, client: httpx.AsyncClient) -> JobsUser:
    """A registered user calling through `client`; registered from an address of its own, so
    that registering many stays within the per-address `auth` limit."""
    pool = cluster.client_pool_addresses()
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    async with edge(cluster, pool[next(_ADDRESSES) % len(pool)]) as registrar:
        registered = await registrar.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert registered.status_code == 201, registered.text
        token = await registrar.post(
            "/v1/auth/token", data={"username": email, "password": PASSWORD}
        )
        assert token.status_code == 200, token.text
    return JobsUser(client, registered.json()["id"], token.json()["access_token"])


async def new_users(cluster: Cluster, client: httpx.AsyncClient, count: int) -> list[JobsUser]:
    return list(await asyncio.gather(*(new_user(cluster, client) for _ in range(count))))


@contextlib.asynccontextmanager
async def data_redis(cluster: Cluster) -> AsyncIterator[Redis]:
    redis = Redis.from_url(cluster.redis_url, socket_timeout=10)
    try:
        yield redis
    finally:
        await redis.aclose()


@contextlib.asynccontextmanager
async def edge_user(cluster: Cluster) -> AsyncIterator[tuple[JobsUser, Redis]]:
    """A new user calling through the edge, and a client of the cluster's Redis."""
    async with edge(cluster) as client, data_redis(cluster) as redis:
        yield await new_user(cluster, client), redis


async def stream(redis: Redis, user_id: str) -> list[dict[str, Any]]:
    """The user's event stream, oldest first, each event with its stream id."""
    entries = cast(
        "list[tuple[bytes, dict[bytes, bytes]]]", await redis.xrange(user_stream("", user_id))
    )
    result = []
    for entry_id, fields in entries:
        event = json.loads(fields[b"event"])
        event["id"] = entry_id.decode()
        result.append(event)
    return result


def succeeded_counts(events: list[dict[str, Any]]) -> Counter[str]:
    return Counter(e["job_id"] for e in events if e["type"] == "job.succeeded")


async def run_jobs(
    user: JobsUser, redis: Redis, count: int, params: dict[str, Any], *, window: int = 10
) -> list[str]:
    """Post `count` demo.countdown jobs, at most `window` unfinished at a time (the per-user
    active-job limit is 20); their ids once every one has succeeded."""
    ids: list[str] = []
    while len(ids) < count:
        batch = [
            (await user.post_job("demo.countdown", params))["id"]
            for _ in range(min(window, count - len(ids)))
        ]
        ids += batch

        async def done(batch: list[str] = batch) -> bool:
            counts = succeeded_counts(await stream(redis, user.id))
            return all(counts[job_id] for job_id in batch)

        await eventually(done, within=JOB_TIMEOUT, interval=0.2)
    return ids


def claims(cluster: Cluster, job_ids: list[str]) -> dict[str, list[str]]:
    """For each worker host, the jobs (of `job_ids`) it claimed, from its log, once per claim."""
    wanted = set(job_ids)
    found: dict[str, list[str]] = {}
    for host in cluster.role("worker"):
        found[host.name] = []
        for line in cluster.log_path(host).read_text(errors="replace").splitlines():
            if " claimed (" not in line or not line.startswith("{"):
                continue
            message = json.loads(line).get("message", "")
            job_id = message.split()[1] if message.startswith("job ") else ""
            if job_id in wanted:
                found[host.name].append(job_id)
    return found


def established(cluster: Cluster, host: Host) -> int:
    """TCP connections established to `host`'s service port (from HAProxy)."""
    out = cluster.run(host, ["ss", "-Htn", "state", "established", f"( sport = :{host.port} )"])
    return len(out.splitlines())


class TestTopology:
    async def test_haproxy_checks_every_host_and_spreads_requests_round_robin(
        self, cluster: Cluster
    ) -> None:
        assert clusters.backend_status(cluster) == dict.fromkeys(
            ["api1", "api2", "api3", "realtime1", "realtime2"], "UP"
        )
        marker = uuid.uuid4().hex
        async with edge(cluster) as client:
            for _ in range(6):
                # A path no API has: every host logs its 404 (health checks go unlogged).
                answer = await client.get(f"/v1/{marker}")
                assert answer.status_code == 404

        def logged() -> dict[str, int]:
            hosts = cluster.role("api")
            return {
                host.name: sum(
                    record.get("path") == f"/v1/{marker}"
                    for record in json_records(cluster.log_path(host).read_text())
                )
                for host in hosts
            }

        async def two_each() -> bool:
            # A host writes its access line after answering: await the last one.
            return set(logged().values()) == {2}

        with contextlib.suppress(TimeoutError):
            await eventually(two_each, within=5)
        assert logged() == {"api1": 2, "api2": 2, "api3": 2}


class TestRealtimeAcrossHosts:
    """Sockets of one user on both realtime hosts each get every event, once and in order."""

    async def test_40_sockets_of_one_user_on_both_hosts_get_every_event_once_in_order(
        self, cluster: Cluster
    ) -> None:
        async with edge_user(cluster) as (user, redis):
            listeners = [
                await listen(cluster.edge_ws_url, token=user.access_token) for _ in range(40)
            ]
            try:
                # HAProxy spread them: both realtime hosts hold sockets.
                for host in cluster.role("realtime"):
                    assert established(cluster, host) >= 10, host.name
                job_ids = await run_jobs(user, redis, 50, {"steps": 2, "interval": 0})
                expected = [event["id"] for event in await stream(redis, user.id)]
                assert len(succeeded_counts(await stream(redis, user.id))) == 50
                for listener in listeners:
                    await listener.wait_events(len(expected), within=30)
                for listener in listeners:
                    assert listener.event_ids == expected
                assert {e["job_id"] for e in listeners[0].events if "job_id" in e} == set(job_ids)
            finally:
                await asyncio.gather(*(listener.close() for listener in listeners))


class TestWorkersShareTheQueue:
    async def test_every_job_succeeds_exactly_once_and_each_host_runs_some(
        self, cluster: Cluster
    ) -> None:
        async with edge(cluster) as client, data_redis(cluster) as redis:
            users = await new_users(cluster, client, 12)
            owners = await post_spread(users * 3, {"steps": 2, "interval": 0.2})
            job_ids = list(owners)
            await eventually(lambda: all_succeeded(redis, users, job_ids), within=JOB_TIMEOUT)
            counts = await success_counts(redis, users)
            assert {job_id: counts[job_id] for job_id in job_ids} == dict.fromkeys(job_ids, 1)
            by_host = claims(cluster, job_ids)
            assert sorted(j for jobs in by_host.values() for j in jobs) == sorted(job_ids)
            assert all(by_host.values()), {host: len(jobs) for host, jobs in by_host.items()}


class TestRateLimitAcrossApiHosts:
    LIMIT = 20  # render.yaml's `auth` policy: RATE_LIMIT_AUTH unset, the shipped 20/minute

    async def _fire(self, cluster: Cluster, address: str, count: int) -> Counter[int]:
        async with edge(cluster, address) as client:

            async def one(index: int) -> int:
                # A client may write its own X-Forwarded-For; HAProxy appends the real one.
                forged = {"X-Forwarded-For": f"198.51.100.{index % 250}"}
                answer = await client.post(
                    "/v1/auth/refresh", json={"refresh_token": "x" * 40}, headers=forged
                )
                return answer.status_code

            return Counter(await asyncio.gather(*(one(i) for i in range(count))))

    async def test_a_limit_of_n_admits_exactly_n_per_real_client_address(
        self, cluster: Cluster
    ) -> None:
        first, second = cluster.extra_client_addresses()[:2]
        statuses = await self._fire(cluster, first, 3 * self.LIMIT)
        assert statuses[429] == 2 * self.LIMIT, statuses
        assert sum(statuses.values()) - statuses[429] == self.LIMIT, statuses
        assert set(statuses) <= {401, 422, 429}, statuses
        # Another client address has a whole allowance of its own: the key is the
        # address HAProxy saw, neither HAProxy's own nor the forged header.
        statuses = await self._fire(cluster, second, 3 * self.LIMIT)
        assert statuses[429] == 2 * self.LIMIT, statuses
        # ...and its requests were spread over the three API hosts, which share the count.
        for host in cluster.role("api"):
            records = json_records(cluster.log_path(host).read_text())
            assert any(record.get("client") == second for record in records), host.name


def worker_log_after(cluster: Cluster, host: Host, since: int) -> str:
    with cluster.log_path(host).open("rb") as log:
        log.seek(since)
        return log.read().decode(errors="replace")


async def post_jobs(user: JobsUser, count: int, params: dict[str, Any]) -> list[str]:
    return [(await user.post_job("demo.countdown", params))["id"] for _ in range(count)]


async def all_succeeded_once(redis: Redis, user_id: str, job_ids: list[str]) -> bool:
    counts = succeeded_counts(await stream(redis, user_id))
    return all(counts[job_id] for job_id in job_ids)


async def post_spread(users: list[JobsUser], params: dict[str, Any]) -> dict[str, JobsUser]:
    """One demo.countdown job per entry of `users` (a user listed twice posts two), at once;
    each job's owner by job id. Jobs of many users: a per-user limit never serialises them."""
    posted = await asyncio.gather(*(user.post_job("demo.countdown", params) for user in users))
    return {job["id"]: user for job, user in zip(posted, users, strict=True)}


async def success_counts(redis: Redis, users: list[JobsUser]) -> Counter[str]:
    """`job.succeeded` events by job, over the users' streams."""
    counts: Counter[str] = Counter()
    for user in {user.id: user for user in users}.values():
        counts.update(succeeded_counts(await stream(redis, user.id)))
    return counts


async def all_succeeded(redis: Redis, users: list[JobsUser], job_ids: list[str]) -> bool:
    counts = await success_counts(redis, users)
    return all(counts[job_id] for job_id in job_ids)


def run_ended(cluster: Cluster, host: Host, since: int, job_id: str) -> bool:
    """Whether `host`'s worker logged the end of its run of `job_id` after byte `since` of
    its log (`job … <how> (kind, attempt n) in … ms`): over, whatever it wrote."""
    for line in worker_log_after(cluster, host, since).splitlines():
        if f'"job {job_id} ' in line and ") in " in line:
            return True
    return False


async def first_claim(cluster: Cluster, job_ids: list[str]) -> tuple[Host, list[str]]:
    """The first worker host seen holding some of `job_ids`, and those jobs."""

    async def probe() -> tuple[Host, list[str]] | None:
        for name, jobs in claims(cluster, job_ids).items():
            if jobs:
                return cluster.host(name), jobs
        return None

    return await eventually(probe, within=JOB_TIMEOUT)


def claimed_elsewhere(cluster: Cluster, job_ids: list[str], host: Host) -> set[str]:
    """The jobs (of `job_ids`) that a worker host other than `host` has claimed."""
    return {
        job_id
        for name, jobs in claims(cluster, job_ids).items()
        if name != host.name
        for job_id in jobs
    }


async def long_jobs_claimed(
    cluster: Cluster, client: httpx.AsyncClient
) -> tuple[list[JobsUser], list[str], tuple[Host, list[str]]]:
    """Six users with a long job each, posted at once; the first worker host seen holding
    some of them, and those jobs."""
    users = await new_users(cluster, client, 6)
    job_ids = list(await post_spread(users, LONG_JOB))
    return users, job_ids, await first_claim(cluster, job_ids)


class TestWorkerHostFaults:
    # The cluster's lease (JOB_LEASE_SECONDS) and sweep period bound how soon a lost job reruns.
    LEASE = float(clusters.OVERRIDES["JOB_LEASE_SECONDS"][0])

    async def test_sigkill_of_every_process_on_a_worker_host_reruns_its_jobs_once(
        self, cluster: Cluster
    ) -> None:
        async with edge(cluster) as client, data_redis(cluster) as redis:
            users, job_ids, (victim, lost) = await long_jobs_claimed(cluster, client)
            assert cluster.signal_host(victim, signal.SIGKILL)
            await eventually(lambda: asyncio.to_thread(lambda: not cluster.host_pids(victim)))
            # Rerun elsewhere: the lease lapses, the next sweep requeues, another host runs it.
            within = self.LEASE + 2 * CRON_SECONDS + 5 + 15
            await eventually(
                lambda: all_succeeded(redis, users, job_ids), within=within, interval=0.2
            )
            counts = await success_counts(redis, users)
            assert [counts[job_id] for job_id in job_ids] == [1] * len(job_ids)
            assert set(lost) <= claimed_elsewhere(cluster, job_ids, victim)
            await asyncio.to_thread(cluster.restart_service, victim)

    @needs_namespaces
    async def test_a_worker_host_cut_off_for_15s_loses_no_job_and_doubles_none(
        self, cluster: Cluster
    ) -> None:
        async with edge(cluster) as client, data_redis(cluster) as redis:
            users, job_ids, (victim, cut_off) = await long_jobs_claimed(cluster, client)
            since = cluster.log_path(victim).stat().st_size
            namespace = cluster.namespace(victim)
            clusters._ip("-n", namespace, "link", "set", "eth0", "down")
            cut_at = time.monotonic()
            try:
                # While it is away, its jobs' leases lapse and other hosts take them over.
                async def taken_over() -> bool:
                    return set(cut_off) <= claimed_elsewhere(cluster, job_ids, victim)

                await eventually(taken_over, within=15, interval=0.2)
                await asyncio.sleep(max(0.0, 15 - (time.monotonic() - cut_at)))  # the cut's length
            finally:
                clusters._ip("-n", namespace, "link", "set", "eth0", "up")
            await eventually(lambda: all_succeeded(redis, users, job_ids), within=JOB_TIMEOUT)

            # Back on the network, the stale holder's run ends: its guarded writes are refused
            # (it logs that its lease is lost), or it fails on the connection it lost.
            async def stale_runs_ended() -> bool:
                return all(run_ended(cluster, victim, since, job_id) for job_id in cut_off)

            await eventually(stale_runs_ended, within=JOB_TIMEOUT, interval=0.2)
            counts = await success_counts(redis, users)
            assert [counts[job_id] for job_id in job_ids] == [1] * len(job_ids)
            owners = dict(zip(job_ids, users, strict=True))
            for job_id in job_ids:
                assert (await owners[job_id].get_job(job_id))["state"] == "succeeded"


class Resuming:
    """A WebSocket client that, when its socket closes, reconnects through the edge and resumes
    from the last event it has."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url
        self.token = token
        self.events: list[dict[str, Any]] = []
        self.others: list[dict[str, Any]] = []
        self.hellos = 0
        self.failed_connects = 0
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while True:
            query = f"?last_event_id={self.events[-1]['id']}" if self.events else ""
            try:
                async with websockets.connect(
                    self.url + query,
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                    open_timeout=10,
                ) as socket:
                    async for raw in socket:
                        message = json.loads(raw)
                        if "id" in message:
                            self.events.append(message)
                        elif message.get("type") == "hello":
                            self.hellos += 1
                        else:
                            self.others.append(message)
            except (OSError, TimeoutError, websockets.WebSocketException):
                self.failed_connects += 1
            await asyncio.sleep(0.2)  # reconnect backoff

    async def close(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


class TestRealtimeHostLoss:
    """Clients of a realtime host that dies reconnect through the edge and miss nothing."""

    async def test_clients_of_a_killed_realtime_host_resume_on_the_other(
        self, cluster: Cluster
    ) -> None:
        async with edge_user(cluster) as (user, redis):
            clients = [Resuming(cluster.edge_ws_url, user.access_token) for _ in range(10)]
            try:
                await eventually(lambda: all(c.hellos for c in clients), within=30)
                victim = cluster.host("realtime1")
                on_victim = await asyncio.to_thread(established, cluster, victim)
                assert on_victim >= 1
                job_ids = await post_jobs(user, 10, {"steps": 10, "interval": 0.2})
                await eventually(lambda: all(c.events for c in clients), within=30)
                assert cluster.signal_host(victim, signal.SIGKILL)
                await eventually(
                    lambda: all_succeeded_once(redis, user.id, job_ids), within=JOB_TIMEOUT
                )
                expected = [event["id"] for event in await stream(redis, user.id)]

                async def caught_up() -> bool:
                    return all(len(c.events) >= len(expected) for c in clients)

                await eventually(caught_up, within=30)
                for resumed in clients:
                    assert [event["id"] for event in resumed.events] == expected
                    assert resumed.others == []  # no "reset": nothing was lost
                assert sum(c.hellos for c in clients) >= len(clients) + on_victim
            finally:
                await asyncio.gather(*(c.close() for c in clients))
            await asyncio.to_thread(cluster.restart_service, victim)


class TestSchedulerOverlap:
    async def test_overlapping_cron_runs_requeue_and_relay_each_job_once(
        self, cluster: Cluster
    ) -> None:
        async with data_redis(cluster) as redis:
            # One job per user, 60 users (written straight into Postgres, as the jobs are): a
            # per-user limit on running jobs never holds one back.
            owners = [str(uuid.uuid4()) for _ in range(60)]
            jobs = [str(uuid.uuid4()) for _ in range(60)]
            unsent, lapsed = jobs[:30], jobs[30:]
            params = json.dumps({"steps": 1, "interval": 0})
            scheduler = cluster.host("scheduler")
            since = cluster.log_path(scheduler).stat().st_size
            async with await psycopg.AsyncConnection.connect(
                cluster.database_url, autocommit=True
            ) as db:
                await db.execute(
                    "INSERT INTO users (id, email, password_hash) "
                    "SELECT id, id || '@example.com', 'unused' FROM unnest(%s::uuid[]) AS id",
                    (owners,),
                )
                # Accepted while the broker was away (never sent), and held by a dead worker.
                await db.execute(
                    "INSERT INTO jobs (id, owner_id, kind, params, created_at) "
                    "SELECT job, owner, 'demo.countdown', %s::jsonb, now() - interval '1 minute' "
                    "FROM unnest(%s::uuid[], %s::uuid[]) AS t(job, owner)",
                    (params, unsent, owners[:30]),
                )
                await db.execute(
                    "INSERT INTO jobs (id, owner_id, kind, params, state, attempt, run_id, "
                    "started_at, lease_expires_at, sent_at) "
                    "SELECT job, owner, 'demo.countdown', %s::jsonb, 'running', 1, "
                    "gen_random_uuid(), now(), now() - interval '1 minute', now() "
                    "FROM unnest(%s::uuid[], %s::uuid[]) AS t(job, owner)",
                    (params, lapsed, owners[30:]),
                )
            # Three more cron runs at once, besides the one every CRON_SECONDS: a run that
            # outlives its interval overlaps the next.
            command = shlex.split(blueprint.service(blueprint.load(), "scheduler")["startCommand"])
            env = cluster.env("scheduler", scheduler)
            outputs = await asyncio.gather(
                *(asyncio.to_thread(cluster.run, scheduler, command, env) for _ in range(3))
            )

            async def events() -> list[dict[str, Any]]:
                return [event for owner in owners for event in await stream(redis, owner)]

            async def all_done() -> bool:
                return set(succeeded_counts(await events())) == set(jobs)

            await eventually(all_done, within=JOB_TIMEOUT, interval=0.2)
            rounds = [
                record
                for text in [*outputs, worker_log_after(cluster, scheduler, since)]
                for record in json_records(text)
                if record.get("message") == "maintenance round"
            ]
            assert sum(r.get("requeued", 0) for r in rounds) == len(lapsed), rounds
            assert sum(r.get("sent", 0) for r in rounds) == len(jobs), rounds
            seen = await events()
            requeued = Counter(e["job_id"] for e in seen if e["type"] == "job.requeued")
            assert requeued == Counter(lapsed)
            assert succeeded_counts(seen) == Counter(jobs)
            claimed = Counter(j for found in claims(cluster, jobs).values() for j in found)
            assert claimed == Counter(jobs)


class TestRollingDeploy:
    @pytest.mark.timeout(300)
    async def test_every_api_and_realtime_host_redeployed_under_load_fails_no_request(
        self, cluster: Cluster
    ) -> None:
        async with edge(cluster) as client:
            user = await new_user(cluster, client)
            statuses: Counter[str] = Counter()
            stop = asyncio.Event()

            async def load(path: str, headers: dict[str, str], pause: float) -> None:
                async with edge(cluster) as loader:
                    while not stop.is_set():
                        try:
                            answer = await loader.get(path, headers=headers)
                            statuses[f"{path} {answer.status_code}"] += 1
                        except httpx.TransportError as exc:
                            statuses[f"{path} {type(exc).__name__}"] += 1
                        await asyncio.sleep(pause)  # pacing under the per-user read limit

            loaders = [
                asyncio.create_task(load("/health/live", {}, 0.01)),
                asyncio.create_task(load("/health/live", {}, 0.01)),
                asyncio.create_task(load("/v1/users/me", user.headers, 0.15)),
            ]
            sockets = [Resuming(cluster.edge_ws_url, user.access_token) for _ in range(6)]
            try:
                for host in [*cluster.role("api"), *cluster.role("realtime")]:
                    await asyncio.to_thread(cluster.stop_service, host)
                    await asyncio.to_thread(cluster.restart_service, host)
            finally:
                stop.set()
                await asyncio.gather(*loaders)
                await asyncio.gather(*(s.close() for s in sockets))
            failed = {k: n for k, n in statuses.items() if not k.endswith(" 200")}
            assert failed == {}, statuses
            assert sum(statuses.values()) > 100
            # Every socket was moved (1012) and came back through the edge.
            assert all(s.hellos >= 2 for s in sockets), [s.hellos for s in sockets]

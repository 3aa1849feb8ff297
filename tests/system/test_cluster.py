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
import json
import shutil
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from typing import Any, cast

import httpx
import pytest
from redis.asyncio import Redis

from common.contracts.events import user_stream
from scripts import cluster as clusters
from scripts.cluster import Cluster, Host
from tests.support.jobs import JobsUser
from tests.support.polling import eventually
from tests.support.realtime import listen

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


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """The cluster, up for the module; down after it, with nothing left behind."""
    if clusters.leftovers(NAME) or Cluster.load(NAME) is not None:
        clusters.down(NAME, say=lambda _: None)  # a crashed run's remains
    started = Cluster(name=NAME, subnet=SUBNET, namespaces=NAMESPACES, cron_seconds=CRON_SECONDS)
    clusters.up(started, say=lambda _: None)
    try:
        yield started
    finally:
        left = clusters.down(NAME, say=lambda _: None)
        assert left == [], f"make cluster-down left {left}"


def edge(cluster: Cluster, address: str | None = None) -> httpx.AsyncClient:
    """A client of the edge (HAProxy), connecting from `address` (a client machine's)."""
    transport = httpx.AsyncHTTPTransport(local_address=address or cluster.client_address)
    return httpx.AsyncClient(base_url=cluster.edge_url, transport=transport, timeout=30.0)


async def new_user(client: httpx.AsyncClient) -> JobsUser:
    email = f"{uuid.uuid4().hex[:12]}@example.com"
    registered = await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    assert registered.status_code == 201, registered.text
    token = await client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    assert token.status_code == 200, token.text
    return JobsUser(client, registered.json()["id"], token.json()["access_token"])


@contextlib.asynccontextmanager
async def data_redis(cluster: Cluster) -> AsyncIterator[Redis]:
    redis = Redis.from_url(cluster.redis_url, socket_timeout=10)
    try:
        yield redis
    finally:
        await redis.aclose()


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
        for host in cluster.role("api"):
            assert cluster.log_path(host).read_text().count(f'"path": "/v1/{marker}"') == 2, (
                host.name
            )


class TestRealtimeAcrossHosts:
    async def test_40_sockets_of_one_user_on_both_hosts_get_every_event_once_in_order(
        self, cluster: Cluster
    ) -> None:
        async with edge(cluster) as client, data_redis(cluster) as redis:
            user = await new_user(client)
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
            user = await new_user(client)
            job_ids = await run_jobs(user, redis, 36, {"steps": 2, "interval": 0.2}, window=18)
            counts = succeeded_counts(await stream(redis, user.id))
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
            assert f'"client": "{second}"' in cluster.log_path(host).read_text(), host.name

"""Per-process costs measured on the cluster (`make cluster`), for the capacity model.

    .venv/bin/python -m bench.cluster [--jobs 600] [--reads 3000] [--sockets 100]

Brings up its own cluster (`clb`, 10.215.0.0/24) with the rate limits and the
per-user active-job limit lifted (every request comes from one address and a
few users; named in the output), drives it through HAProxy, and reports, per
tier, CPU time per request, per job and per delivered event (the CPU each
host's processes used, from /proc, over the phase; steadier than rates on a
shared machine), Postgres commits and Redis commands per job, the size of an
event, and the connections each process holds in Postgres and Redis. Writes
the figures to bench/results/cluster-<UTC time>.json. The cluster is taken
down at the end, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import httpx
import psycopg
import websockets
from redis.asyncio import Redis

from bench.cpu import delta, process_cpu
from bench.stack import LIFTED_LIMITS
from scripts import cluster as clusters
from scripts.cluster import Cluster

RESULTS = Path(__file__).resolve().parent / "results"
PASSWORD = "correct horse battery staple"  # noqa: S105 (the bench users' password)


def cpu_seconds(cluster: Cluster) -> dict[str, float]:
    """CPU time (user + system, reaped children included) of every process, by tier."""
    tiers: dict[str, float] = {}
    for host in cluster.hosts:
        for pid in cluster.host_pids(host):
            if (cpu := process_cpu(pid)) is None:
                continue
            tier = host.role
            if host.role == "data":
                tier = "redis" if cpu.comm.startswith("redis") else "postgres"
            tiers[tier] = tiers.get(tier, 0.0) + cpu.seconds
    return tiers


async def pg_counts(cluster: Cluster) -> tuple[int, dict[str, int]]:
    """Postgres commits so far on the app database, and connections by application name."""
    async with await psycopg.AsyncConnection.connect(cluster.database_url, autocommit=True) as db:
        commits = await (
            await db.execute("SELECT xact_commit FROM pg_stat_database WHERE datname = 'app'")
        ).fetchone()
        rows = await (
            await db.execute(
                "SELECT application_name, count(*) FROM pg_stat_activity "
                "WHERE datname = 'app' AND pid <> pg_backend_pid() GROUP BY 1"
            )
        ).fetchall()
    assert commits is not None
    return int(commits[0]), {str(name): int(count) for name, count in rows}


async def redis_counts(cluster: Cluster, redis: Redis) -> tuple[int, int, dict[str, int]]:
    """Redis commands processed, bytes sent, and client connections by host."""
    stats = await redis.info("stats")
    by_address = {host.address: host.name for host in cluster.hosts}
    clients: Counter[str] = Counter()
    for client in await redis.client_list():
        address = str(client["addr"]).rsplit(":", 1)[0]
        clients[by_address.get(address, "clients")] += 1
    return (
        int(stats["total_commands_processed"]),
        int(stats["total_net_output_bytes"]),
        dict(clients),
    )


async def stream_entries(redis: Redis, user_id: str) -> list[bytes]:
    """The events (JSON bytes) in one user's stream."""
    entries = cast("list[tuple[bytes, dict[bytes, bytes]]]",
                   await redis.xrange(f"events:stream:{user_id}"))  # fmt: skip
    return [fields[b"event"] for _, fields in entries]


async def new_user(client: httpx.AsyncClient) -> tuple[str, str]:
    email = f"bench-{uuid.uuid4().hex[:12]}@example.com"
    registered = await client.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
    registered.raise_for_status()
    token = await client.post("/v1/auth/token", data={"username": email, "password": PASSWORD})
    token.raise_for_status()
    return registered.json()["id"], token.json()["access_token"]


async def gather_limited(count: int, concurrency: int, one: Callable[[int], Any]) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def guarded(index: int) -> None:
        async with gate:
            await one(index)

    await asyncio.gather(*(guarded(index) for index in range(count)))


async def measure(cluster: Cluster, *, reads: int, jobs: int, sockets: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=64)
    async with (
        httpx.AsyncClient(base_url=cluster.edge_url, timeout=60.0, limits=limits) as client,
        Redis.from_url(cluster.redis_url) as redis,
    ):
        _, idle_pg = await pg_counts(cluster)
        _, _, idle_redis = await redis_counts(cluster, redis)
        figures["idle_connections"] = {"postgres": idle_pg, "redis": idle_redis}

        # Reads: GET /v1/jobs/{id}, 32 at a time, through HAProxy to the 3 API hosts.
        _, token = await new_user(client)
        headers = {"Authorization": f"Bearer {token}"}
        one_step = {"kind": "demo.countdown", "params": {"steps": 1, "interval": 0}}
        job = await client.post("/v1/jobs", json=one_step, headers=headers)
        job.raise_for_status()
        job_id = job.json()["id"]
        statuses: Counter[int] = Counter()

        async def read(_: int) -> None:
            answer = await client.get(f"/v1/jobs/{job_id}", headers=headers)
            statuses[answer.status_code] += 1

        before, started = cpu_seconds(cluster), time.monotonic()
        await gather_limited(reads, 32, read)
        elapsed, used = time.monotonic() - started, delta(before, cpu_seconds(cluster))
        figures["reads"] = {
            "count": reads,
            "statuses": dict(statuses),
            "seconds": round(elapsed, 2),
            "cpu_ms_per_request": {t: round(1000 * s / reads, 3) for t, s in used.items()},
        }

        # Jobs with sockets listening: users' sockets spread over both realtime hosts.
        users = [await new_user(client) for _ in range(max(1, sockets // 5))]
        frames: Counter[str] = Counter()
        opened: list[Any] = []

        async def listen(token: str, index: int) -> None:
            socket = await websockets.connect(
                cluster.edge_ws_url, additional_headers={"Authorization": f"Bearer {token}"}
            )
            opened.append(socket)
            await socket.recv()  # the hello

            async def drain() -> None:
                async for _ in socket:
                    frames[str(index)] += 1

            asyncio.get_running_loop().create_task(drain())

        for index in range(sockets):
            await listen(users[index % len(users)][1], index)
        peak_pg: dict[str, int] = {}
        commits_before, _ = await pg_counts(cluster)
        commands_before, output_before, _ = await redis_counts(cluster, redis)
        before, started = cpu_seconds(cluster), time.monotonic()
        posted: list[tuple[str, str]] = []

        async def post(index: int) -> None:
            owner = users[index % len(users)]
            answer = await client.post(
                "/v1/jobs",
                json={"kind": "demo.countdown", "params": {"steps": 2, "interval": 0}},
                headers={"Authorization": f"Bearer {owner[1]}"},
            )
            answer.raise_for_status()
            posted.append((owner[0], answer.json()["id"]))

        await gather_limited(jobs, 8, post)
        expected = {job for _, job in posted}
        while True:
            _, now_pg = await pg_counts(cluster)
            for name, count in now_pg.items():
                peak_pg[name] = max(peak_pg.get(name, 0), count)
            async with await psycopg.AsyncConnection.connect(cluster.database_url) as db:
                row = await (
                    await db.execute(
                        "SELECT count(*) FROM jobs WHERE state = 'succeeded' AND id = ANY(%s)",
                        (list(expected),),
                    )
                ).fetchone()
            if row is not None and row[0] == len(expected):
                break
            await asyncio.sleep(0.5)  # poll interval
        elapsed = time.monotonic() - started
        streams = {owner_id: await stream_entries(redis, owner_id) for owner_id, _ in users}
        events = sum(len(entries) for entries in streams.values())
        event_bytes = sum(len(event) for entries in streams.values() for event in entries)
        # Every event reaches each of its user's sockets.
        deliveries_expected = sum(len(streams[users[i % len(users)][0]]) for i in range(sockets))
        deadline = time.monotonic() + 30
        while sum(frames.values()) < deliveries_expected:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)  # poll interval
        used = delta(before, cpu_seconds(cluster))
        commits_after, _ = await pg_counts(cluster)
        commands_after, output_after, peak_redis = await redis_counts(cluster, redis)
        delivered = sum(frames.values())
        figures["jobs"] = {
            "count": jobs,
            "seconds": round(elapsed, 2),
            "jobs_per_second": round(jobs / elapsed, 1),
            "cpu_ms_per_job": {t: round(1000 * s / jobs, 3) for t, s in used.items()},
            "postgres_commits_per_job": round((commits_after - commits_before) / jobs, 2),
            "redis_commands_per_job": round((commands_after - commands_before) / jobs, 1),
            "redis_output_bytes_per_job": round((output_after - output_before) / jobs),
            "events": events,
            "events_per_job": round(events / jobs, 2),
            "mean_event_bytes": round(event_bytes / max(events, 1)),
            "sockets": sockets,
            "deliveries": delivered,
            "deliveries_expected": deliveries_expected,
            "realtime_cpu_us_per_delivery": round(
                1e6 * used.get("realtime", 0.0) / max(delivered, 1), 1
            ),
            "peak_connections": {"postgres": peak_pg, "redis": peak_redis},
        }
        for socket in opened:
            await socket.close()
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.cluster", description=__doc__.splitlines()[0])
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--jobs", type=int, default=600)
    parser.add_argument("--sockets", type=int, default=100)
    args = parser.parse_args(argv)
    cluster = Cluster(
        name="clb",
        subnet=215,
        namespaces=clusters.can_use_namespaces(),
        # 600 jobs from 20 users while one worker host runs them: a user's backlog
        # may pass the shipped active-job limit, which this capacity model does not test.
        extra_env={**LIFTED_LIMITS, "JOBS_MAX_ACTIVE_PER_USER": "1000000000"},
    )
    with clusters.running(cluster):
        print(clusters.describe(cluster))
        figures = asyncio.run(
            measure(cluster, reads=args.reads, jobs=args.jobs, sockets=args.sockets)
        )
    figures["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    figures["load_average"] = os.getloadavg()
    figures["hosts"] = {h.name: h.role for h in cluster.hosts}
    figures["overrides"] = {
        **{k: v for k, (v, _) in clusters.OVERRIDES.items()},
        **cluster.extra_env,
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"cluster-{time.strftime('%Y%m%dT%H%M', time.gmtime())}.json"
    out.write_text(json.dumps(figures, indent=1))
    print(json.dumps(figures, indent=1))
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

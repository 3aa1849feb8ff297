"""Metrics of the real processes: gunicorn's workers summed in one scrape, dead workers'
live gauges dropped, a Celery worker's endpoint, and the realtime connection gauge."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid
from pathlib import Path

import httpx
import pytest
from prometheus_client.multiprocess import MultiProcessCollector
from redis.asyncio import Redis
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from devharness.polling import eventually
from devharness.realtime import listen
from devservices import free_port
from tests.fixtures.metrics import Scrape, scrape
from tests.fixtures.realtime import ORIGIN, RealtimeFactory, TokenFor, publish
from tests.fixtures.servers import Server, ServerFactory
from tests.fixtures.workers import JobsStack, StackFactory

pytestmark = pytest.mark.system

LIVE = {"method": "GET", "route": "/health/live", "status": "200"}


def _per_worker_requests(directory: Path, pids: set[int]) -> dict[int, float]:
    """/health/live requests counted in each worker's own file."""
    counts = {}
    for pid in pids:
        path = directory / f"counter_{pid}.db"
        if not path.exists():
            counts[pid] = 0.0
            continue
        families = MultiProcessCollector.merge([str(path)])  # type: ignore[no-untyped-call]
        counts[pid] = sum(
            sample.value
            for family in families
            for sample in family.samples
            if sample.name == "http_requests_total" and sample.labels == LIVE
        )
    return counts


async def _hit_live(server: Server, count: int) -> None:
    # A new connection per request, several at once: the kernel spreads them over workers.
    async def one() -> None:
        async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
            assert (await client.get("/health/live")).status_code == 200

    for _ in range(count // 10):
        await asyncio.gather(*(one() for _ in range(10)))


async def _scrape(base_url: str) -> Scrape:
    async with httpx.AsyncClient(base_url=base_url, timeout=10.0) as client:
        return await scrape(client)


class TestGunicornWorkers:
    """Under gunicorn each worker writes its own files; one scrape sums them."""

    async def test_requests_over_both_workers_are_summed_in_one_scrape(
        self, server_factory: ServerFactory, tmp_path: Path
    ) -> None:
        directory = tmp_path / "prometheus"
        directory.mkdir()
        stale = directory / "counter_999999999.db"
        stale.write_bytes(b"\0" * 16)
        server = await server_factory(PROMETHEUS_MULTIPROC_DIR=str(directory))
        assert not stale.exists(), "a previous run's file leaked into this one"
        pids = server.worker_pids()
        assert len(pids) == 2
        sent = 0

        async def both_workers_served() -> bool:
            nonlocal sent
            await _hit_live(server, 20)
            sent += 20
            return all(_per_worker_requests(directory, pids).values())

        await eventually(both_workers_served, within=30, interval=0.2)

        # Each worker writes its counts at most FLUSH_SECONDS after a request.
        async def all_counted() -> Scrape | None:
            result = await _scrape(server.base_url)
            # The scrapes are requests too, but to /metrics: the live count is exact.
            return result if result.value("http_requests_total", **LIVE) == sent else None

        result = await eventually(all_counted, within=10, interval=0.2)
        assert sum(_per_worker_requests(directory, pids).values()) == sent
        assert result.value("http_request_duration_seconds_count", **LIVE) == sent
        assert result.types["http_requests_in_flight"] == "gauge"

    async def test_a_stopped_server_wrote_every_request_it_served(
        self, server_factory: ServerFactory, tmp_path: Path
    ) -> None:
        directory = tmp_path / "prometheus"
        directory.mkdir()
        server = await server_factory(PROMETHEUS_MULTIPROC_DIR=str(directory))
        pids = server.worker_pids()
        await _hit_live(server, 40)
        # Stopped at once, before the next flush: each worker writes its counts at shutdown.
        await server.stop()
        assert sum(_per_worker_requests(directory, pids).values()) == 40

    async def test_a_killed_workers_counts_stay_and_its_live_gauges_go(
        self, server_factory: ServerFactory, tmp_path: Path
    ) -> None:
        directory = tmp_path / "prometheus"
        server = await server_factory(PROMETHEUS_MULTIPROC_DIR=str(directory), DB_POOL_SIZE="3")
        await _hit_live(server, 40)

        async def all_counted() -> Scrape | None:
            result = await _scrape(server.base_url)
            return result if result.value("http_requests_total", **LIVE) == 40 else None

        before = await eventually(all_counted, within=10, interval=0.2)
        # db_pool_size is a live gauge: each worker's lifespan sets its pool's size.
        assert before.value("db_pool_size") == 6
        counted = 40

        victim = min(server.worker_pids())
        os.kill(victim, signal.SIGKILL)

        async def replaced() -> bool:
            pids = server.worker_pids()
            return len(pids) == 2 and victim not in pids

        await eventually(replaced, within=30)

        async def pool_of_live_workers() -> Scrape | None:
            result = await _scrape(server.base_url)
            return result if result.value("db_pool_size") == 6 else None

        after = await eventually(pool_of_live_workers, within=30)
        assert not list(directory.glob(f"gauge_live*_{victim}.db"))
        assert (directory / f"counter_{victim}.db").exists()
        # The dead worker's requests are still in the counter.
        assert (after.value("http_requests_total", **LIVE) or 0) >= counted


async def _with_metered_worker(
    stack_factory: StackFactory, **overrides: str
) -> tuple[JobsStack, str]:
    """A stack with a worker serving its metrics on a free loopback port; that URL."""
    stack = await stack_factory()
    port = free_port()
    await stack.start_worker(
        WORKER_METRICS_PORT=str(port), WORKER_METRICS_HOST="127.0.0.1", **overrides
    )
    return stack, f"http://127.0.0.1:{port}"


class TestCeleryWorker:
    """The worker's main process serves its pool processes' job metrics and the backlogs."""

    async def test_a_job_run_shows_started_finished_and_duration(
        self, stack_factory: StackFactory
    ) -> None:
        stack, url = await _with_metered_worker(stack_factory)
        user = await stack.new_user()
        job = await user.post_job("demo.countdown", {"steps": 2, "interval": 0})
        assert (await user.wait_until_final(job["id"], within=30))["state"] == "succeeded"
        kind = {"kind": "demo.countdown"}
        done = {**kind, "state": "succeeded"}

        async def finished() -> Scrape | None:
            result = await _scrape(url)
            return result if result.value("jobs_finished_total", **done) == 1 else None

        result = await eventually(finished, within=15)
        assert result.value("jobs_started_total", **kind) == 1
        assert result.value("job_duration_seconds_count", **done) == 1
        assert (result.value("job_duration_seconds_sum", **done) or 0) > 0
        assert result.value("jobs_running", **kind) == 0
        assert result.value("jobs_queue_depth") == 0

    async def test_each_transient_failure_counts_one_retry(
        self, stack_factory: StackFactory
    ) -> None:
        stack, url = await _with_metered_worker(stack_factory)
        user = await stack.new_user()
        job = await user.post_job("demo.flaky", {"failures": 2})
        assert (await user.wait_until_final(job["id"], within=30))["state"] == "succeeded"
        kind = {"kind": "demo.flaky"}

        async def finished() -> Scrape | None:
            result = await _scrape(url)
            done = result.value("jobs_finished_total", **kind, state="succeeded")
            return result if done == 1 else None

        result = await eventually(finished, within=15)
        assert result.value("jobs_retried_total", **kind) == 2
        assert result.value("jobs_started_total", **kind) == 3

    async def test_queue_depth_and_outbox_backlog_are_read_at_scrape_time(
        self,
        stack_factory: StackFactory,
        db_engine: AsyncEngine,
    ) -> None:
        # One pool process and prefetch 1: while a long job runs, the rest stay queued.
        stack, url = await _with_metered_worker(stack_factory)
        user = await stack.new_user()
        blocker = await user.post_job("demo.countdown", {"steps": 600, "interval": 0.1})
        await user.wait_for_job(blocker["id"], lambda job: job["state"] == "running", within=30)
        backlog_before = (await _scrape(url)).value("jobs_outbox_backlog")
        assert backlog_before is not None
        queued = [
            await user.post_job("demo.countdown", {"steps": 1, "interval": 0}) for _ in range(3)
        ]

        async def depth_is(expected: int) -> bool:
            return (await _scrape(url)).value("jobs_queue_depth") == expected

        await eventually(lambda: depth_is(3), within=10)
        # Two of them as if the API had not reached the broker: the relay's work.
        async with db_engine.begin() as connection:
            await connection.execute(
                text("UPDATE jobs SET sent_at = NULL WHERE id = ANY(:ids)"),
                {"ids": [uuid.UUID(job["id"]) for job in queued[:2]]},
            )

        # Counted once they are a second old (the API marks a sent job up to 0.25 s
        # later); the third, sent and marked, never is.
        async def backlog_is(expected: float) -> bool:
            return (await _scrape(url)).value("jobs_outbox_backlog") == expected

        await eventually(lambda: backlog_is(backlog_before + 2), within=10)
        assert await backlog_is(backlog_before + 2)

        assert (await user.cancel_job(blocker["id"])).status_code == 200
        for job in queued:
            assert (await user.wait_until_final(job["id"], within=30))["state"] == "succeeded"
        await eventually(lambda: depth_is(0), within=10)


class TestCeleryWorkerToken:
    """With METRICS_TOKEN set, the worker's /metrics answers only that bearer token (#15 §7)."""

    async def test_scrape_needs_the_token(self, stack_factory: StackFactory) -> None:
        token = uuid.uuid4().hex
        _, url = await _with_metered_worker(stack_factory, METRICS_TOKEN=token)
        async with httpx.AsyncClient(base_url=url, timeout=10) as client:
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
                refused = await client.get("/metrics", headers=headers)
                assert refused.status_code == 401, headers
                assert refused.headers["www-authenticate"] == "Bearer"
                assert "jobs_queue_depth" not in refused.text
            allowed = await scrape(client, token=token)
        assert allowed.value("jobs_queue_depth") == 0


class TestRealtime:
    """The realtime service counts its open sockets and the events it hands them."""

    async def test_connection_gauge_counts_sockets_over_both_workers(
        self,
        realtime_factory: RealtimeFactory,
        token_for: TokenFor,
        redis: Redis,
    ) -> None:
        realtime = await realtime_factory()
        user_id = uuid.uuid4()
        token = token_for(user_id)
        listeners = [await listen(realtime.ws_url, token=token, origin=ORIGIN) for _ in range(4)]

        async def connections_are(expected: int) -> bool:
            return (await _scrape(realtime.base_url)).value("realtime_connections") == expected

        await eventually(lambda: connections_are(4), within=10)
        before = (await _scrape(realtime.base_url)).value("realtime_events_delivered_total") or 0
        await publish(redis, realtime.prefix, user_id, 2)
        for listener in listeners:
            await listener.wait_events(2)
        delivered = (await _scrape(realtime.base_url)).value("realtime_events_delivered_total")
        assert delivered == before + 2 * 4

        await listeners[0].close()
        await eventually(lambda: connections_are(3), within=10)
        for listener in listeners[1:]:
            await listener.close()
        await eventually(lambda: connections_are(0), within=10)

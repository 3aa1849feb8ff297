"""The request that created a job is named by the worker's logs and the job's events.

A real API (in process), a real `celery worker` and, for the relay, a real
scheduler: the request id of the POST (and its W3C traceparent) ride the Celery
message headers, and the job row keeps them for a message sent later.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from devharness.polling import eventually
from devharness.processes import ManagedProcess
from devservices import EmbeddedRedis
from tests.fixtures.jobs import JobsUser
from tests.fixtures.workers import JobsStack, StackFactory

pytestmark = pytest.mark.system

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
TRACEPARENT = f"00-{TRACE_ID}-00f067aa0ba902b7-01"


def _correlated_headers() -> tuple[str, dict[str, str]]:
    request_id = f"corr-{uuid.uuid4().hex}"
    return request_id, {"X-Request-ID": request_id, "traceparent": TRACEPARENT}


async def _job_lines(
    worker: ManagedProcess, job_id: str, *, last: str, times: int = 1
) -> list[dict[str, Any]]:
    """The worker's JSON log lines naming `job_id`, once `times` lines contain `last`."""

    async def lines() -> list[dict[str, Any]] | None:
        found = [r for r in worker.log_records() if job_id in str(r.get("message", ""))]
        written = sum(last in str(record["message"]) for record in found)
        return found if written >= times else None

    return await eventually(lines, within=10)


def _assert_all_carry(records: list[dict[str, Any]], request_id: str) -> None:
    strays = [record for record in records if record.get("request_id") != request_id]
    assert not strays, f"lines without request_id {request_id}: {strays}"


async def _post(user: JobsUser, params: dict[str, Any], headers: dict[str, str]) -> str:
    job = await user.post_job("demo.countdown", params, headers=headers)
    return str(job["id"])


class TestRequestIdThroughTheWorker:
    """A POST's X-Request-ID is on every worker log line and every event about its job."""

    async def test_worker_lines_and_events_carry_the_posts_request_id(
        self, stack: JobsStack
    ) -> None:
        user, worker = await asyncio.gather(stack.new_user(), stack.start_worker())
        request_id, headers = _correlated_headers()
        async with stack.tap(user) as tap:
            job_id = await _post(user, {"steps": 3, "interval": 0.1}, headers)
            done = await user.wait_until_final(job_id, within=20)
            await tap.wait_for(job_id, "job.succeeded", within=5)
            live = tap.of_job(job_id)
            stream = await tap.stream(job_id)
        assert done["state"] == "succeeded", done

        expected = ["job.queued", "job.started", *["job.progress"] * 3, "job.succeeded"]
        for received in (live, stream):
            assert [event["type"] for event in received] == expected
            assert {event["request_id"] for event in received} == {request_id}

        lines = await _job_lines(worker, job_id, last=") in ")
        _assert_all_carry(lines, request_id)
        messages = [str(record["message"]) for record in lines]
        [ended] = [record for record in lines if ") in " in str(record["message"])]
        assert str(ended["message"]).startswith(
            f"job {job_id} succeeded (demo.countdown, attempt 1) in "
        )
        assert ended["duration_ms"] > 0
        # Celery's own line per task says it again: off at INFO, as shipped.
        loggers = {record.get("logger") for record in worker.log_records()}
        assert not loggers & {"celery.worker.strategy", "celery.app.trace"}, loggers
        claimed = [record for record in lines if "claimed" in str(record["message"])]
        assert len(claimed) == 1, messages
        # Tracing is off here: the caller's traceparent is handed on unchanged.
        assert claimed[0]["traceparent"] == TRACEPARENT

    async def test_a_retried_attempt_still_carries_the_request_id(self, stack: JobsStack) -> None:
        user, worker = await asyncio.gather(stack.new_user(), stack.start_worker())
        request_id, headers = _correlated_headers()
        job = await user.post_job("demo.flaky", {"failures": 1}, headers=headers)
        done = await user.wait_until_final(job["id"], within=30)
        assert done["state"] == "succeeded", done

        # A retry ends the first attempt's run (a new message does the retry).
        lines = await _job_lines(worker, job["id"], last=") in ", times=2)
        _assert_all_carry(lines, request_id)
        claimed = [record for record in lines if "claimed" in str(record["message"])]
        assert len(claimed) == 2, [record["message"] for record in lines]
        assert {record["traceparent"] for record in claimed} == {TRACEPARENT}
        ends = [str(r["message"]).split(" (")[0] for r in lines if ") in " in str(r["message"])]
        assert ends == [f"job {job['id']} released for a retry", f"job {job['id']} succeeded"]
        stream = await stack.stream(user, job["id"])
        assert "job.requeued" in [event["type"] for event in stream]
        assert {event["request_id"] for event in stream} == {request_id}

    async def test_other_jobs_lines_do_not_inherit_the_request_id(self, stack: JobsStack) -> None:
        user, worker = await asyncio.gather(stack.new_user(), stack.start_worker())
        request_id, headers = _correlated_headers()
        first = await _post(user, {"steps": 1, "interval": 0}, headers)
        await user.wait_until_final(first, within=20)
        second = (await user.post_job("demo.countdown", {"steps": 1, "interval": 0}))["id"]
        await user.wait_until_final(second, within=20)

        lines = await _job_lines(worker, second, last="succeeded")
        assert request_id not in {record.get("request_id") for record in lines}
        # The API made an id of its own for the second POST; the worker names that one.
        assert len({record.get("request_id") for record in lines}) == 1


class TestRequestIdThroughTheRelay:
    """A job accepted while the broker was down keeps its request id when the relay sends it."""

    async def test_relayed_job_carries_request_id_and_traceparent(
        self, stack_factory: StackFactory, private_redis: EmbeddedRedis
    ) -> None:
        stack = await stack_factory(redis_url=private_redis.url(), redis_socket_timeout=0.5)
        user = await stack.new_user()
        request_id, headers = _correlated_headers()
        await asyncio.to_thread(private_redis.stop)
        job_id = await _post(user, {"steps": 2, "interval": 0.05}, headers)

        await asyncio.to_thread(private_redis.start)
        worker, _ = await asyncio.gather(stack.start_worker(), stack.start_scheduler())
        done = await user.wait_until_final(job_id, within=30)
        assert done["state"] == "succeeded", done

        stream = await stack.stream(user, job_id)
        # job.queued was lost with Redis; what the worker published names the request.
        assert stream[0]["type"] == "job.started"
        assert {event["request_id"] for event in stream} == {request_id}
        lines = await _job_lines(worker, job_id, last="succeeded")
        _assert_all_carry(lines, request_id)
        claimed = [record for record in lines if "claimed" in str(record["message"])]
        assert [record["traceparent"] for record in claimed] == [TRACEPARENT]

"""OpenTelemetry on: one trace from the API's HTTP request through Celery to the job's finish.

The API under gunicorn and a real `celery worker` export to an OTLP/HTTP
receiver run by the test; the spans are checked as they arrive.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import Iterator

import httpx
import pytest

from devharness.polling import eventually
from tests.fixtures.otlp import OtlpReceiver, ReceivedSpan
from tests.fixtures.servers import ServerFactory
from tests.fixtures.workers import JobsStack

pytestmark = pytest.mark.system

# opentelemetry.proto.trace.v1.Span.SpanKind
SERVER, PRODUCER, CONSUMER = 2, 4, 5
CALLER_TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN_ID = "00f067aa0ba902b7"
SQLALCHEMY_SCOPE = "opentelemetry.instrumentation.sqlalchemy"
REDIS_SCOPE = "opentelemetry.instrumentation.redis"


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    """An OTLP/HTTP receiver on a free loopback port."""
    with OtlpReceiver() as receiver:
        yield receiver


def _ancestors(span: ReceivedSpan, by_id: dict[str, ReceivedSpan]) -> list[ReceivedSpan]:
    chain = []
    while span.parent_span_id in by_id:
        span = by_id[span.parent_span_id]
        chain.append(span)
    return chain


class TestOneTraceFromRequestToJob:
    """The POST's server span, the message's producer span and the worker's run share a trace."""

    async def test_worker_run_is_a_descendant_of_the_http_request(
        self, stack: JobsStack, server_factory: ServerFactory, otlp: OtlpReceiver
    ) -> None:
        # A short batch delay so spans arrive while the test waits, not 5 s later.
        otel = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "100"}
        server, worker = await asyncio.gather(
            server_factory(REDIS_KEY_PREFIX=stack.prefix, WEB_CONCURRENCY="1", **otel),
            stack.start_worker(**otel),
        )
        async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
            user = await dataclasses.replace(stack, client=http).new_user()
            headers = {
                "X-Request-ID": f"trace-{uuid.uuid4().hex}",
                "traceparent": f"00-{CALLER_TRACE_ID}-{CALLER_SPAN_ID}-01",
            }
            job = await user.post_job(
                "demo.countdown", {"steps": 2, "interval": 0}, headers=headers
            )
            done = await user.wait_until_final(job["id"], within=30)
        assert done["state"] == "succeeded", done

        async def trace_with_worker_run() -> list[ReceivedSpan] | None:
            spans = otlp.snapshot()
            posts = [s for s in spans if s.kind == SERVER and s.name == "POST /v1/jobs"]
            if not posts:
                return None
            trace = [s for s in spans if s.trace_id == posts[0].trace_id]
            worker_sql = [s for s in trace if s.service == "worker" and s.scope == SQLALCHEMY_SCOPE]
            has_run = any(s.service == "worker" and s.kind == CONSUMER for s in trace)
            return trace if has_run and worker_sql else None

        try:
            trace = await eventually(trace_with_worker_run, within=30)
        except TimeoutError:
            received = sorted({(s.service, s.scope, s.name, s.trace_id) for s in otlp.snapshot()})
            pytest.fail(f"no complete trace; received: {received}")
        by_id = {span.span_id: span for span in trace}
        [post] = [s for s in trace if s.kind == SERVER and s.name == "POST /v1/jobs"]
        [send] = [s for s in trace if s.kind == PRODUCER]
        [run] = [s for s in trace if s.kind == CONSUMER]
        assert (post.service, send.service, run.service) == ("api", "api", "worker")
        assert send.name == "send jobs.run"
        assert run.name == "run/jobs.run"
        chain = _ancestors(run, by_id)
        assert [span.span_id for span in chain[:1]] == [send.span_id]
        assert post.span_id in {span.span_id for span in chain}
        # The caller's trace continues: its span is the POST's (remote) parent.
        assert (post.trace_id, post.parent_span_id) == (CALLER_TRACE_ID, CALLER_SPAN_ID)
        # The message's traceparent, as the worker read it, names the producer span.
        [claimed] = [r for r in worker.log_records() if "claimed" in str(r.get("message"))]
        assert claimed["traceparent"] == f"00-{CALLER_TRACE_ID}-{send.span_id}-01"

        # Postgres and Redis calls of both processes are in the same trace.
        for service in ("api", "worker"):
            scopes = {span.scope for span in trace if span.service == service}
            assert {SQLALCHEMY_SCOPE, REDIS_SCOPE} <= scopes, (service, scopes)
        worker_sql = [s for s in trace if s.service == "worker" and s.scope == SQLALCHEMY_SCOPE]
        assert all(run in _ancestors(span, by_id) for span in worker_sql)

"""Tracing is off (and free) without an OTLP endpoint; traceparents and request ids travel on."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
import threading
import uuid
from typing import Any

import pytest

from common.contracts import events
from common.logging import JsonFormatter
from common.request_context import reset_request_id, set_request_id, valid_request_id
from common.tracing import (
    current_traceparent,
    is_active,
    is_enabled,
    sending,
    valid_traceparent,
)
from devharness.services import ROOT
from worker.runner import Heartbeat, JobRun
from worker.settings import WorkerSettings

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
_PROBE = """
import json, sys
import api.main, realtime.main, worker.app
from common.tracing import configure_tracing, is_active
on = configure_tracing("probe")
# FastAPI imports the OpenTelemetry API and redis-py the metrics SDK (both idle); the
# trace SDK, the exporter and the instrumentations are what tracing would add.
heavy = ("opentelemetry.sdk.trace", "opentelemetry.exporter", "opentelemetry.instrumentation")
loaded = sorted(name for name in sys.modules if name.startswith(heavy))
from opentelemetry import trace
provider = type(trace.get_tracer_provider()).__name__
print(json.dumps({"on": on, "active": is_active(), "loaded": loaded, "provider": provider}))
"""


class TestTracingOff:
    """Without an OTLP endpoint no SDK, exporter or instrumentation is imported or installed."""

    @pytest.mark.parametrize(
        ("environ", "expected"),
        [
            ({}, False),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": ""}, False),
            ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
            ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
            (
                {
                    "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318",
                    "OTEL_SDK_DISABLED": "true",
                },
                False,
            ),
        ],
    )
    def test_enabled_only_by_an_endpoint_and_not_disabled(
        self, environ: dict[str, str], expected: bool
    ) -> None:
        assert is_enabled(environ) is expected

    def test_services_load_no_sdk_nor_instrumentation_without_an_endpoint(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
        env["ENVIRONMENT"] = "test"
        command = [sys.executable, "-c", _PROBE]
        result = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60, check=True
        )
        probe = json.loads(result.stdout.strip().splitlines()[-1])
        assert probe == {
            "on": False,
            "active": False,
            "loaded": [],
            "provider": "ProxyTracerProvider",
        }

    def test_off_the_callers_traceparent_is_handed_on_as_is(self) -> None:
        assert not is_active()
        assert current_traceparent(TRACEPARENT) == TRACEPARENT
        with sending("jobs.run", str(uuid.uuid4()), TRACEPARENT) as carried:
            assert carried == TRACEPARENT
        with sending("jobs.run", str(uuid.uuid4()), "garbage") as carried:
            assert carried is None


class TestTraceparent:
    """Only well-formed W3C version-00 traceparents are accepted from outside."""

    @pytest.mark.parametrize(
        "value",
        [
            None,
            "",
            "garbage",
            TRACEPARENT.upper(),
            TRACEPARENT + "-extra",
            "01" + TRACEPARENT[2:],
            "00-" + "0" * 32 + "-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",
            TRACEPARENT + "\n",
        ],
    )
    def test_malformed_traceparent_is_refused(self, value: str | None) -> None:
        assert valid_traceparent(value) is None
        assert current_traceparent(value) is None

    def test_well_formed_traceparent_is_kept(self) -> None:
        assert valid_traceparent(TRACEPARENT) == TRACEPARENT

    @pytest.mark.parametrize("value", ["short", "x" * 129, "has space!", 42, None, "a\nb-12345"])
    def test_request_id_from_a_message_is_checked_like_the_header(self, value: Any) -> None:
        assert valid_request_id(value) is None
        assert valid_request_id("req-12345678") == "req-12345678"


class TestEventRequestId:
    """Events name the request that caused them; without one they keep their old shape."""

    def _published_body(self, event: events.Event) -> dict[str, Any]:
        body = events.event_body(event)
        assert body.startswith("{")  # the Lua splice prepends the id after this brace
        frame = events.event_frame("1-0", body)
        decoded: dict[str, Any] = json.loads(frame)
        assert decoded["id"] == "1-0"
        return decoded

    def test_request_id_is_in_the_published_json(self) -> None:
        event = events.make_event(
            events.JOB_QUEUED, user_id=uuid.uuid4(), job_id=uuid.uuid4(), request_id="req-1234abcd"
        )
        body = self._published_body(event)
        assert body["request_id"] == "req-1234abcd"
        assert body["data"] == {}

    def test_event_without_a_request_has_no_request_id_key(self) -> None:
        body = self._published_body(events.make_event(events.JOB_PROGRESS, user_id=uuid.uuid4()))
        assert set(body) == {"id", "type", "ts", "user_id", "job_id", "data"}


class _Collect(logging.Handler):
    """Formats records as the services do and signals when `needle` is logged."""

    def __init__(self, needle: str) -> None:
        super().__init__()
        self.setFormatter(JsonFormatter())
        self.stream = io.StringIO()
        self.needle = needle
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        line = self.format(record)
        self.stream.write(line + "\n")
        if self.needle in record.getMessage():
            self.seen.set()


class _FailingRun(JobRun):
    def renew(self) -> None:
        raise ConnectionError("postgres away")


class TestRequestIdInWorkerThreads:
    """The heartbeat thread's lines carry the job's request id (threads start context-free)."""

    def test_heartbeat_warning_carries_the_request_id(self) -> None:
        settings = WorkerSettings(_env_file=None, environment="test", job_heartbeat_seconds=0.01)
        run = _FailingRun(
            job_id=uuid.uuid4(), owner_id=uuid.uuid4(), kind="demo.countdown", params={},
            attempt=1, run_id=uuid.uuid4(), engine=None, redis=None,  # type: ignore[arg-type]
            settings=settings,
        )  # fmt: skip
        collect = _Collect("lease renewal failed")
        logger = logging.getLogger("worker.runner")
        logger.addHandler(collect)
        token = set_request_id("req-heartbeat-1")
        try:
            with Heartbeat(run):
                assert collect.seen.wait(5), "the heartbeat never logged its failure"
        finally:
            reset_request_id(token)
            logger.removeHandler(collect)
        lines = [json.loads(line) for line in collect.stream.getvalue().splitlines()]
        warnings = [line for line in lines if "lease renewal failed" in line["message"]]
        assert warnings
        assert {line["request_id"] for line in warnings} == {"req-heartbeat-1"}

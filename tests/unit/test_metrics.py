"""The HTTP metrics middleware, `GET /metrics` and multiprocess mode's directory handling."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from asgi_lifespan import LifespanManager
from fastapi import FastAPI
from prometheus_client import REGISTRY, CollectorRegistry, Histogram
from pydantic import SecretStr
from starlette.types import ASGIApp

from common.metrics import _HTTP_BUCKETS, UNMATCHED_ROUTE, HttpMetrics, create_metrics_router
from common.middleware import EdgeMiddleware
from common.prometheus_multiprocess import ENV_VAR
from devharness.polling import eventually
from tests.fixtures.metrics import Scrape, local_sample


def _app(token: str | None = None) -> FastAPI:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def read_item(item_id: str) -> dict[str, str]:
        return {"id": item_id}

    app.include_router(create_metrics_router(token=SecretStr(token) if token else None))
    app.add_middleware(
        EdgeMiddleware,
        allowed_hosts=["*"],
        content_security_policy="default-src 'none'",
        hsts=False,
        metrics=HttpMetrics(),
    )
    return app


def _client(app: ASGIApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


def _requests(method: str, route: str, status: str) -> float:
    return local_sample("http_requests_total", method=method, route=route, status=status)


class TestHttpMetrics:
    """Requests are counted and timed by route template, never by raw path."""

    async def test_a_request_is_labelled_with_its_route_template(self) -> None:
        before = _requests("GET", "/items/{item_id}", "200")
        async with _client(_app()) as client:
            for _ in range(3):
                assert (await client.get(f"/items/{uuid.uuid4()}")).status_code == 200
        assert _requests("GET", "/items/{item_id}", "200") == before + 3
        count = local_sample(
            "http_request_duration_seconds_count",
            method="GET",
            route="/items/{item_id}",
            status="200",
        )
        assert count >= 3

    async def test_unmatched_paths_share_one_label(self) -> None:
        before = _requests("GET", UNMATCHED_ROUTE, "404")
        async with _client(_app()) as client:
            for path in ("/nope", f"/random/{uuid.uuid4()}"):
                assert (await client.get(path)).status_code == 404
        assert _requests("GET", UNMATCHED_ROUTE, "404") == before + 2

    async def test_a_made_up_method_is_folded_into_other(self) -> None:
        before = _requests("OTHER", "/items/{item_id}", "405")
        async with _client(_app()) as client:
            response = await client.request("BREW", "/items/1")
        assert response.status_code == 405
        assert _requests("OTHER", "/items/{item_id}", "405") == before + 1

    async def test_nothing_is_left_in_flight(self) -> None:
        async with _client(_app()) as client:
            await client.get("/items/1")
        assert local_sample("http_requests_in_flight") == 0


HISTOGRAM = "http_request_duration_seconds"


class TestBatchedWrites:
    """A request adds to counts in memory; a flush writes what `observe` would have."""

    async def test_a_flush_writes_what_each_observation_would_have(self) -> None:
        registry = CollectorRegistry()
        labels = {"method": "GET", "route": UNMATCHED_ROUTE, "status": "201"}
        direct = Histogram(
            "direct_seconds", "", tuple(labels), buckets=_HTTP_BUCKETS, registry=registry
        )
        metrics = HttpMetrics()
        scope = {"method": "GET", "route": None}
        durations = [0.0004, 0.001, 0.0031, 0.02, 0.7, 3.0, 42.0, 0.0031]
        before = _histogram(REGISTRY, HISTOGRAM, **labels)
        for seconds in durations:
            metrics.started()
            metrics.finished(scope, 201, seconds)
            direct.labels(**labels).observe(seconds)
        assert _histogram(REGISTRY, HISTOGRAM, **labels) == (before), "written before a flush"
        metrics.flush()
        after = _histogram(REGISTRY, HISTOGRAM, **labels)
        written = {name: after[name] - before.get(name, 0.0) for name in after}
        expected = {
            name.replace("direct_seconds", HISTOGRAM): value
            for name, value in _histogram(registry, "direct_seconds", **labels).items()
        }
        assert written.keys() == expected.keys()
        for name, value in expected.items():
            assert written[name] == pytest.approx(value), name

    async def test_the_timer_flushes_without_a_scrape(self) -> None:
        metrics = HttpMetrics()
        metrics.FLUSH_SECONDS = 0.01
        key = {"method": "DELETE", "route": "/timer/{id}", "status": "204"}
        before = REGISTRY.get_sample_value("http_requests_total", key) or 0.0
        metrics.started()
        metrics.finished({"method": "DELETE", "route": _Route("/timer/{id}")}, 204, 0.001)
        await eventually(
            lambda: (REGISTRY.get_sample_value("http_requests_total", key) or 0.0) == before + 1,
            within=5,
        )

    async def test_the_apps_shutdown_flushes(self) -> None:
        app = _app()
        key = {"method": "GET", "route": "/items/{item_id}", "status": "200"}
        before = REGISTRY.get_sample_value("http_requests_total", key) or 0.0
        async with LifespanManager(app) as manager:
            async with _client(manager.app) as client:
                assert (await client.get("/items/shutdown")).status_code == 200
            assert (REGISTRY.get_sample_value("http_requests_total", key) or 0.0) == before
        assert REGISTRY.get_sample_value("http_requests_total", key) == before + 1


@dataclass(frozen=True)
class _Route:
    path: str


def _histogram(registry: CollectorRegistry, name: str, **labels: str) -> dict[str, float]:
    """{sample name with its `le`: value} of histogram `name`'s label set `labels`."""
    return {
        f"{sample.name}{sample.labels.get('le', '')}": sample.value
        for family in registry.collect()
        if family.name == name
        for sample in family.samples
        if not sample.name.endswith("_created")
        and {k: v for k, v in sample.labels.items() if k != "le"} == labels
    }


class TestMetricsEndpoint:
    """`GET /metrics`: the exposition format, outside the schema, behind an optional token."""

    async def test_serves_the_text_exposition(self) -> None:
        async with _client(_app()) as client:
            await client.get("/items/1")
            response = await client.get("/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        scrape = Scrape.parse(response.text)
        assert scrape.types["http_requests"] == "counter"
        assert scrape.total("http_requests_total", route="/items/{item_id}") >= 1

    async def test_is_not_in_the_openapi_schema(self) -> None:
        async with _client(_app()) as client:
            schema = (await client.get("/openapi.json")).json()
        assert "/metrics" not in schema["paths"]

    @pytest.mark.parametrize(
        "authorization",
        [None, "Bearer wrong-token", "Basic c2VjcmV0", "Bearer "],
        ids=["missing", "wrong", "other-scheme", "empty"],
    )
    async def test_with_a_token_refuses_other_credentials(self, authorization: str | None) -> None:
        headers = {"Authorization": authorization} if authorization else {}
        async with _client(_app(token="s3cret-metrics-token")) as client:
            response = await client.get("/metrics", headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["www-authenticate"] == "Bearer"
        assert response.json()["status"] == 401

    async def test_with_a_token_serves_its_bearer(self) -> None:
        async with _client(_app(token="s3cret-metrics-token")) as client:
            response = await client.get(
                "/metrics", headers={"Authorization": "Bearer s3cret-metrics-token"}
            )
        assert response.status_code == 200
        assert "http_requests_total" in response.text

    async def test_an_empty_token_means_no_token(self) -> None:
        app = FastAPI()
        app.include_router(create_metrics_router(token=SecretStr("")))
        async with _client(app) as client:
            assert (await client.get("/metrics")).status_code == 200


# Multiprocess mode changes prometheus_client's global state, so each case runs
# in a fresh interpreter, as a gunicorn master or a Celery main process would.
_FORKED_WORKERS = textwrap.dedent(
    """
    import os, sys
    from common.prometheus_multiprocess import (
        mark_process_dead, prepare_multiprocess_dir, remove_multiprocess_dir
    )
    {before}
    path = prepare_multiprocess_dir()
    from common.metrics import HTTP_IN_FLIGHT, JOBS_STARTED, exposition_registry
    pids = []
    for _ in range(2):
        pid = os.fork()
        if pid == 0:
            HTTP_IN_FLIGHT.inc()
            JOBS_STARTED.labels("demo.countdown").inc()
            os._exit(0)
        os.waitpid(pid, 0)
        pids.append(pid)
    registry = exposition_registry()
    print(registry.get_sample_value("jobs_started_total", {{"kind": "demo.countdown"}}))
    print(registry.get_sample_value("http_requests_in_flight"))
    mark_process_dead(pids[0])
    print(registry.get_sample_value("jobs_started_total", {{"kind": "demo.countdown"}}))
    print(registry.get_sample_value("http_requests_in_flight"))
    print(path)
    remove_multiprocess_dir()
    print(os.path.exists(path))
    """
)


def _run(before: str, env: dict[str, str]) -> list[str]:
    code = _FORKED_WORKERS.format(before=before)
    result = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
    env.update(extra)
    return env


class TestMultiprocessMode:
    """Forked processes' samples are summed; a dead one's live gauges leave the sum."""

    def test_children_are_summed_and_dead_ones_lose_their_live_gauges(self) -> None:
        started, in_flight, started_after, in_flight_after, path, kept = _run("", _env())
        assert (float(started), float(in_flight)) == (2.0, 2.0)
        # Counters keep a dead process's counts; its live gauges are gone.
        assert (float(started_after), float(in_flight_after)) == (2.0, 1.0)
        # A private directory, removed when the process tree is done with it.
        assert Path(path).name.startswith("prometheus-multiproc-")
        assert kept == "False"

    def test_works_when_prometheus_client_was_imported_first(self) -> None:
        # The Celery main process: the app (and prometheus_client) load before worker_init.
        output = _run("import prometheus_client, common.metrics", _env())
        # Labelled metrics get their values after the switch and are summed; an
        # unlabelled one made before it stays in its process, hence labels in the worker.
        assert output[:4] == ["2.0", "None", "2.0", "None"]

    def test_a_given_directory_is_emptied_of_a_previous_runs_files(self, tmp_path: Path) -> None:
        stale = tmp_path / "counter_999999999.db"
        stale.write_bytes(b"\0" * 16)
        keep = tmp_path / "README"
        keep.write_text("not ours")
        output = _run("", _env(**{ENV_VAR: str(tmp_path)}))
        assert float(output[0]) == 2.0
        assert output[-2:] == [str(tmp_path), "True"]  # given, so not ours to remove
        assert not stale.exists()
        assert keep.exists()

    def test_a_killed_masters_private_directory_is_removed_at_the_next_start(
        self, tmp_path: Path
    ) -> None:
        gone = subprocess.Popen([sys.executable, "-c", "pass"])
        gone.wait()
        orphan = tmp_path / f"prometheus-multiproc-{gone.pid}-abc123"
        alive = tmp_path / f"prometheus-multiproc-{os.getpid()}-def456"
        for directory in (orphan, alive):
            directory.mkdir()
            (directory / "counter_1.db").write_bytes(b"\0" * 16)
        output = _run("", _env(TMPDIR=str(tmp_path)))
        assert Path(output[-2]).parent == tmp_path
        assert not orphan.exists()
        assert alive.exists()

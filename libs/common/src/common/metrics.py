"""Prometheus metrics shared by the services, the HTTP middleware that records them,
and `GET /metrics`.

Metrics are module-level objects, as prometheus_client intends. Under gunicorn
(several workers) or Celery's prefork pool every process writes its own files
in `PROMETHEUS_MULTIPROC_DIR` (see `common.prometheus_multiprocess`) and a scrape sums the
live and dead processes' counters and the live processes' gauges. Without that
variable (tests in process, `make dev`) the default registry is used.

Metrics the Celery main process records must have labels: it switches to the
file store only at `worker_init`, after this module created the unlabelled ones.
"""

from __future__ import annotations

import asyncio
import hmac
import math
import weakref
from bisect import bisect_left
from typing import Any

from fastapi import APIRouter, Request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector
from pydantic import SecretStr
from sqlalchemy import event
from sqlalchemy.pool import Pool
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response
from starlette.types import Scope

from common.errors import problem
from common.prometheus_multiprocess import is_multiprocess

# The route label of a request no route matched (404s, rejected hosts): one
# value however many paths clients make up, so the label set stays bounded.
UNMATCHED_ROUTE = "unmatched"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_JOB_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)

# HTTP (api, realtime)
HTTP_REQUESTS = Counter("http_requests", "HTTP requests answered.", ("method", "route", "status"))
HTTP_REQUEST_DURATION = Histogram(
    "http_request_duration_seconds",
    "Time from a request's arrival to the end of its response.",
    ("method", "route", "status"),
    buckets=_HTTP_BUCKETS,
)
HTTP_IN_FLIGHT = Gauge(
    "http_requests_in_flight", "HTTP requests being served.", multiprocess_mode="livesum"
)

# Database (api)
DB_POOL_CHECKED_OUT = Gauge(
    "db_pool_checked_out",
    "Database connections checked out of the pool.",
    multiprocess_mode="livesum",
)
DB_POOL_SIZE = Gauge(
    "db_pool_size",
    "Configured persistent connections of the pools (overflow not included).",
    multiprocess_mode="livesum",
)

# Rate limits (api, realtime)
RATE_LIMIT_REJECTIONS = Counter(
    "rate_limit_rejections", "Hits refused because a limit was exhausted.", ("policy",)
)
RATE_LIMIT_BACKEND_FAILURES = Counter(
    "rate_limit_backend_failures",
    "Hits Redis could not count, by policy and whether the request was served (open).",
    ("policy", "outcome"),
)

# Jobs (accepted: api; the rest: worker)
JOBS_ACCEPTED = Counter("jobs_accepted", "Jobs accepted (202) by kind.", ("kind",))
JOBS_STARTED = Counter("jobs_started", "Job runs started (claimed) by kind.", ("kind",))
JOBS_FINISHED = Counter(
    "jobs_finished", "Jobs that reached a final state, by kind and state.", ("kind", "state")
)
JOBS_RETRIED = Counter(
    "jobs_retried", "Job runs given back to the queue after a transient error.", ("kind",)
)
JOBS_RUNNING = Gauge(
    "jobs_running", "Job runs in progress by kind.", ("kind",), multiprocess_mode="livesum"
)
JOB_DURATION = Histogram(
    "job_duration_seconds",
    "Run time of a job's final run, from claim to final state.",
    ("kind", "state"),
    buckets=_JOB_BUCKETS,
)

# Realtime
WS_CONNECTIONS = Gauge(
    "realtime_connections", "Open WebSocket connections.", multiprocess_mode="livesum"
)
WS_EVENTS_DELIVERED = Counter(
    "realtime_events_delivered", "Live events handed to sockets (one per socket per event)."
)
WS_SLOW_CONSUMERS_CLOSED = Counter(
    "realtime_slow_consumers_closed", "Sockets closed (1013) because their send queue filled."
)
REDIS_RECONNECTS = Counter(
    "realtime_redis_reconnects", "Times the Redis subscription was re-established after a loss."
)


def exposition_registry() -> CollectorRegistry:
    """What a scrape reads: every process's files in multiprocess mode, else this process."""
    if not is_multiprocess():
        return REGISTRY
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    return registry


def track_pool(pool: Pool) -> None:
    """Count `pool`'s checked-out connections in `db_pool_checked_out`; record its size.

    The size is read from the pool itself (what it holds), not from the setting
    it was built from. One pool per process: `db_pool_size` is set, not added
    to, so an engine rebuilt in the same process does not count twice.
    """
    size = getattr(pool, "size", None)
    DB_POOL_SIZE.set(size() if callable(size) else 0)

    def on_checkout(*_: object) -> None:
        DB_POOL_CHECKED_OUT.inc()

    def on_checkin(*_: object) -> None:
        DB_POOL_CHECKED_OUT.dec()

    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "checkin", on_checkin)


class HttpMetrics:
    """Counts and times each HTTP request by method, route template and status.

    `EdgeMiddleware` calls it, since it already times every request (one
    middleware layer, not two). The route comes from the router
    (`scope["route"]`), after the app ran, so a request to `/v1/jobs/<uuid>`
    is labelled `/v1/jobs/{job_id}` with no pattern matching here.

    A request only adds to counts in this process's memory; `flush` writes
    them to the metrics (in multiprocess mode, each sample a locked write to
    an mmap file), at most `FLUSH_SECONDS` after the first request that
    follows the last flush, before every scrape this process serves, and when
    the app shuts down. Five writes per request (in-flight up and down, the
    counter, the histogram's bucket and sum) were a fifth of `/health/live`'s
    CPU in process (11 of 56 us). So a scrape may miss the last second of
    another process's requests, and a process killed outright loses at most
    its last second.
    """

    FLUSH_SECONDS = 1.0

    def __init__(self) -> None:
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        # (method, route, status) -> [requests, seconds, per-bucket counts...]
        self._pending: dict[tuple[str, str, int], list[float]] = {}
        self._in_flight = 0
        self._flushing: asyncio.TimerHandle | None = None
        self._flushing_loop: asyncio.AbstractEventLoop | None = None
        _HTTP_METRICS.add(self)

    def started(self) -> None:
        self._in_flight += 1
        loop = asyncio.get_running_loop()
        if self._flushing is None or self._flushing_loop is not loop:
            self._flushing = loop.call_later(self.FLUSH_SECONDS, self.flush)
            self._flushing_loop = loop

    def finished(self, scope: Scope, status: int, seconds: float) -> None:
        self._in_flight -= 1
        method = scope["method"]
        # A made-up method would add a label value (and a cache entry) per request.
        if method not in _METHODS:
            method = "OTHER"
        route = getattr(scope.get("route"), "path", None) or UNMATCHED_ROUTE
        key = (method, route, status)
        pending = self._pending.get(key)
        if pending is None:
            pending = self._pending[key] = [0.0] * (2 + len(_HTTP_UPPER_BOUNDS))
        pending[0] += 1
        pending[1] += seconds
        # The bucket Histogram.observe would count it in: the first bound >= seconds.
        pending[2 + bisect_left(_HTTP_UPPER_BOUNDS, seconds)] += 1

    def flush(self) -> None:
        """Write the counts gathered since the last flush to the metrics."""
        if self._flushing is not None:
            self._flushing.cancel()
            self._flushing = None
        pending, self._pending = self._pending, {}
        HTTP_IN_FLIGHT.set(self._in_flight)
        for key, (requests, seconds, *buckets) in pending.items():
            children = self._children.get(key)
            if children is None:
                children = self._children[key] = _children(*key)
            counter, histogram = children
            counter.inc(requests)
            # Histogram.observe, for many observations at once: its sum, and
            # each bucket's count (prometheus_client stores them per bucket
            # and sums them at collection).
            histogram._sum.inc(seconds)
            for index, count in enumerate(buckets):
                if count:
                    histogram._buckets[index].inc(count)


def flush_http_metrics() -> None:
    """Flush every `HttpMetrics` of this process (before a scrape, and in tests)."""
    for metrics in list(_HTTP_METRICS):
        metrics.flush()


_HTTP_METRICS: weakref.WeakSet[HttpMetrics] = weakref.WeakSet()
_HTTP_UPPER_BOUNDS = (*_HTTP_BUCKETS, math.inf)


def _children(method: str, route: str, status: int) -> tuple[Any, Any]:
    labels = (method, route, str(status))
    return HTTP_REQUESTS.labels(*labels), HTTP_REQUEST_DURATION.labels(*labels)


def create_metrics_router(*, token: SecretStr | None) -> APIRouter:
    """`GET /metrics` in the text exposition format; with `token`, only for its bearer."""
    router = APIRouter()
    # An empty METRICS_TOKEN means none: it must not make `Bearer ` a valid credential.
    expected = token.get_secret_value().encode() if token is not None else None
    expected = expected or None

    @router.get("/metrics", include_in_schema=False)
    async def metrics(request: Request) -> Response:
        if expected is not None and not _has_token(request, expected):
            return problem(
                401,
                title="Not authenticated",
                detail="The metrics need the bearer token set in METRICS_TOKEN.",
                headers={"WWW-Authenticate": "Bearer"},
            )
        # This process's requests so far; then every process's files, read in the thread pool.
        flush_http_metrics()
        body = await run_in_threadpool(generate_latest, exposition_registry())
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return router


def _has_token(request: Request, expected: bytes) -> bool:
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), expected)

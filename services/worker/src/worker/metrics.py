"""The worker's Prometheus endpoint: job runs recorded in the pool processes, served by
the Celery main process on `WORKER_METRICS_PORT`.

Pull, not the push gateway: the worker is a long-running service that
Prometheus can scrape like the others (and mark down when it is gone), while
the gateway is meant for batch jobs that end before a scrape could reach them,
and would keep a dead worker's last values forever.

At `worker_init` (in the main process, before the pool forks) multiprocess mode
is turned on, so each pool process writes its own files and one scrape sums
them. A pool process that exits cleanly drops its live gauges itself; one that
was killed is swept at the next scrape. Queue depth and outbox backlog are
read at scrape time, from Redis and Postgres.
"""

from __future__ import annotations

import hmac
import json
import logging
import os
import re
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from celery.signals import worker_init, worker_process_shutdown, worker_ready, worker_shutdown
from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis import Redis
from redis.exceptions import RedisError
from sqlalchemy import Engine, create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from common import jobs_repository as jobs
from common.contracts.jobs import JobState

if TYPE_CHECKING:
    from wsgiref.types import StartResponse, WSGIApplication
from common.contracts.tasks import JOBS_QUEUE
from common.metrics import JOB_DURATION, JOBS_FINISHED, JOBS_RETRIED, JOBS_RUNNING, JOBS_STARTED
from common.prometheus_multiprocess import (
    ENV_VAR,
    is_alive,
    mark_process_dead,
    prepare_multiprocess_dir,
    remove_multiprocess_dir,
)
from common.redis import DRIVER_INFO
from worker.settings import WorkerSettings, get_settings

_logger = logging.getLogger("worker.metrics")
_LIVE_GAUGE_FILE = re.compile(r"^gauge_live\w*_(\d+)\.db$")
_serving: list[str] = []


def run_started(kind: str) -> float:
    """Count a claimed run of a `kind` job; the start time to hand to `run_ended`."""
    JOBS_STARTED.labels(kind).inc()
    JOBS_RUNNING.labels(kind).inc()
    return time.monotonic()


def run_retried(kind: str) -> None:
    """Count a run given back to the queue after a transient error."""
    JOBS_RETRIED.labels(kind).inc()


def run_ended(kind: str, outcome: JobState | None, started: float) -> float:
    """A run is over; `outcome` is the final state it recorded, None if it recorded none.

    Returns the run's duration in seconds.
    """
    seconds = time.monotonic() - started
    JOBS_RUNNING.labels(kind).dec()
    if outcome is not None:
        JOBS_FINISHED.labels(kind, outcome.value).inc()
        JOB_DURATION.labels(kind, outcome.value).observe(seconds)
    return seconds


def queue_key(settings: WorkerSettings) -> str:
    """The Redis list holding the jobs queue's messages (kombu prefixes it like every key)."""
    return f"{settings.redis_key_prefix}{JOBS_QUEUE}"


class WorkerCollector(Collector):
    """Every process's samples, plus queue depth and outbox backlog read at scrape time."""

    def __init__(self, settings: WorkerSettings) -> None:
        self._settings = settings
        self._files = MultiProcessCollector(None)  # type: ignore[no-untyped-call]
        # Connections per scrape (NullPool): none is left open for the pool
        # processes forked later to inherit.
        self._engine: Engine = create_engine(
            settings.sync_database_url,
            poolclass=NullPool,
            connect_args={"connect_timeout": max(1, int(settings.health_check_timeout))},
        )
        self._redis = Redis.from_url(
            settings.redis_url,
            socket_timeout=settings.health_check_timeout,
            socket_connect_timeout=settings.health_check_timeout,
            driver_info=DRIVER_INFO,
        )

    def collect(self) -> Iterator[Metric]:
        _sweep_dead_processes()
        yield from self._files.collect()  # type: ignore[no-untyped-call]
        depth = self._queue_depth()
        if depth is not None:
            yield GaugeMetricFamily(
                "jobs_queue_depth", "Messages waiting in the jobs queue (Redis).", value=depth
            )
        backlog = self._outbox_backlog()
        if backlog is not None:
            yield GaugeMetricFamily(
                "jobs_outbox_backlog",
                "Queued jobs whose message was not sent within a second (the relay sends them).",
                value=backlog,
            )

    def _queue_depth(self) -> int | None:
        try:
            return int(self._redis.llen(queue_key(self._settings)))
        except (RedisError, OSError) as exc:
            # A scrape still answers with what it has; the gap shows the outage.
            _logger.warning("queue depth unavailable: %s", type(exc).__name__)
            return None

    def _outbox_backlog(self) -> int | None:
        try:
            with self._engine.connect() as connection:
                return int(
                    connection.execute(
                        jobs.OUTBOX_BACKLOG, {"after": jobs.BACKLOG_AFTER_SECONDS}
                    ).scalar_one()
                )
        except SQLAlchemyError as exc:
            _logger.warning("outbox backlog unavailable: %s", type(exc).__name__)
            return None


def _sweep_dead_processes() -> None:
    # A pool process killed with SIGKILL never ran its shutdown signal.
    directory = Path(os.environ[ENV_VAR])
    for path in directory.glob("gauge_live*_*.db"):
        match = _LIVE_GAUGE_FILE.match(path.name)
        if match and not is_alive(int(match.group(1))):
            mark_process_dead(int(match.group(1)))


class _QuietHandler(WSGIRequestHandler):
    """No access line per scrape on stderr (as prometheus_client's own server)."""

    def log_message(self, format: str, *args: Any) -> None:
        return


def _start_server(host: str, port: int, app: WSGIApplication) -> None:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    httpd = make_server(host, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=httpd.serve_forever, name="metrics", daemon=True).start()


def _bearer_only(app: WSGIApplication, expected: bytes) -> WSGIApplication:
    """`app` behind `Authorization: Bearer <METRICS_TOKEN>` (401 otherwise), as on the web
    services; compared in constant time."""

    def guarded(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        scheme, _, credentials = environ.get("HTTP_AUTHORIZATION", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(credentials.encode(), expected):
            return app(environ, start_response)
        body = json.dumps(
            {
                "type": "about:blank",
                "title": "Not authenticated",
                "status": 401,
                "detail": "The metrics need the bearer token set in METRICS_TOKEN.",
            }
        ).encode()
        start_response(
            "401 Unauthorized",
            [
                ("Content-Type", "application/problem+json"),
                ("Content-Length", str(len(body))),
                ("WWW-Authenticate", "Bearer"),
            ],
        )
        return [body]

    return guarded


def serve(settings: WorkerSettings) -> bool:
    """Serve metrics from this (main) process; False if they are off or the port is taken."""
    if not settings.worker_metrics_port:
        return False
    prepare_multiprocess_dir()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(WorkerCollector(settings))
    app = make_wsgi_app(registry)
    if settings.metrics_token is not None:
        app = _bearer_only(app, settings.metrics_token.get_secret_value().encode())
    try:
        _start_server(settings.worker_metrics_host, settings.worker_metrics_port, app)
    except OSError as exc:
        # Metrics are not worth refusing to run jobs for.
        _logger.error(
            "worker metrics not served on %s:%d: %s",
            settings.worker_metrics_host,
            settings.worker_metrics_port,
            exc,
        )
        return False
    _serving.append(f"{settings.worker_metrics_host}:{settings.worker_metrics_port}")
    return True


@worker_init.connect
def _serve_metrics(**_: Any) -> None:
    serve(get_settings())


@worker_ready.connect
def _log_address(**_: Any) -> None:
    # Logging is configured by now; at worker_init an INFO line would be dropped.
    for address in _serving:
        _logger.info("worker metrics on %s/metrics", address)


@worker_process_shutdown.connect
def _drop_live_gauges(**_: Any) -> None:
    mark_process_dead(os.getpid())


@worker_shutdown.connect
def _remove_files(**_: Any) -> None:
    remove_multiprocess_dir()

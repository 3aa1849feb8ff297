"""The gunicorn settings every web service shares, read from the environment.

A service's `gunicorn.conf.py` is `globals().update(gunicorn_settings(...))`
with its own port, worker class and recycling default: uvicorn workers, one
per core, graceful shutdown longer than the drain, a preloaded app, real
client IPs behind the proxy, JSON logs, and Prometheus multiprocess mode.
"""

from __future__ import annotations

import multiprocessing
import os
from typing import Any

from common.heap import gunicorn_pre_fork, gunicorn_when_ready
from common.logging import logging_config
from common.prometheus_multiprocess import (
    gunicorn_child_exit,
    gunicorn_on_exit,
    prepare_multiprocess_dir,
)


def gunicorn_settings(
    *, default_port: int, worker_class: str, max_requests: int, max_requests_jitter: int
) -> dict[str, Any]:
    """Gunicorn's settings (module-level names of a config file) for one service."""
    env = os.environ.get
    forwarded_allow_ips = env("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
    log_level = env("LOG_LEVEL", "INFO").upper()
    # Prometheus multiprocess mode: each worker writes its samples to files that
    # /metrics sums. Prepared here, before the preloaded app imports
    # prometheus_client, and once per master (a HUP reload keeps the live files).
    prepare_multiprocess_dir()
    return {
        "bind": f"0.0.0.0:{env('PORT', str(default_port))}",
        "worker_class": worker_class,
        # Async workers: one per core serves thousands of connections each.
        "workers": int(env("WEB_CONCURRENCY") or multiprocessing.cpu_count()),
        "max_requests": int(env("GUNICORN_MAX_REQUESTS", str(max_requests))),
        "max_requests_jitter": int(env("GUNICORN_MAX_REQUESTS_JITTER", str(max_requests_jitter))),
        "timeout": int(env("GUNICORN_TIMEOUT", "60")),
        # After SIGTERM a worker keeps serving SHUTDOWN_DRAIN_SECONDS (readiness
        # 503) before it stops; the master must not kill it before that ends.
        "graceful_timeout": max(
            int(env("GUNICORN_GRACEFUL_TIMEOUT", "30")),
            int(float(env("SHUTDOWN_DRAIN_SECONDS", "0"))) + 10,
        ),
        "keepalive": int(env("GUNICORN_KEEPALIVE", "5")),
        # Safe to preload: create_app() builds no engine, client or loop; the
        # lifespan does, in each worker after the fork.
        "preload_app": env("GUNICORN_PRELOAD", "true").lower() == "true",
        "forwarded_allow_ips": forwarded_allow_ips,
        "proxy_allow_ips": forwarded_allow_ips,
        # JSON logs for gunicorn's own lines. The access log is the app's
        # EdgeMiddleware's (duration_ms, request_id): under uvicorn workers
        # gunicorn's access_log_format (%(D)s) is never applied, so it is off.
        "accesslog": None,
        "logconfig_dict": logging_config(log_level),
        "loglevel": log_level.lower(),
        # One gunicorn per service and test on a machine: no shared control socket.
        "control_socket_disable": True,
        # A reaped worker's live gauges leave the sum (its counters stay); the
        # master removes the metrics directory it made when it exits.
        "child_exit": gunicorn_child_exit,
        "on_exit": gunicorn_on_exit,
        # The preloaded app's objects out of every full collection (common.heap).
        "when_ready": gunicorn_when_ready,
        "pre_fork": gunicorn_pre_fork,
    }

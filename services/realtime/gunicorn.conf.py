"""Gunicorn configuration of the realtime service, read entirely from the environment.

`gunicorn -c services/realtime/gunicorn.conf.py realtime.main:app`. Uvicorn
workers (with our WebSocket limits), graceful shutdown, preloaded app, real
client IPs behind the proxy.
"""

from __future__ import annotations

import multiprocessing
import os

from common.logging import logging_config
from common.multiproc import gunicorn_child_exit, gunicorn_on_exit, prepare_multiprocess_dir

_env = os.environ.get

bind = f"0.0.0.0:{_env('PORT', '8001')}"
# uvicorn_worker.UvicornWorker with ws_max_size, heartbeats and no compression (realtime.serving).
worker_class = "realtime.serving.UvicornWorker"
# Async workers: one per core holds thousands of sockets each.
workers = int(_env("WEB_CONCURRENCY") or multiprocessing.cpu_count())
# Off by default: handshakes count as requests, and recycling a worker closes
# every socket it holds (1012), making all of them reconnect and resume at once.
max_requests = int(_env("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = int(_env("GUNICORN_MAX_REQUESTS_JITTER", "0"))
timeout = int(_env("GUNICORN_TIMEOUT", "60"))
# On SIGTERM uvicorn closes every socket with 1012 at once; this bounds the
# drain (SHUTDOWN_DRAIN_SECONDS) plus the lifespan shutdown.
graceful_timeout = max(
    int(_env("GUNICORN_GRACEFUL_TIMEOUT", "30")),
    int(float(_env("SHUTDOWN_DRAIN_SECONDS", "0"))) + 10,
)
keepalive = int(_env("GUNICORN_KEEPALIVE", "5"))
# Safe to preload: create_app() builds no client, subscription or loop; the
# lifespan does, in each worker after the fork.
preload_app = _env("GUNICORN_PRELOAD", "true").lower() == "true"
forwarded_allow_ips = _env("FORWARDED_ALLOW_IPS", "127.0.0.1,::1")
proxy_allow_ips = forwarded_allow_ips

# JSON logs for gunicorn's own lines; the access log is the app's middleware.
accesslog = None
_log_level = _env("LOG_LEVEL", "INFO").upper()
logconfig_dict = logging_config(_log_level)
loglevel = _log_level.lower()
# One gunicorn per service and test on a machine: no shared control socket.
control_socket_disable = True

# Prometheus multiprocess mode: each worker writes its samples to files that
# /metrics sums. Set here, before the preloaded app imports prometheus_client,
# and once per master (a HUP reload keeps the directory and the live files).
prepare_multiprocess_dir()
# A reaped worker's live gauges (in-flight, pool, connections) leave the sum;
# its counters stay. The master removes the directory it made when it exits.
child_exit = gunicorn_child_exit
on_exit = gunicorn_on_exit

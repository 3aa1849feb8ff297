"""Gunicorn configuration of the realtime service, read entirely from the environment.

`gunicorn -c services/realtime/gunicorn.conf.py realtime.main:app`. Uvicorn
workers (with our WebSocket limits), graceful shutdown, preloaded app, real
client IPs behind the proxy (the shared settings: `common.gunicorn`).
"""

from __future__ import annotations

from common.gunicorn import gunicorn_settings

globals().update(
    gunicorn_settings(
        default_port=8001,
        # uvicorn_worker.UvicornWorker with ws_max_size, heartbeats, no compression.
        worker_class="realtime.serving.WebSocketUvicornWorker",
        # Off by default: handshakes count as requests, and recycling a worker
        # closes every socket it holds (1012), making all of them reconnect at once.
        max_requests=0,
        max_requests_jitter=0,
    )
)

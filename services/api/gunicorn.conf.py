"""Gunicorn configuration of the API, read entirely from the environment.

`gunicorn -c services/api/gunicorn.conf.py api.main:app`. Follows the
deployment guide: uvicorn workers, recycled against slow leaks, graceful
shutdown, preloaded app, real client IPs behind the proxy (the shared
settings: `common.gunicorn`).

Recycling (api.serving): a worker retires when its memory grew
`GUNICORN_MAX_MEMORY_GROWTH_MB` (128) over its warm baseline, and after
`GUNICORN_MAX_REQUESTS` (+ up to `GUNICORN_MAX_REQUESTS_JITTER`) requests as a
backstop; one worker at a time, closing its keep-alive connections cleanly.
The backstop is sized so that, at the highest rate a worker reaches, a
recycle (a fresh worker's start) costs well under 1% of throughput.
"""

from __future__ import annotations

from common.gunicorn import gunicorn_settings

globals().update(
    gunicorn_settings(
        default_port=8000,
        # uvicorn_worker.UvicornWorker, retiring without dropping a request.
        worker_class="api.serving.RetiringUvicornWorker",
        max_requests=100_000,
        max_requests_jitter=10_000,
    )
)

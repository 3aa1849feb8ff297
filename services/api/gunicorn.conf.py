"""Gunicorn configuration of the API, read entirely from the environment.

`gunicorn -c services/api/gunicorn.conf.py api.main:app`. Follows the
deployment guide: uvicorn workers, recycled after `max_requests` with jitter,
graceful shutdown, preloaded app, real client IPs behind the proxy (the shared
settings: `common.gunicorn`).
"""

from __future__ import annotations

from common.gunicorn import gunicorn_settings

globals().update(
    gunicorn_settings(
        default_port=8000,
        # uvicorn_worker.UvicornWorker, minus resetting just-accepted requests on stop.
        worker_class="api.serving.UvicornWorker",
        max_requests=1000,
        max_requests_jitter=50,
    )
)

"""The realtime application: `create_app(settings)` and `app` for gunicorn."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI

from common.health import Lifecycle, create_health_router, redis_check
from common.logging import configure_logging
from common.metrics import create_metrics_router
from common.middleware import (
    UnhandledErrorMiddleware,
    add_edge_middleware,
)
from common.ratelimit import RateLimiter, build_policies
from common.redis import create_redis
from common.tracing import configure_tracing, instrument_app, shutdown_tracing
from realtime import capacity
from realtime.endpoint import router as socket_router
from realtime.hub import Hub, create_pubsub_redis
from realtime.settings import RealtimeSettings, get_settings

CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
_logger = logging.getLogger("realtime")


def _lifespan(settings: RealtimeSettings) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        # Built here, after gunicorn forked: one subscription per worker process
        # (and one span exporter thread).
        configure_tracing(settings.service_name)
        redis = create_redis(settings)
        pubsub_redis = create_pubsub_redis(settings)
        hub = Hub(pubsub_redis, settings)
        lifecycle = Lifecycle(drain_seconds=settings.shutdown_drain_seconds)
        hub.start()
        lifecycle.install()
        try:
            yield {
                "settings": settings,
                "redis": redis,
                "hub": hub,
                "lifecycle": lifecycle,
                "rate_limiter": RateLimiter(
                    redis,
                    key_prefix=settings.redis_key_prefix,
                    policies=build_policies(settings, settings.rate_limit_specs()),
                ),
                "health_checks": {"redis": redis_check(redis), "subscription": hub.check},
            }
        finally:
            lifecycle.uninstall()
            await hub.stop()
            await pubsub_redis.aclose()
            await redis.aclose()
            shutdown_tracing()

    return lifespan


def create_app(settings: RealtimeSettings | None = None) -> FastAPI:
    """Build the realtime service for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="Realtime",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=_lifespan(settings),
        debug=False,
    )
    app.include_router(create_health_router())
    app.include_router(create_metrics_router(token=settings.metrics_token))
    app.include_router(socket_router)

    # Added innermost first: a request meets them in the reverse order.
    app.add_middleware(UnhandledErrorMiddleware)
    add_edge_middleware(app, settings, csp=CONTENT_SECURITY_POLICY)
    instrument_app(app)
    # Outermost: a socket beyond the memory budget costs nothing further.
    budget = capacity.memory_budget(settings)
    limit = capacity.connection_limit(settings, budget)
    _logger.info("%s", capacity.describe(settings, budget, limit))
    app.add_middleware(capacity.ConnectionLimit, limit=limit)
    return app


app = create_app()

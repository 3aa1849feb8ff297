"""The realtime application: `create_app(settings)` and `app` for gunicorn."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from common.health import Lifecycle, create_health_router, redis_check
from common.heap import freeze_worker_heap
from common.logging import configure_logging
from common.metrics import create_metrics_router
from common.middleware import (
    HostCheckMiddleware,
    UnhandledErrorMiddleware,
    add_edge_middleware,
)
from common.ratelimit import RateLimiter
from common.redis import create_redis, create_subscriber_redis
from common.revocation import Revocations
from common.routing import add_routes
from common.tracing import configure_tracing, instrument_app, shutdown_tracing
from realtime import capacity, endpoint
from realtime.hub import Hub
from realtime.logs import strip_credentials
from realtime.presence import UserSockets
from realtime.settings import RealtimeSettings, get_settings
from realtime.state import RealtimeState

CONTENT_SECURITY_POLICY = "default-src 'none'; frame-ancestors 'none'"
_logger = logging.getLogger("realtime")


def _lifespan(settings: RealtimeSettings) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[RealtimeState]:
        # Built here, after gunicorn forked: one subscription per worker process
        # (and one span exporter thread).
        configure_tracing(settings.service_name)
        redis = create_redis(settings)
        pubsub_redis = create_subscriber_redis(settings)
        hub = Hub(pubsub_redis, settings)
        lifecycle = Lifecycle(drain_seconds=settings.shutdown_drain_seconds)
        user_sockets = UserSockets(
            redis, prefix=settings.redis_key_prefix, cap=settings.ws_max_connections_per_user
        )
        # Logout and password change close the user's sockets (and refuse old tokens).
        revocations = Revocations.from_settings(redis, settings, on_revoke=hub.revoke)
        subscriber = create_subscriber_redis(settings)
        revocation_listener = asyncio.create_task(revocations.listen(subscriber))
        hub.start()
        renewing = asyncio.create_task(user_sockets.keep_renewing(hub.open_sockets))
        lifecycle.install()
        # This worker's start-up is done: its objects out of every full collection.
        freeze_worker_heap()
        try:
            yield {
                "settings": settings,
                "redis": redis,
                "hub": hub,
                "user_sockets": user_sockets,
                "lifecycle": lifecycle,
                "revocations": revocations,
                "rate_limiter": RateLimiter.from_settings(
                    redis, settings, settings.rate_limit_specs()
                ),
                "health_checks": {"redis": redis_check(redis), "subscription": hub.check},
            }
        finally:
            lifecycle.uninstall()
            await revocations.stop_listening(revocation_listener)
            await subscriber.aclose()
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing
            await hub.stop()
            await pubsub_redis.aclose()
            await redis.aclose()
            shutdown_tracing()

    return lifespan


class RealtimeApp(FastAPI):
    """FastAPI for HTTP; `/ws` handshakes go straight to `socket_app`.

    A socket lives for hours and every layer it passes through keeps a frame
    for as long, so `/ws` skips the HTTP middleware (request id, access log,
    security headers, error pages, tracing: none of them acts on a socket
    after its handshake) and FastAPI's routing. It keeps what a socket needs:
    the connection limit, the real client address and the host check.
    """

    socket_app: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            self.socket_app is not None
            and scope["type"] == "websocket"
            and scope["path"] == endpoint.PATH
        ):
            await self.socket_app(scope, receive, send)
            return
        await super().__call__(scope, receive, send)


def _socket_app(settings: RealtimeSettings, limit: int) -> ASGIApp:
    hosts = HostCheckMiddleware(endpoint.events_socket, allowed_hosts=settings.allowed_hosts)
    # Outermost: a socket beyond the memory budget costs nothing further. The
    # client's address behind the proxy is the server's (uvicorn's) work.
    return capacity.ConnectionLimit(hosts, limit=limit)


def create_app(settings: RealtimeSettings | None = None) -> FastAPI:
    """Build the realtime service for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    strip_credentials()
    app = RealtimeApp(
        title="Realtime",
        version="0.1.0",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
        lifespan=_lifespan(settings),
        debug=False,
    )
    add_routes(app, create_health_router())
    add_routes(app, create_metrics_router(token=settings.metrics_token))

    # Added innermost first: a request meets them in the reverse order.
    app.add_middleware(UnhandledErrorMiddleware)
    add_edge_middleware(app, settings, csp=CONTENT_SECURITY_POLICY)
    instrument_app(app)
    budget = capacity.memory_budget(settings)
    limit = capacity.connection_limit(settings, budget)
    _logger.info("%s", capacity.describe(settings, budget, limit))
    app.socket_app = _socket_app(settings, limit)
    return app


app = create_app()

"""The API application: `create_app(settings)` and `app` for gunicorn."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, FastAPI

from api import docs
from api.auth.passwords import PasswordHasher
from api.auth.router import password_router, publish_password_rule
from api.auth.router import router as auth_router
from api.capacity import hashing_plan, memory_budget
from api.jobs.intake import JobIntake
from api.jobs.router import router as jobs_router
from api.realtime.router import router as realtime_router
from api.settings import ApiSettings, get_settings
from api.state import ApiState
from api.users.router import router as users_router
from common.broker import create_celery
from common.connection_budget import check_connection_budget, share_of
from common.db import autocommit_engine, create_engine, create_session_factory
from common.errors import install_error_handlers
from common.health import Lifecycle, create_health_router, postgres_check, redis_check
from common.heap import freeze_worker_heap
from common.logging import configure_logging
from common.metrics import create_metrics_router
from common.middleware import (
    BodySizeLimitMiddleware,
    ProblemCORSMiddleware,
    UnhandledErrorMiddleware,
    add_edge_middleware,
)
from common.ratelimit import RateLimiter
from common.redis import create_redis, create_subscriber_redis
from common.revocation import Revocations
from common.routing import add_routes
from common.tracing import configure_tracing, instrument_app, instrument_engine, shutdown_tracing

DESCRIPTION = """
Users, JWT auth and long jobs: `POST /v1/jobs` answers `202 Accepted` with a
`Location`; a Celery worker runs the job and records its progress, which
`GET /v1/jobs/{id}` shows. Errors are `application/problem+json`
with a `request_id`; every response carries `X-Request-ID`.

Authorize with **Authorize** (OAuth2 password flow) after registering.
"""
_logger = logging.getLogger("api")
TAGS = [
    {"name": "auth", "description": "Register, log in, rotate and revoke tokens."},
    {"name": "users", "description": "The signed-in user."},
    {"name": "jobs", "description": "Long jobs: accept (202), watch, list, cancel."},
    {"name": "realtime", "description": "Tickets for the WebSocket service's handshake."},
    {"name": "health", "description": "Liveness and readiness for load balancers."},
]


def _lifespan(settings: ApiSettings) -> Any:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[ApiState]:
        # Built here, after gunicorn forked, so no worker shares a pool or a loop
        # (nor the span exporter's thread).
        configure_tracing(settings.service_name)
        engine = create_engine(settings)
        instrument_engine(engine.sync_engine)
        redis = create_redis(settings)
        # The intake pushes job messages itself; on the same client when one Redis is both.
        broker = redis
        if settings.broker_url and settings.broker_url != settings.redis_url:
            broker = create_redis(settings.model_copy(update={"redis_url": settings.broker_url}))
        lifecycle = Lifecycle(drain_seconds=settings.shutdown_drain_seconds)
        celery = create_celery(settings, main="api", sender=True)
        intake = JobIntake(
            engine,
            redis,
            broker,
            key_prefix=settings.redis_key_prefix,
            max_active=settings.jobs_max_active_per_user,
        )
        budget = memory_budget(settings)
        plan = hashing_plan(settings, budget)
        _logger.info("worker %d: %s; %s", os.getpid(), budget.describe(), plan.describe())
        # Its hashing server starts on the first login: a worker starts fast.
        password_hasher = PasswordHasher(plan, wait_seconds=settings.password_hash_wait_seconds)
        revocations = Revocations.from_settings(redis, settings)
        subscriber = create_subscriber_redis(settings)
        revocation_listener = asyncio.create_task(revocations.listen(subscriber))
        lifecycle.install()
        # One query per worker process, off the request path: a warning when this
        # service's pools can exceed what Postgres allows. Never stops the start.
        budget_check = asyncio.create_task(
            check_connection_budget(
                engine,
                service=settings.service_name,
                share=share_of(settings, processes=settings.web_workers),
            )
        )
        # This worker's start-up is done: its objects out of every full collection.
        freeze_worker_heap()
        try:
            yield {
                "settings": settings,
                "engine": engine,
                "autocommit_engine": autocommit_engine(engine),
                "session_factory": create_session_factory(engine),
                "redis": redis,
                "lifecycle": lifecycle,
                "password_hasher": password_hasher,
                "celery": celery,
                "job_intake": intake,
                "revocations": revocations,
                "rate_limiter": RateLimiter.from_settings(
                    redis, settings, settings.rate_limit_specs()
                ),
                "health_checks": {"postgres": postgres_check(engine), "redis": redis_check(redis)},
            }
        finally:
            lifecycle.uninstall()
            budget_check.cancel()
            await asyncio.gather(budget_check, return_exceptions=True)
            await revocations.stop_listening(revocation_listener)
            await subscriber.aclose()
            await intake.close()
            celery.close()
            await password_hasher.aclose()
            await redis.aclose()
            if broker is not redis:
                await broker.aclose()
            await engine.dispose()
            shutdown_tracing()

    return lifespan


def routers(settings: ApiSettings) -> list[APIRouter]:
    """The API's routers, in the order a request is matched against their routes."""
    return [
        create_health_router(),
        jobs_router,
        auth_router,
        users_router,
        password_router,
        realtime_router,
        create_metrics_router(token=settings.metrics_token),
    ]


def create_app(settings: ApiSettings | None = None) -> FastAPI:
    """Build the API for `settings` (default: from the environment)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level)
    app = FastAPI(
        title="Jobs API",
        version="0.1.0",
        description=DESCRIPTION,
        openapi_tags=TAGS,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json" if settings.docs_enabled else None,
        lifespan=_lifespan(settings),
        debug=False,
        # FastAPI's own OpenTelemetry layer stays off: `common.tracing` instruments
        # the app when OTEL is configured, and /metrics is Prometheus'. Off, it
        # costs no look at the global providers per request.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    install_error_handlers(app)
    # A request is matched against the routes in this order: the busiest first
    # (load balancers' health checks, then the jobs API). Matched past the
    # others, a job read cost 7% more instructions. Added to the app itself
    # (`add_routes`), not behind included routers, which match twice.
    for router in routers(settings):
        add_routes(app, router)
    publish_password_rule(app, min_length=settings.password_min_length)
    if settings.docs_enabled:
        docs.install_docs(app)

    # Added innermost first: a request meets them in the reverse order.
    app.add_middleware(UnhandledErrorMiddleware)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(
        ProblemCORSMiddleware,
        allow_origins=settings.cors_origins,
        allow_credentials=settings.cors_allow_credentials,
        allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID"],
        expose_headers=["Location", "X-Request-ID", "Retry-After", "RateLimit", "RateLimit-Policy"],
        max_age=settings.cors_max_age,
    )
    add_edge_middleware(app, settings, csp=docs.CONTENT_SECURITY_POLICY)
    instrument_app(app)
    return app


app = create_app()

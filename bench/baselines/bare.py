"""The bare baseline app: `gunicorn -c services/api/gunicorn.conf.py bench.baselines.bare:app`.

FastAPI with no middleware, no auth and no rate limit: `GET /health/live`
answers the same JSON as ours, and `GET /v1/jobs/{id}` reads the same row by
primary key through a raw asyncpg pool. `/health/ready` exists so the bench
starts it like ours.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from fastapi import FastAPI, HTTPException, Request

_JOB = (
    "SELECT id, kind, state, progress, params, result, error, created_at, started_at, "
    "finished_at FROM jobs WHERE id = $1"
)


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
    # As Render gives it (postgres://...) or with a SQLAlchemy driver: asyncpg wants neither.
    _, _, rest = os.environ["DATABASE_URL"].partition("://")
    dsn = f"postgresql://{rest}"
    # The same pool size as the API's engine (DB_POOL_SIZE, 10 by default).
    pool = await asyncpg.create_pool(dsn, min_size=10, max_size=10)
    try:
        yield {"pool": pool}
    finally:
        await pool.close()


app = FastAPI(lifespan=_lifespan, openapi_url=None, docs_url=None, redoc_url=None)


@app.get("/health/live")
async def live() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/health/ready")
async def ready() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/v1/jobs/{job_id}")
async def get_job(job_id: uuid.UUID, request: Request) -> dict[str, Any]:
    row = await request.state.pool.fetchrow(_JOB, job_id)
    if row is None:
        raise HTTPException(status_code=404)
    return dict(row)

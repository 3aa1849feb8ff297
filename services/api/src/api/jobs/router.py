"""/v1/jobs: accept long jobs (202 + Location), read, list, cancel; and the kinds."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Query, Response, status
from starlette.requests import HTTPConnection

from api.auth.schemas import NO_CONTROL_CHARACTERS
from api.dependencies import Intake, RedisClient, Settings
from api.jobs import service as jobs_service
from api.jobs.dependencies import IdempotencyKey
from api.jobs.schemas import JobCreate, JobKindRead, JobPage, JobRead
from common.auth import CurrentPrincipal
from common.contracts.jobs import JobState
from common.db import DbEngine, DbSession
from common.openapi import problem_responses
from common.ratelimit import rate_limit

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], responses=problem_responses(429))
# Reads change nothing: their limit is counted while they run.
_READS = [rate_limit("reads", concurrent=True)]
_WRITES = [rate_limit("writes")]


@router.post(
    "",
    status_code=status.HTTP_202_ACCEPTED,
    summary="Accept a job",
    dependencies=_WRITES,
    response_description="Accepted (202), or the existing job for a repeated Idempotency-Key (200)",
    responses={
        200: {"model": JobRead, "description": "Replay of an Idempotency-Key"},
        **problem_responses(401, 422),
    },
)
async def create_job(
    body: JobCreate,
    principal: CurrentPrincipal,
    intake: Intake,
    connection: HTTPConnection,
    response: Response,
    settings: Settings,
    idempotency_key: IdempotencyKey = None,
) -> JobRead:
    job, created = await jobs_service.create_job(
        intake,
        owner_id=principal.user_id,
        kind=body.kind,
        params=body.params,
        idempotency_key=idempotency_key,
        settings=settings,
        traceparent=connection.headers.get("traceparent"),
    )
    if not created:
        response.status_code = status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return JobRead.model_validate(job)


@router.get(
    "",
    summary="List my jobs, newest first",
    dependencies=_READS,
    responses=problem_responses(401, 422),
)
async def list_jobs(
    principal: CurrentPrincipal,
    session: DbSession,
    state: JobState | None = None,
    kind: str | None = Query(default=None, max_length=100, pattern=NO_CONTROL_CHARACTERS),
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: str | None = Query(default=None, max_length=200),
) -> JobPage:
    jobs, next_cursor = await jobs_service.list_jobs(
        session, owner_id=principal.user_id, state=state, kind=kind, limit=limit, cursor=cursor
    )
    return JobPage(items=[JobRead.model_validate(j) for j in jobs], next_cursor=next_cursor)


@router.get(
    "/kinds", summary="The job kinds and their parameters", tags=["jobs"], dependencies=_READS
)
async def list_kinds(settings: Settings) -> list[JobKindRead]:
    return [
        JobKindRead(
            name=kind.name,
            description=kind.description,
            params_schema=kind.params_model.model_json_schema(),
        )
        for kind in jobs_service.enabled_kinds(settings)
    ]


@router.get(
    "/{job_id}",
    summary="One of my jobs",
    dependencies=_READS,
    responses=problem_responses(401, 404, 422),
)
async def get_job(job_id: uuid.UUID, principal: CurrentPrincipal, engine: DbEngine) -> JobRead:
    job = await jobs_service.read_job(engine, owner_id=principal.user_id, job_id=job_id)
    return JobRead.model_validate(job)


@router.post(
    "/{job_id}/cancel",
    summary="Cancel a job (queued: at once; running: at its next checkpoint)",
    dependencies=_WRITES,
    responses=problem_responses(401, 404, 409, 422),
)
async def cancel_job(
    job_id: uuid.UUID,
    principal: CurrentPrincipal,
    session: DbSession,
    settings: Settings,
    redis: RedisClient,
) -> JobRead:
    job = await jobs_service.cancel_job(
        session,
        owner_id=principal.user_id,
        job_id=job_id,
        redis=redis,
        prefix=settings.redis_key_prefix,
    )
    return JobRead.model_validate(job)

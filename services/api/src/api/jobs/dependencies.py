"""Jobs dependencies: the job intake, the Celery sender and the Idempotency-Key header."""

from __future__ import annotations

from typing import Annotated

from celery import Celery
from fastapi import Depends, Header
from starlette.requests import HTTPConnection

from api.jobs.intake import JobIntake


async def get_intake(connection: HTTPConnection) -> JobIntake:
    """The process's job intake (group commit), from the lifespan state."""
    intake: JobIntake = connection.state.job_intake
    return intake


def get_celery(connection: HTTPConnection) -> Celery:
    """The process's Celery app (sending only), from the lifespan state."""
    celery: Celery = connection.state.celery
    return celery


IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        pattern=r"^[\x21-\x7e]+$",
        description="Same key and body: the same job, never a second one",
    ),
]
CeleryApp = Annotated[Celery, Depends(get_celery)]
Intake = Annotated[JobIntake, Depends(get_intake)]

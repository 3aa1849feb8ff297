"""`ApiState`: what the API's lifespan yields, declared once.

Routers never read it: they take the `Annotated` dependencies of
`api.dependencies` (and `common.db`), which read it through `api_state`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from api.settings import ApiSettings
from common.state import CommonState, DatabaseState

if TYPE_CHECKING:
    from celery import Celery
    from starlette.requests import HTTPConnection

    from api.auth.passwords import PasswordHasher
    from api.jobs.intake import JobIntake


class ApiState(CommonState[ApiSettings], DatabaseState):
    """The API process's pools, clients and services, built in its lifespan."""

    password_hasher: PasswordHasher
    celery: Celery
    job_intake: JobIntake


def api_state(connection: HTTPConnection) -> ApiState:
    """This request's copy of the API's lifespan state."""
    return cast("ApiState", connection.scope["state"])

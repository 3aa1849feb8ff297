"""/v1/users: the signed-in user (its password change: `api.auth.router.password_router`)."""

from __future__ import annotations

from fastapi import APIRouter, Response

from api.users.dependencies import CurrentUser
from api.users.schemas import UserRead
from common.openapi import problem_responses
from common.ratelimit import rate_limit

router = APIRouter(prefix="/v1/users", tags=["users"], responses=problem_responses(429))


@router.get(
    "/me",
    summary="The signed-in user",
    dependencies=[rate_limit("reads")],
    responses=problem_responses(401),
)
async def me(user: CurrentUser, response: Response) -> UserRead:
    response.headers["Cache-Control"] = "no-store"
    return UserRead.model_validate(user)

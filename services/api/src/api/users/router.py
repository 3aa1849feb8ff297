"""/v1/users: the signed-in user, and a change of their password."""

from __future__ import annotations

from fastapi import APIRouter, Response, status

from api.auth import service as auth_service
from api.auth.dependencies import CurrentUser
from api.dependencies import Hasher, Revocations, Settings
from api.users.schemas import PasswordChange, UserRead
from common.db import DbSession
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


@router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change the password; every session of the user is signed out",
    dependencies=[rate_limit("auth")],
    responses=problem_responses(401, 403, 422, 503),
)
async def change_password(
    body: PasswordChange,
    user: CurrentUser,
    session: DbSession,
    settings: Settings,
    hasher: Hasher,
    revocations: Revocations,
) -> None:
    """Every refresh token and access token of the user is revoked, this one's too."""
    await auth_service.change_password(
        session,
        user=user,
        current_password=body.current_password,
        new_password=body.new_password,
        hasher=hasher,
        min_length=settings.password_min_length,
    )
    await session.commit()
    await revocations.revoke_all(user.id)

"""/v1/auth: register, token (OAuth2 password flow), refresh, logout; and /v1/users/me/password.

The password change sits under /v1/users but is auth's: it hashes, and ends
every session (`password_router`, mounted beside `api.users.router`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Response, status
from starlette.requests import HTTPConnection

from api.auth import login_attempts
from api.auth import service as auth_service
from api.auth.schemas import (
    LoginForm,
    PasswordChange,
    RefreshRequest,
    TokenResponse,
    UserCreate,
    login_form,
)
from api.dependencies import Hasher, Limiter, RedisClient, Revocations, Settings
from api.users.dependencies import CurrentUser
from api.users.schemas import UserRead
from common.db import DbEngine, DbSession
from common.openapi import problem_responses
from common.ratelimit import client_ip, rate_limit

router = APIRouter(
    prefix="/v1/auth",
    tags=["auth"],
    responses=problem_responses(429, 503),
)
password_router = APIRouter(prefix="/v1/users", tags=["users"], responses=problem_responses(429))
# Anonymous routes count per client address whatever token is sent; logout and
# the password change per user.
_ANONYMOUS = [rate_limit("auth", by_ip=True)]
_AUTHENTICATED = [rate_limit("auth")]
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _token_response(response: Response, pair: auth_service.TokenPair) -> TokenResponse:
    response.headers.update(_NO_STORE)
    return TokenResponse(
        access_token=pair.access_token, refresh_token=pair.refresh_token, expires_in=pair.expires_in
    )


@router.post(
    "/register",
    status_code=status.HTTP_201_CREATED,
    summary="Create an account",
    dependencies=_ANONYMOUS,
    responses=problem_responses(409, 422),
)
async def register(
    body: UserCreate, session: DbSession, settings: Settings, hasher: Hasher
) -> UserRead:
    user = await auth_service.register(
        session,
        email=str(body.email),
        password=body.password,
        hasher=hasher,
        min_length=settings.password_min_length,
    )
    return UserRead.model_validate(user)


def publish_password_rule(app: FastAPI, *, min_length: int) -> None:
    """Publish the registration password's length rule as its `minLength` in /openapi.json.

    The rule is a setting (`PASSWORD_MIN_LENGTH`) that the users service
    enforces, so the static body model cannot carry it; clients read it here
    (the job console's hint and its check before signing up).
    """
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:  # built and published once
            return app.openapi_schema
        schema = generate()
        body = schema["paths"]["/v1/auth/register"]["post"]["requestBody"]
        name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        schema["components"]["schemas"][name]["properties"]["password"]["minLength"] = min_length
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


@router.post(
    "/token",
    summary="Log in (OAuth2 password flow)",
    dependencies=_ANONYMOUS,
    responses=problem_responses(401, 422),
)
async def token(
    form: Annotated[LoginForm, Depends(login_form)],
    response: Response,
    connection: HTTPConnection,
    engine: DbEngine,
    settings: Settings,
    hasher: Hasher,
    limiter: Limiter,
    redis: RedisClient,
) -> TokenResponse:
    prefix = settings.redis_key_prefix
    attempt = await login_attempts.admit_login(
        limiter, email=form.username, ip=client_ip(connection)
    )
    await login_attempts.refuse_unless_known(redis, attempt, prefix=prefix)
    pair = await auth_service.login(
        engine, settings, email=form.username, password=form.password, hasher=hasher
    )
    await login_attempts.record_success(
        limiter, attempt, prefix=prefix, remember_days=settings.login_known_address_days
    )
    return _token_response(response, pair)


@router.post(
    "/refresh",
    summary="Rotate a refresh token",
    dependencies=_ANONYMOUS,
    responses=problem_responses(401, 422),
)
async def refresh(
    body: RefreshRequest, response: Response, session: DbSession, settings: Settings
) -> TokenResponse:
    pair = await auth_service.refresh(session, settings, refresh_token=body.refresh_token)
    return _token_response(response, pair)


@router.post(
    "/logout",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Revoke a refresh token and its family",
    dependencies=_AUTHENTICATED,
    responses=problem_responses(401, 422),
)
async def logout(
    body: RefreshRequest,
    user: CurrentUser,
    session: DbSession,
    response: Response,
    revocations: Revocations,
) -> None:
    await auth_service.logout(session, user_id=user.id, refresh_token=body.refresh_token)
    await session.commit()
    # Every access token of the user issued so far stops working; other devices
    # refresh theirs (their refresh families stay valid).
    await revocations.revoke_all(user.id)
    # Set on the injected response, so the rate-limit headers are kept too.
    response.headers.update(_NO_STORE)


@password_router.post(
    "/me/password",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Change the password; every session of the user is signed out",
    dependencies=_AUTHENTICATED,
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

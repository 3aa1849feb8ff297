"""What the auth endpoints accept and answer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from fastapi import Form
from pydantic import BaseModel, ConfigDict, EmailStr, Field

from api.auth.passwords import MAX_PASSWORD_CHARS
from api.users.schemas import EMAIL_MAX_LENGTH

# Every string a client sends is bounded here, before any work or Redis key.
PASSWORD_MAX_LENGTH = MAX_PASSWORD_CHARS
_SCOPE_MAX_LENGTH = 1024
_CLIENT_FIELD_MAX_LENGTH = 256
# No control characters (NUL among them, which PostgreSQL text cannot hold).
NO_CONTROL_CHARACTERS = r"^[^\x00-\x1f\x7f]*$"


@dataclass(frozen=True, slots=True)
class LoginForm:
    """The OAuth2 password-flow form (as `OAuth2PasswordRequestForm`), read by `login_form`."""

    username: str
    password: str
    grant_type: str | None
    scopes: list[str]
    client_id: str | None
    client_secret: str | None


async def login_form(
    *,
    username: Annotated[
        str, Form(min_length=1, max_length=EMAIL_MAX_LENGTH, pattern=NO_CONTROL_CHARACTERS)
    ],
    password: Annotated[str, Form(min_length=1, max_length=PASSWORD_MAX_LENGTH)],
    grant_type: Annotated[str | None, Form(pattern="^password$")] = None,
    scope: Annotated[str, Form(max_length=_SCOPE_MAX_LENGTH)] = "",
    client_id: Annotated[str | None, Form(max_length=_CLIENT_FIELD_MAX_LENGTH)] = None,
    client_secret: Annotated[str | None, Form(max_length=_CLIENT_FIELD_MAX_LENGTH)] = None,
) -> LoginForm:
    """The login form, every field bounded: an oversized field is a 422 before anything is
    counted or hashed.

    A coroutine, not the class itself as the dependency: FastAPI runs a class or a plain
    function in its thread pool, and the hand-offs to and from the thread were about 6%
    of a login request's samples in py-spy (`tests/unit/test_no_thread_pool.py`).
    """
    return LoginForm(username, password, grant_type, scope.split(), client_id, client_secret)


class TokenResponse(BaseModel):
    """An OAuth2 bearer token answer plus the rotating refresh token."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "access_token": "eyJhbGciOiJIUzI1NiIs...",
                    "refresh_token": "q3V8...",
                    "token_type": "bearer",
                    "expires_in": 900,
                }
            ]
        }
    )

    access_token: str
    refresh_token: str
    token_type: Literal["bearer"] = "bearer"  # noqa: S105
    expires_in: int


class RefreshRequest(BaseModel):
    """A refresh token to rotate or revoke."""

    refresh_token: str = Field(min_length=1, max_length=512)


class UserCreate(BaseModel):
    """A registration: an email and a password."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"email": "ada@example.com", "password": "correct horse battery"}]
        }
    )

    email: EmailStr = Field(max_length=EMAIL_MAX_LENGTH)
    password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)


class PasswordChange(BaseModel):
    """A new password, with the current one as proof."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"current_password": "correct horse battery", "new_password": "staple gun 1234"}
            ]
        },
    )

    current_password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)
    new_password: str = Field(min_length=1, max_length=PASSWORD_MAX_LENGTH)

"""Auth errors.

Unauthorized (401, WWW-Authenticate: Bearer)
├── InvalidCredentials     wrong email or password (same answer for both)
└── InvalidRefreshToken    unknown, expired, revoked or reused refresh token
WrongPassword (403)        the current password given to change it is wrong
HashingBusy (503, Retry-After)  the password hashing budget stayed full for the whole wait
└── HashingFailed               the hashing process ended before it answered
"""

from __future__ import annotations

from common.errors import AppError, Forbidden, Unauthorized


class InvalidCredentials(Unauthorized):
    """Raised on a failed login, whether or not the account exists."""

    title = "Invalid credentials"


class InvalidRefreshToken(Unauthorized):
    """Raised when a refresh token cannot be used."""

    title = "Invalid refresh token"


class WrongPassword(Forbidden):
    """Raised when a password change names the wrong current password."""

    title = "Wrong password"


class HashingBusy(AppError):
    """Raised when no password hash can start within the wait: the memory budget is full."""

    status = 503
    title = "Service busy"

    def __init__(self, detail: str | None = None, *, retry_after: int = 1) -> None:
        super().__init__(detail, headers={"Retry-After": str(max(1, retry_after))})


class HashingFailed(HashingBusy):
    """Raised when the hashing process ended before it answered (the request can be retried)."""

    title = "Service unavailable"

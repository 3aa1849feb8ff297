"""Auth errors.

Unauthorized (401, WWW-Authenticate: Bearer)
├── InvalidCredentials     wrong email or password (same answer for both)
├── InvalidRefreshToken    unknown, expired, revoked or reused refresh token
└── InactiveUser           the account behind a valid token is disabled or gone
"""

from __future__ import annotations

from common.errors import Unauthorized


class InvalidCredentials(Unauthorized):
    """Raised on a failed login, whether or not the account exists."""

    title = "Invalid credentials"


class InvalidRefreshToken(Unauthorized):
    """Raised when a refresh token cannot be used."""

    title = "Invalid refresh token"


class InactiveUser(Unauthorized):
    """Raised when the token's user no longer exists or is disabled."""

    title = "Inactive user"

"""Users errors.

AppError
├── EmailTaken (409)      the email is registered already, in any letter case
├── WeakPassword (422)    the password breaks a strength rule
└── Unauthorized (401, WWW-Authenticate: Bearer)
    └── InactiveUser      the account behind a valid token is disabled or gone
"""

from __future__ import annotations

from common.errors import AppError, Conflict, Unauthorized


class EmailTaken(Conflict):
    """Raised when registering an email that exists, compared case-insensitively."""

    title = "Email already registered"


class WeakPassword(AppError):
    """Raised when a password is too short, too simple or contains the email."""

    status = 422
    title = "Password too weak"


class InactiveUser(Unauthorized):
    """Raised when the token's user no longer exists or is disabled."""

    title = "Inactive user"

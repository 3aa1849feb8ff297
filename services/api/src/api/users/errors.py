"""Users errors.

AppError
├── EmailTaken (409)      the email is registered already, in any letter case
├── WeakPassword (422)    the password breaks a strength rule
└── Unauthorized (401, WWW-Authenticate: Bearer)
    └── InactiveUser      the account behind a valid token is disabled or gone
"""

from __future__ import annotations

from common.errors import AppError, Conflict, Unauthorized


class EmailTaken(Conflict, title="Email already registered"):
    """Raised when registering an email that exists, compared case-insensitively."""


class WeakPassword(AppError, status=422, title="Password too weak"):
    """Raised when a password is too short, too simple or contains the email."""


class InactiveUser(Unauthorized, title="Inactive user"):
    """Raised when the token's user no longer exists or is disabled."""

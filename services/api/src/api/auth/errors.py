"""Auth errors.

Unauthorized (401, WWW-Authenticate: Bearer)
├── InvalidCredentials     wrong email or password (same answer for both)
└── InvalidRefreshToken    unknown, expired, revoked or reused refresh token
WrongPassword (403)        the current password given to change it is wrong
ServiceUnavailable (503)
└── HashingBusy (Retry-After)   the password hashing budget stayed full for the whole wait
    └── HashingFailed           the hashing process ended before it answered
"""

from __future__ import annotations

from common.errors import Forbidden, ServiceUnavailable, Unauthorized


class InvalidCredentials(Unauthorized, title="Invalid credentials"):
    """Raised on a failed login, whether or not the account exists."""


class InvalidRefreshToken(Unauthorized, title="Invalid refresh token"):
    """Raised when a refresh token cannot be used."""


class WrongPassword(Forbidden, title="Wrong password"):
    """Raised when a password change names the wrong current password."""


class HashingBusy(ServiceUnavailable, title="Service busy", retry_after=1):
    """Raised when no password hash can start within the wait: the memory budget is full."""


class HashingFailed(HashingBusy, title="Service unavailable"):
    """Raised when the hashing process ended before it answered (the request can be retried)."""

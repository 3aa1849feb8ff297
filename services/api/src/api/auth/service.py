"""Auth: registration, login, refresh-token rotation with reuse detection, logout, password change.

Every password is hashed here (`api.auth.passwords`); `api.users` stores the hashes.
"""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import String, Uuid, bindparam, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from api.auth.errors import InvalidCredentials, InvalidRefreshToken, WrongPassword
from api.auth.models import RefreshToken
from api.auth.passwords import PasswordHasher
from api.settings import ApiSettings
from api.users import service as users_service
from api.users.errors import InactiveUser
from api.users.models import User
from common.auth import issue_access_token
from common.db import driver_connection, driver_sql


@dataclass(frozen=True, slots=True)
class TokenPair:
    """An access token and the refresh token that can replace it."""

    access_token: str
    refresh_token: str
    expires_in: int


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _pair(settings: ApiSettings, *, user_id: uuid.UUID, refresh: str) -> TokenPair:
    return TokenPair(
        access_token=issue_access_token(settings, subject=user_id),
        refresh_token=refresh,
        expires_in=settings.access_token_ttl_seconds,
    )


def _refresh_expiry(settings: ApiSettings) -> datetime:
    return datetime.now(UTC) + timedelta(seconds=settings.refresh_token_ttl_seconds)


async def _issue_pair(
    session: AsyncSession, settings: ApiSettings, *, user_id: uuid.UUID, family_id: uuid.UUID
) -> TokenPair:
    refresh = secrets.token_urlsafe(32)
    # One INSERT, not an object through the ORM's unit of work (its flush alone cost
    # a login 0.7 ms of the worker's CPU); nothing reads the row back in this session.
    await session.execute(
        insert(RefreshToken).values(
            user_id=user_id,
            family_id=family_id,
            token_hash=_digest(refresh),
            expires_at=_refresh_expiry(settings),
        )
    )
    return _pair(settings, user_id=user_id, refresh=refresh)


# A login's writes as one statement, built once for the driver and run outside a
# transaction, where it is atomic by itself: the user's `last_login_at` (and a
# rehash) set, and the new family's first refresh token inserted, only if the
# account still exists and is active. One round trip, where a session's UPDATE and
# INSERT also send BEGIN and COMMIT.
_LOGGED_IN = (
    update(User)
    .where(User.id == bindparam("user_id", type_=Uuid), User.is_active)
    .values(
        last_login_at=func.now(),
        password_hash=func.coalesce(bindparam("rehash", type_=String), User.password_hash),
    )
    .returning(User.id)
    .cte("logged_in")
)
_RECORD_LOGIN = driver_sql(
    insert(RefreshToken).from_select(
        ["id", "user_id", "family_id", "token_hash", "expires_at"],
        select(
            bindparam("token_id", type_=Uuid),
            _LOGGED_IN.c.id,
            bindparam("family_id", type_=Uuid),
            bindparam("token_hash", type_=String),
            bindparam("expires_at", type_=RefreshToken.expires_at.type),
        ),
    ),
    "token_id",
    "family_id",
    "token_hash",
    "expires_at",
    "rehash",
    "user_id",
)


async def register(
    session: AsyncSession, *, email: str, password: str, hasher: PasswordHasher, min_length: int
) -> User:
    """Create an account; `WeakPassword`, or `EmailTaken` when the email exists in any case."""
    users_service.check_password_strength(password, email=email, min_length=min_length)
    # Hashed before the first query, so no pooled connection is held while the hash
    # waits for room and runs (a taken email costs a hash; the answer is the same).
    password_hash = await hasher.hash(password)
    return await users_service.create_user(session, email=email, password_hash=password_hash)


async def login(
    engine: AsyncEngine,
    settings: ApiSettings,
    *,
    email: str,
    password: str,
    hasher: PasswordHasher,
) -> TokenPair:
    """Check the credentials, record the login and start a new token family.

    One error for every failure. A hash made with other Argon2 parameters than
    the current ones is replaced by the one the check computed, in the statement
    that sets `last_login_at` and stores the refresh token. Two statements in
    all, each its own transaction; no connection is held while the hash waits
    and runs (up to PASSWORD_HASH_WAIT_SECONDS and more), so a burst of logins
    cannot hold them all.
    """
    user = await users_service.get_credentials(engine, email)
    is_valid, rehashed = await hasher.verify_and_update(
        password, user.password_hash if user else None
    )
    if user is None or not is_valid or not user.is_active:
        raise InvalidCredentials("Incorrect email or password.")
    refresh = secrets.token_urlsafe(32)
    async with driver_connection(engine) as connection:
        status = await connection.execute(
            _RECORD_LOGIN,
            uuid.uuid4(),
            uuid.uuid4(),
            _digest(refresh),
            _refresh_expiry(settings),
            rehashed,
            user.user_id,
        )
    if status != "INSERT 0 1":  # deleted or disabled while its password was checked
        raise InvalidCredentials("Incorrect email or password.")
    return _pair(settings, user_id=user.user_id, refresh=refresh)


async def refresh(session: AsyncSession, settings: ApiSettings, *, refresh_token: str) -> TokenPair:
    """Rotate: mark the presented token used and issue its successor.

    The mark is one conditional UPDATE, so two concurrent uses of one token
    cannot both succeed. A token that was already used is a leaked token: the
    whole family is revoked and the caller must log in again.
    """
    now = datetime.now(UTC)
    digest = _digest(refresh_token)
    claimed = await session.execute(
        update(RefreshToken)
        .where(
            RefreshToken.token_hash == digest,
            RefreshToken.used_at.is_(None),
            RefreshToken.revoked_at.is_(None),
            RefreshToken.expires_at > now,
        )
        .values(used_at=now)
        .returning(RefreshToken.user_id, RefreshToken.family_id)
    )
    row = claimed.one_or_none()
    if row is None:
        await _revoke_if_reused(session, digest=digest, now=now)
        raise InvalidRefreshToken("The refresh token is invalid, expired or revoked.")
    user_id, family_id = row
    user = await users_service.get_user(session, user_id)
    if user is None or not user.is_active:
        raise InactiveUser("The account is disabled.")
    return await _issue_pair(session, settings, user_id=user_id, family_id=family_id)


async def _revoke_if_reused(session: AsyncSession, *, digest: str, now: datetime) -> None:
    family_id = await session.scalar(
        select(RefreshToken.family_id).where(
            RefreshToken.token_hash == digest, RefreshToken.used_at.is_not(None)
        )
    )
    if family_id is not None:
        await revoke_family(session, family_id=family_id, now=now)
        # Committed here: the caller raises, and the revocation must outlive the rollback.
        await session.commit()


async def revoke_family(session: AsyncSession, *, family_id: uuid.UUID, now: datetime) -> None:
    """Revoke every live token of a family."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )


async def revoke_user_families(session: AsyncSession, *, user_id: uuid.UUID) -> None:
    """Revoke every live refresh token of `user_id`, in every family."""
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=datetime.now(UTC))
    )


async def change_password(
    session: AsyncSession,
    *,
    user: User,
    current_password: str,
    new_password: str,
    hasher: PasswordHasher,
    min_length: int,
) -> None:
    """Check the current password, store a hash of the new one, revoke every refresh token.

    No pooled connection is held while a hash waits or runs: the caller's session
    is committed (its connection returned) before the first hash, and the
    writes come after the last.
    """
    users_service.check_password_strength(new_password, email=user.email, min_length=min_length)
    user_id, current_hash = user.id, user.password_hash
    await session.commit()
    if not await hasher.verify(current_password, current_hash):
        raise WrongPassword("The current password is incorrect.")
    new_hash = await hasher.hash(new_password)
    await users_service.set_password_hash(session, user_id=user_id, password_hash=new_hash)
    await revoke_user_families(session, user_id=user_id)


async def logout(session: AsyncSession, *, user_id: uuid.UUID, refresh_token: str) -> None:
    """Revoke the family of `refresh_token` if it is the user's; silent otherwise."""
    family_id = await session.scalar(
        select(RefreshToken.family_id).where(
            RefreshToken.token_hash == _digest(refresh_token), RefreshToken.user_id == user_id
        )
    )
    if family_id is not None:
        await revoke_family(session, family_id=family_id, now=datetime.now(UTC))

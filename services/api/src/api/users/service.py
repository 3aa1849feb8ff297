"""Users: lookup, creation, password rules; the users table's queries.

Hashing is `api.auth`'s: this module stores hashes it is given.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import BindParameter, ColumnElement, bindparam, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from api.users.errors import EmailTaken, WeakPassword
from api.users.models import User
from common.db import driver_connection, driver_sql

_MIN_DISTINCT_CHARACTERS = 5


@dataclass(frozen=True, slots=True)
class Credentials:
    """The columns a login checks."""

    user_id: uuid.UUID
    password_hash: str
    is_active: bool


def check_password_strength(password: str, *, email: str, min_length: int) -> None:
    """Raise `WeakPassword` unless the password is long, varied and not the email.

    Length over composition rules, as NIST SP 800-63B advises.
    """
    if len(password) < min_length:
        raise WeakPassword(f"The password must be at least {min_length} characters long.")
    if len(set(password)) < _MIN_DISTINCT_CHARACTERS:
        raise WeakPassword(
            f"The password must contain at least {_MIN_DISTINCT_CHARACTERS} different characters."
        )
    local_part = email.partition("@")[0].lower()
    if len(local_part) >= 4 and local_part in password.lower():
        raise WeakPassword("The password must not contain the email address.")


def _has_email(lowered: str | BindParameter[str]) -> ColumnElement[bool]:
    """The users whose email, lower-cased, is `lowered` (the unique index's expression)."""
    return func.lower(User.email) == lowered


# Built once, for the driver: a login's read is one prepared statement, with no transaction.
_CREDENTIALS = driver_sql(
    select(User.id, User.password_hash, User.is_active).where(_has_email(bindparam("email"))),
    "email",
)


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    """The user with `email`, compared case-insensitively."""
    result = await session.execute(select(User).where(_has_email(email.lower())))
    return result.scalar_one_or_none()


async def get_user(session: AsyncSession, user_id: uuid.UUID) -> User | None:
    """The user with `user_id`, or None."""
    return await session.get(User, user_id)


async def create_user(session: AsyncSession, *, email: str, password_hash: str) -> User:
    """Add a user; `EmailTaken` when the email exists in any letter case."""
    if await get_user_by_email(session, email) is not None:
        raise EmailTaken(f"{email} is already registered.")
    user = User(email=email, password_hash=password_hash)
    session.add(user)
    try:
        # A savepoint so a lost race to the unique index leaves the session usable.
        async with session.begin_nested():
            await session.flush()
    except IntegrityError as exc:
        raise EmailTaken(f"{email} is already registered.") from exc
    await session.refresh(user)
    return user


async def get_credentials(engine: AsyncEngine, email: str) -> Credentials | None:
    """What a login checks for `email` (compared case-insensitively): three columns, no object.

    One statement on the driver, outside a transaction (`common.db.driver_connection`):
    a round trip, where a session's read also sends BEGIN and COMMIT.
    """
    async with driver_connection(engine) as connection:
        row = await connection.fetchrow(_CREDENTIALS, email.lower())
    return None if row is None else Credentials(*row)


async def set_password_hash(
    session: AsyncSession, *, user_id: uuid.UUID, password_hash: str
) -> None:
    """Store a new password hash for `user_id`."""
    await session.execute(
        update(User).where(User.id == user_id).values(password_hash=password_hash)
    )

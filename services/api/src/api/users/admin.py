"""Operator commands on accounts: `python -m api.users.admin disable|enable EMAIL`.

There is no HTTP endpoint for these on purpose: they are for whoever holds the
deployment's `DATABASE_URL` and `REDIS_URL` (a Render shell, `make dev`'s
terminal). Disabling an account

- refuses its logins and refresh-token rotations from then on (the API checks
  `is_active` on both, and on every authenticated request),
- revokes every refresh token it holds,
- revokes its access tokens in every API and realtime process, which closes its
  open WebSockets (1008 "token revoked").

Enabling it lets it log in again; nothing it held before comes back.
Exit status: 0 done, 1 no such account, 2 bad usage.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import uuid

from sqlalchemy import func, update

from api.auth.service import revoke_user_families
from api.settings import ApiSettings, get_settings
from api.users.models import User
from api.users.schemas import EMAIL_MAX_LENGTH
from common.db import create_engine, create_session_factory
from common.redis import create_redis
from common.revocation import Revocations


async def set_active(settings: ApiSettings, email: str, *, active: bool) -> uuid.UUID | None:
    """Enable or disable the account with `email`; its id, or None if there is none."""
    engine = create_engine(settings)
    redis = create_redis(settings)
    try:
        async with create_session_factory(engine)() as session, session.begin():
            user_id = await session.scalar(
                update(User)
                .where(func.lower(User.email) == email.strip().lower())
                .values(is_active=active)
                .returning(User.id)
            )
            if user_id is not None and not active:
                await revoke_user_families(session, user_id=user_id)
        if user_id is not None and not active:
            await Revocations.from_settings(redis, settings).revoke_all(user_id)
        return user_id
    finally:
        await redis.aclose()
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m api.users.admin", description=__doc__.splitlines()[0]
    )
    parser.add_argument("action", choices=["disable", "enable"])
    parser.add_argument("email")
    args = parser.parse_args(argv)
    if len(args.email) > EMAIL_MAX_LENGTH:
        parser.error(f"email: at most {EMAIL_MAX_LENGTH} characters")
    active = args.action == "enable"
    user_id = asyncio.run(set_active(get_settings(), args.email, active=active))
    if user_id is None:
        print(f"no account with that email; nothing {args.action}d", file=sys.stderr)
        return 1
    print(f"account {user_id} {args.action}d" + ("" if active else "; its tokens are revoked"))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Users dependencies: the signed-in user, loaded and checked active.

The token-only principal (no query) is `common.auth.CurrentPrincipal`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from api.users import service as users_service
from api.users.errors import InactiveUser
from api.users.models import User
from common.auth import CurrentPrincipal
from common.db import DbSession


async def get_current_user(principal: CurrentPrincipal, session: DbSession) -> User:
    """The token's user, loaded and checked active; for sensitive endpoints.

    Ordinary reads use `CurrentPrincipal`, which costs no query.
    """
    user = await users_service.get_user(session, principal.user_id)
    if user is None or not user.is_active:
        raise InactiveUser("The account is disabled or no longer exists.")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]

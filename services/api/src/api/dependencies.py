"""Dependencies shared by the API's domains: settings and the password hasher."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from api.auth.passwords import PasswordHasher
from api.settings import ApiSettings
from common.revocation import Revocations as RevocationStore


async def get_api_settings(connection: HTTPConnection) -> ApiSettings:
    """The settings the app was created with (from the lifespan state)."""
    settings: ApiSettings = connection.state.settings
    return settings


async def get_password_hasher(connection: HTTPConnection) -> PasswordHasher:
    """The process's password hasher (from the lifespan state)."""
    hasher: PasswordHasher = connection.state.password_hasher
    return hasher


async def get_revocations(connection: HTTPConnection) -> RevocationStore:
    """The process's access-token revocations (from the lifespan state)."""
    revocations: RevocationStore = connection.state.revocations
    return revocations


Settings = Annotated[ApiSettings, Depends(get_api_settings)]
Hasher = Annotated[PasswordHasher, Depends(get_password_hasher)]
Revocations = Annotated[RevocationStore, Depends(get_revocations)]

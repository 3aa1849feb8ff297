"""Dependencies shared by the API's domains: settings and the password hasher."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from api.auth.passwords import PasswordHasher
from api.settings import ApiSettings


async def get_api_settings(connection: HTTPConnection) -> ApiSettings:
    """The settings the app was created with (from the lifespan state)."""
    settings: ApiSettings = connection.state.settings
    return settings


async def get_password_hasher(connection: HTTPConnection) -> PasswordHasher:
    """The process's password hasher (from the lifespan state)."""
    hasher: PasswordHasher = connection.state.password_hasher
    return hasher


Settings = Annotated[ApiSettings, Depends(get_api_settings)]
Hasher = Annotated[PasswordHasher, Depends(get_password_hasher)]

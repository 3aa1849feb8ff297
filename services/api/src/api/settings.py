"""The API's settings: everything in `CommonSettings` plus the API's own fields."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from common.settings import CommonSettings, load_settings


class ApiSettings(CommonSettings):
    """Settings of the REST API process."""

    service_name: str = "api"
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=300)
    password_min_length: int = Field(default=10, ge=8, le=64)
    password_hash_concurrency: int = Field(default=4, ge=1, le=64)
    jobs_max_active_per_user: int = Field(default=20, ge=1)


@lru_cache
def get_settings() -> ApiSettings:
    """The process's settings, read from the environment once."""
    return load_settings(ApiSettings)

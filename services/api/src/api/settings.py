"""The API's settings: everything in `CommonSettings` plus the API's own fields."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from common.contracts.realtime import TICKET_TTL_SECONDS
from common.ratelimit import LimitSpec
from common.settings import CommonSettings, load_settings


class ApiSettings(CommonSettings):
    """Settings of the REST API process."""

    service_name: str = "api"
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=300)
    """Refresh token lifetime, seconds (30 days)."""
    password_min_length: int = Field(default=10, ge=8, le=64)
    """Shortest password accepted at registration."""
    password_hash_concurrency: int = Field(default=4, ge=1, le=64)
    """Argon2 hashes at once per API worker, each in a child process at the lowest CPU
    priority, started on demand (memory-hard: 64 MiB each)."""
    jobs_max_active_per_user: int = Field(default=20, ge=1)
    """Queued plus running jobs one user may have; 429 beyond."""
    # The API issues the tickets, so it owns their lifetime; the realtime
    # service only consumes them (Redis expires the unused ones).
    realtime_ticket_ttl_seconds: int = Field(default=TICKET_TTL_SECONDS, ge=1, le=300)
    """Lifetime of an unused WebSocket ticket (`POST /v1/realtime/ticket`), seconds."""
    # Rate limits per route group, per user (verified token) or else per client IP.
    rate_limit_auth: LimitSpec = "20/minute"
    """The `auth` policy: register, token, refresh, logout; per user, else per client IP."""
    rate_limit_writes: LimitSpec = "60/minute"
    """The `writes` policy: job creation and cancel, realtime tickets."""
    rate_limit_reads: LimitSpec = "600/minute"
    """The `reads` policy: job and user reads."""
    # Beyond either login limit: 429 before any password check.
    rate_limit_login_ip: LimitSpec = "30/15 minutes"
    """Login attempts per client IP, successful ones too."""
    rate_limit_login_account: LimitSpec = "5/15 minutes"
    """Failed logins per account before it is locked for the rest of the window; a successful
    login resets the count."""

    def rate_limit_specs(self) -> dict[str, str]:
        """Each rate-limit policy's name and limit."""
        return {
            "auth": self.rate_limit_auth,
            "writes": self.rate_limit_writes,
            "reads": self.rate_limit_reads,
            "login_ip": self.rate_limit_login_ip,
            "login_account": self.rate_limit_login_account,
        }


@lru_cache
def get_settings() -> ApiSettings:
    """The process's settings, read from the environment once."""
    return load_settings(ApiSettings)

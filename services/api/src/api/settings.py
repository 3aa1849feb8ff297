"""The API's settings: everything in `CommonSettings` plus the API's own fields."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field, model_validator

from api.auth.login_attempts import global_policy_names
from api.auth.passwords import OWASP_ARGON2ID, Argon2Params
from common.contracts.realtime import TICKET_TTL_SECONDS
from common.ratelimit import LimitSpec, LimitSpecs, split_limits
from common.settings import CommonSettings, load_settings


class ApiSettings(CommonSettings):
    """Settings of the REST API process."""

    service_name: str = "api"
    refresh_token_ttl_seconds: int = Field(default=30 * 24 * 3600, ge=300)
    """Refresh token lifetime, seconds (30 days)."""
    password_min_length: int = Field(default=10, ge=8, le=64)
    """Shortest password accepted at registration."""
    password_hash_memory_kib: int = Field(default=19456, ge=1024, le=4 * 1024 * 1024)
    """Argon2id memory cost of new hashes, KiB. With `PASSWORD_HASH_TIME_COST` it must be at
    least one of OWASP's equally strong settings (19456 with 2 iterations, 47104 with 1, 12288
    with 3, 9216 with 4, 7168 with 5); weaker ones are refused. Hashes made with other costs
    still verify and are replaced at the next login. Left unset, it steps down OWASP's list
    when the memory budget cannot hold one hash per worker."""
    password_hash_time_cost: int = Field(default=2, ge=1, le=100)
    """Argon2id iterations of new hashes."""
    password_hash_parallelism: int = Field(default=1, ge=1, le=16)
    """Argon2id lanes (threads) of new hashes."""
    password_hash_concurrency: int | None = Field(default=None, ge=1, le=64)
    """Hashes at once per instance, split among the workers; unset: one per CPU the instance
    may use. The memory budget may allow fewer (each hash holds its memory cost)."""
    password_hash_wait_seconds: float = Field(default=5.0, ge=0, le=60)
    """How long a login or registration waits for room to hash before it gets a 503 with
    `Retry-After`."""
    jobs_max_active_per_user: int = Field(default=20, ge=1)
    """Queued plus running jobs one user may have; 429 beyond."""
    # The API issues the tickets, so it owns their lifetime; the realtime
    # service only consumes them (Redis expires the unused ones).
    realtime_ticket_ttl_seconds: int = Field(default=TICKET_TTL_SECONDS, ge=1, le=300)
    """Lifetime of an unused WebSocket ticket (`POST /v1/realtime/ticket`), seconds."""
    # Rate limits per route group, per user (verified token) or else per client IP.
    rate_limit_auth: LimitSpec = "20/minute"
    """The `auth` policy: register, token and refresh per client IP (whatever token is sent);
    logout and password change per user."""
    rate_limit_writes: LimitSpec = "60/minute"
    """The `writes` policy: job creation and cancel, realtime tickets."""
    rate_limit_reads: LimitSpec = "600/minute"
    """The `reads` policy: job and user reads."""
    # Beyond either login limit: 429 before any password check.
    rate_limit_login_ip: LimitSpec = "30/15 minutes"
    """Login attempts per client IP, successful ones too."""
    rate_limit_login_account: LimitSpec = "5/15 minutes"
    """Failed logins on one account from one client IP before that address is locked out of
    that account for the rest of the window; a successful login from it resets the count."""
    rate_limit_login_account_global: LimitSpecs = "10/minute;30/hour;100/day"
    """Login attempts on one account from all addresses together, in tiers separated by `;`
    (growing delays for a distributed guesser). Beyond it only an address that logged in to
    the account within `LOGIN_KNOWN_ADDRESS_DAYS` has its password checked."""
    login_known_address_days: int = Field(default=30, ge=0, le=365)
    """How long an address that logged in successfully stays able to log in to that account
    through a global lock (`0`: never)."""

    @property
    def argon2_params(self) -> Argon2Params:
        """The Argon2id parameters of new hashes."""
        return Argon2Params(
            self.password_hash_memory_kib,
            self.password_hash_time_cost,
            self.password_hash_parallelism,
        )

    @model_validator(mode="after")
    def _owasp_minimum(self) -> ApiSettings:
        if not self.argon2_params.meets_owasp():
            options = ", ".join(f"m={kib} t={iterations}" for kib, iterations in OWASP_ARGON2ID)
            raise ValueError(
                "PASSWORD_HASH_MEMORY_KIB and PASSWORD_HASH_TIME_COST are weaker than OWASP's "
                f"Argon2id minimum; use at least one of: {options}"
            )
        return self

    def rate_limit_specs(self) -> dict[str, str]:
        """Each rate-limit policy's name and limit."""
        tiers = split_limits(self.rate_limit_login_account_global)
        return {
            "auth": self.rate_limit_auth,
            "writes": self.rate_limit_writes,
            "reads": self.rate_limit_reads,
            "login_ip": self.rate_limit_login_ip,
            "login_account": self.rate_limit_login_account,
            **dict(zip(global_policy_names(len(tiers)), tiers, strict=True)),
        }


@lru_cache
def get_settings() -> ApiSettings:
    """The process's settings, read from the environment once."""
    return load_settings(ApiSettings)

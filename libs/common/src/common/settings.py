"""Settings shared by every service, read from the environment (and `.env` in development).

Each service subclasses `CommonSettings` with only its own fields. Production
safety checks run when the settings object is built, so a process with an
unsafe configuration refuses to start and names the setting.
"""

from __future__ import annotations

import json
import os
from enum import StrEnum
from typing import Annotated, Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

MIN_SECRET_LENGTH = 32
_PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "change_me", "secret", "password", "dev", "development", "test"}
)
# libpq's sslmode values mapped to what asyncpg's `ssl` argument accepts.
_SSLMODES = {"disable", "allow", "prefer", "require", "verify-ca", "verify-full"}


class Environment(StrEnum):
    """Where the process runs; production turns on the safety checks."""

    DEVELOPMENT = "development"
    TEST = "test"
    PRODUCTION = "production"


class UnsafeConfiguration(ValueError):
    """Raised when a production process is configured unsafely; names the setting."""


def _split_list(value: Any) -> Any:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [item.strip() for item in text.split(",") if item.strip()]
    return value


def normalize_database_url(url: str) -> str:
    """Turn a URL as Render or Heroku give it into a SQLAlchemy asyncpg URL.

    `postgres://` and `postgresql://` become `postgresql+asyncpg://`, and libpq's
    `sslmode=` becomes asyncpg's `ssl=` (other libpq-only arguments are dropped).
    """
    parts = urlsplit(url.strip())
    scheme = parts.scheme
    if scheme in {"postgres", "postgresql", "postgresql+psycopg", "postgresql+psycopg2"}:
        scheme = "postgresql+asyncpg"
    if scheme != "postgresql+asyncpg":
        raise ValueError(f"must be a PostgreSQL URL, got scheme {parts.scheme!r}")
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "sslmode":
            if value not in _SSLMODES:
                raise ValueError(f"unknown sslmode {value!r}")
            query.append(("ssl", value))
        elif key in {"channel_binding", "target_session_attrs", "connect_timeout"}:
            continue
        else:
            query.append((key, value))
    return urlunsplit((scheme, parts.netloc, parts.path, urlencode(query), parts.fragment))


def to_sync_database_url(url: str) -> str:
    """An asyncpg URL from `normalize_database_url` as a psycopg (sync) URL."""
    parts = urlsplit(url)
    query = [("sslmode" if key == "ssl" else key, value) for key, value in parse_qsl(parts.query)]
    return urlunsplit(
        ("postgresql+psycopg", parts.netloc, parts.path, urlencode(query), parts.fragment)
    )


StrList = Annotated[list[str], NoDecode]


class CommonSettings(BaseSettings):
    """What every service reads: environment, Postgres, Redis, JWT, logging, HTTP edge."""

    model_config = SettingsConfigDict(
        env_file=".env", env_file_encoding="utf-8", extra="ignore", case_sensitive=False
    )

    environment: Environment = Environment.DEVELOPMENT
    debug: bool = False
    log_level: str = "INFO"
    service_name: str = "app"

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=20, ge=0)
    # A pooled connection idle longer than this is pinged before use (one
    # round trip, so a server restart costs no request); 0 pings on every
    # checkout, as SQLAlchemy's pool_pre_ping does (several round trips each).
    db_pool_ping_after_seconds: float = Field(default=2.0, ge=0)
    db_pool_recycle: int = Field(default=3600, ge=-1)
    db_pool_timeout: float = Field(default=30.0, gt=0)
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)

    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    # Per process; a command beyond it waits for a free connection.
    redis_max_connections: int = Field(default=100, ge=1)
    # Prepended to every key and channel we create, so deployments (or test
    # runs) can share one Redis without seeing each other's data.
    redis_key_prefix: str = ""
    # Celery's broker; the same Redis by default (Key Value with noeviction).
    broker_url: str | None = None

    jwt_secret: SecretStr | None = None
    jwt_algorithm: str = "HS256"
    jwt_issuer: str = "fastapi-microservices"
    jwt_audience: str = "fastapi-microservices"
    jwt_leeway_seconds: int = Field(default=10, ge=0, le=300)
    access_token_ttl_seconds: int = Field(default=900, ge=30)

    cors_origins: StrList = Field(default_factory=list)
    cors_allow_credentials: bool = True
    cors_max_age: int = Field(default=600, ge=0)
    allowed_hosts: StrList = Field(default_factory=lambda: ["*"])
    forwarded_allow_ips: StrList = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    docs_enabled: bool = True
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    health_check_timeout: float = Field(default=2.0, gt=0)
    shutdown_drain_seconds: float = Field(default=0.0, ge=0, le=60)
    # When set, GET /metrics answers only `Authorization: Bearer <token>` (401 otherwise).
    metrics_token: SecretStr | None = None
    # Rate-limit policies that refuse (503) rather than allow when Redis cannot count.
    rate_limit_fail_closed: StrList = Field(
        default_factory=lambda: ["auth", "login_account", "login_ip"]
    )

    @field_validator(
        "cors_origins",
        "allowed_hosts",
        "forwarded_allow_ips",
        "rate_limit_fail_closed",
        mode="before",
    )
    @classmethod
    def _lists(cls, value: Any) -> Any:
        return _split_list(value)

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: str) -> str:
        return normalize_database_url(value)

    @field_validator("jwt_algorithm")
    @classmethod
    def _hmac_only(cls, value: str) -> str:
        # One shared secret signs and verifies; asymmetric keys would need a key
        # pair setting, and allowing both invites algorithm-confusion attacks.
        if value not in {"HS256", "HS384", "HS512"}:
            raise ValueError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        return value

    @property
    def sync_database_url(self) -> str:
        """`database_url` for the psycopg (sync) driver, with libpq's `sslmode`."""
        return to_sync_database_url(self.database_url)

    @property
    def is_production(self) -> bool:
        return self.environment is Environment.PRODUCTION

    def jwt_key(self) -> str:
        """The signing key; a random per-process key outside production when unset."""
        if self.jwt_secret is None:
            return _ephemeral_secret()
        return self.jwt_secret.get_secret_value()

    @model_validator(mode="after")
    def _production_checks(self) -> CommonSettings:
        problems = self.production_problems() if self.is_production else []
        if problems:
            raise UnsafeConfiguration("; ".join(problems))
        return self

    def production_problems(self) -> list[str]:
        """Every reason this configuration is unsafe for production (empty when safe)."""
        problems: list[str] = []
        secret = self.jwt_secret.get_secret_value() if self.jwt_secret else ""
        if not secret:
            problems.append("JWT_SECRET is required in production")
        elif secret.lower() in _PLACEHOLDER_SECRETS or len(set(secret)) < 8:
            problems.append("JWT_SECRET is a placeholder; generate one (openssl rand -hex 32)")
        elif len(secret) < MIN_SECRET_LENGTH:
            problems.append(f"JWT_SECRET must be at least {MIN_SECRET_LENGTH} characters")
        if "*" in self.cors_origins and self.cors_allow_credentials:
            problems.append("CORS_ORIGINS is '*' while CORS_ALLOW_CREDENTIALS is on")
        if "*" in self.forwarded_allow_ips:
            # uvicorn then takes the left-most X-Forwarded-For entry, which the
            # client writes itself; list the proxies instead.
            problems.append(
                "FORWARDED_ALLOW_IPS is '*', which believes client-written X-Forwarded-For "
                "entries; list the proxy addresses or network (e.g. 10.0.0.0/8)"
            )
        if self.debug:
            problems.append("DEBUG must be off in production")
        return problems


_EPHEMERAL: list[str] = []


def _ephemeral_secret() -> str:
    # Outside production a missing JWT_SECRET gets a random key per process
    # tree, so nothing ships a working default; tokens do not survive restarts.
    if not _EPHEMERAL:
        _EPHEMERAL.append(os.environ.setdefault("JWT_SECRET", os.urandom(32).hex()))
    return _EPHEMERAL[0]


SettingsT = TypeVar("SettingsT", bound=CommonSettings)


def load_settings(cls: type[SettingsT]) -> SettingsT:
    """Read `cls` from the environment, or exit naming every bad setting.

    A process with an unsafe or invalid configuration must not start, and the
    operator must see which variable to fix rather than a traceback.
    """
    try:
        return cls()
    except ValidationError as exc:
        reasons = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["loc"]:
                name = "_".join(str(part) for part in error["loc"]).upper()
                message = f"{name}: {message}"
            reasons.append(message)
        raise SystemExit("refusing to start: " + "; ".join(reasons)) from None

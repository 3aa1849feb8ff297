"""Settings shared by every service, read from the environment (and `.env` in development).

Each service subclasses `CommonSettings` with only its own fields. Production
safety checks run when the settings object is built, so a process with an
unsafe configuration refuses to start and names the setting.
"""

from __future__ import annotations

import hashlib
import json
import os
from enum import StrEnum
from typing import Annotated, Any, ClassVar, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import ByteSize, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from common.contracts.job_kinds import DEMO_KINDS

MIN_SECRET_LENGTH = 32
_PLACEHOLDER_SECRETS = frozenset(
    {"changeme", "change-me", "change_me", "secret", "password", "dev", "development", "test"}
)
# SHA-256 of every secret value this repository has committed (examples, the
# compose file's old development default): refused in every environment, since
# anyone can read them. Digests, so the values are not committed once more.
_COMMITTED_SECRET_DIGESTS = frozenset(
    {"af06effeea91bae0e36e4940a25c736ebb8b0eea5bf471ff7f05d0108782af91"}
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

    # Each field's docstring is its description: the settings reference in the
    # docs (docs/hooks/settings_reference.py) is generated from them.
    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        use_attribute_docstrings=True,
    )

    # Whether this service signs or verifies access tokens: only then is a
    # JWT_SECRET required in production (the worker and scheduler get none).
    needs_jwt_secret: ClassVar[bool] = True

    environment: Environment = Environment.DEVELOPMENT
    """`development`, `test` or `production`; production turns on the safety checks (an unsafe
    configuration refuses to start) and HSTS."""
    debug: bool = False
    """Debug mode. Refused in production."""
    log_level: str = "INFO"
    """Root log level (`DEBUG`, `INFO`, `WARNING`, `ERROR`)."""
    service_name: str = "app"
    """The process's name for Postgres (`application_name`) and OpenTelemetry (`service.name`)."""

    database_url: str = "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
    """PostgreSQL URL. `postgres://`, `postgresql://` and libpq's `sslmode=` (as Render and Heroku
    give it) are converted for asyncpg (and for psycopg in the worker). Set it in production."""
    db_pool_size: int = Field(default=10, ge=1)
    """SQLAlchemy pool size per process. Keep instances * processes * (`DB_POOL_SIZE` +
    `DB_MAX_OVERFLOW`) under Postgres' `max_connections`."""
    db_max_overflow: int = Field(default=20, ge=0)
    """Connections a process may open beyond `DB_POOL_SIZE` under load."""
    instance_count: int = Field(default=1, ge=1)
    """Instances of this service that run at once (render.yaml's `numInstances`, or
    `scaling.maxInstances` with autoscaling). Render does not tell a process how many instances
    its service has, so the Blueprint sets it to match; only the start-up connection-budget
    check reads it (a WARNING when instances x processes x (`DB_POOL_SIZE` + `DB_MAX_OVERFLOW`)
    plus others' connections can exceed Postgres' `max_connections`)."""
    db_pool_ping_after_seconds: float = Field(default=2.0, ge=0)
    """A pooled connection idle longer than this is pinged (one round trip) before use, so a
    server restart costs no request; `0` pings on every checkout, as SQLAlchemy's
    `pool_pre_ping` does (several round trips each)."""
    db_pool_recycle: int = Field(default=3600, ge=-1)
    """Replace a pooled connection older than this many seconds (`-1`: never)."""
    db_pool_timeout: float = Field(default=30.0, gt=0)
    """Seconds to wait for a free pooled connection before the request fails."""
    db_statement_timeout_ms: int = Field(default=30_000, ge=0)
    """Postgres `statement_timeout` of our sessions, in milliseconds (`0`: none)."""

    redis_url: str = "redis://127.0.0.1:6379/0"
    """Redis URL: broker (unless `BROKER_URL`), pub/sub, event streams, rate limits, tickets.
    Set it in production."""
    redis_socket_timeout: float = Field(default=5.0, gt=0)
    """Redis connect and read timeout, seconds."""
    redis_max_connections: int = Field(default=100, ge=1)
    """Redis connections per process; a command beyond it waits (up to `REDIS_SOCKET_TIMEOUT`)
    for a free one instead of failing."""
    redis_key_prefix: str = ""
    """Prepended to every Redis key and channel we create, so deployments (or test runs) can
    share one Redis without seeing each other's data."""
    broker_url: str | None = None
    """Celery's broker; `REDIS_URL` when unset. It must be a Redis with `maxmemory-policy
    noeviction`: an evicted key is a lost message."""

    jwt_secret: SecretStr | None = None
    """HMAC key of the access tokens, in every environment at least 32 bytes, not empty, not
    a placeholder and not a value committed in this repository (`openssl rand -hex 32`).
    Required in production; elsewhere an unset one becomes a random key per process tree, so
    tokens do not survive a restart."""
    jwt_algorithm: str = "HS256"
    """`HS256`, `HS384` or `HS512`: the only algorithm a token may carry."""
    jwt_issuer: str = "fastapi-microservices"
    """`iss` written into access tokens and required on verification; set one per deployment."""
    jwt_audience: str = "fastapi-microservices"
    """`aud` written into access tokens and required on verification; set one per deployment."""
    jwt_leeway_seconds: int = Field(default=10, ge=0, le=300)
    """Clock skew allowed on `exp`, `nbf` and `iat`, seconds."""
    access_token_ttl_seconds: int = Field(default=900, ge=30)
    """Access token lifetime, seconds. A token whose `exp - iat` is longer is refused."""
    token_revocation_cache_seconds: float = Field(default=5.0, ge=0, le=60)
    """How long a process remembers a user's token-revocation cut-off (logout, password
    change). Other processes learn of a revocation at once over pub/sub; this is the bound
    when that message is missed. `0` reads Redis on every authenticated request."""

    cors_origins: StrList = Field(default_factory=list)
    """Browser origins allowed to call the API; on realtime, the `Origin` allow-list of the
    WebSocket handshake. `*` with credentials is refused in production."""
    cors_allow_credentials: bool = False
    """Answer credentialed cross-origin requests (cookies, TLS client certificates). Off: the
    API uses no cookies, and a bearer token in `Authorization` needs no credentials mode."""
    cors_max_age: int = Field(default=600, ge=0)
    """Seconds a browser may cache a preflight answer."""
    allowed_hosts: StrList = Field(default_factory=lambda: ["*"])
    """Accepted `Host` headers (`*.example.com` allowed); other hosts get 400. Set it in
    production."""
    forwarded_allow_ips: StrList = Field(default_factory=lambda: ["127.0.0.1", "::1"])
    """Proxies whose `X-Forwarded-For` is believed; the client is the right-most entry that is
    not one of them. In production, the proxy's addresses or network (Render's proxy connects
    from a private range, e.g. `10.0.0.0/8`). `*` is refused: uvicorn would then take the
    left-most entry, which the client writes."""
    docs_enabled: bool = True
    """Serve `/docs`, `/redoc` and `/openapi.json`."""
    max_body_bytes: int = Field(default=1_048_576, ge=1024)
    """Largest request body, bytes; 413 beyond."""
    health_check_timeout: float = Field(default=2.0, gt=0)
    """Timeout of each dependency check of `/health/ready`, seconds."""
    shutdown_drain_seconds: float = Field(default=0.0, ge=0, le=60)
    """After SIGTERM, keep serving this long with readiness answering 503 before shutting down
    (e.g. `5` behind a balancer that polls readiness)."""
    metrics_token: SecretStr | None = None
    """When set, `GET /metrics` answers only `Authorization: Bearer <token>` (401 otherwise).
    Unset, `/metrics` is open: set it wherever `/metrics` can be reached from the internet."""
    web_concurrency: int | None = Field(default=None, ge=1, le=64)
    """Web worker processes per instance (gunicorn reads the same variable); unset: one per CPU.
    The memory budget is shared among them."""
    memory_limit: ByteSize | None = None
    """The instance's memory (bytes, or a size such as `512MB` or `2GiB`). Unset: the cgroup's
    limit (what a container or a Render instance is held to), else the host's memory, which
    is logged as a warning. Each service sizes what grows with load (hashing processes,
    sockets, job processes) to fit it."""
    memory_headroom: float = Field(default=0.2, ge=0.05, le=0.9)
    """Share of `MEMORY_LIMIT` kept free (allocator slack, page cache, kernel memory); the
    service plans with the rest."""
    demo_kinds_enabled: bool | None = None
    """Accept and run the demo job kinds (`demo.countdown`, `demo.flaky`). Unset: on outside
    production, off in production (a demo countdown can hold a worker for hours)."""
    job_max_run_seconds: dict[str, int] = Field(default_factory=dict)
    """Ceiling on one run of a job kind, seconds, as JSON (`{"demo.countdown": 600}`); kinds
    not named keep their own limit. The API refuses (422) a job whose own limit is longer,
    and the worker stops a run at the ceiling whatever its message says."""
    rate_limit_fail_closed: StrList = Field(
        default_factory=lambda: ["auth", "login_account", "login_account_global", "login_ip"]
    )
    """Rate-limit policies that answer 503 (rather than serve the request uncounted) when
    Redis cannot count."""

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

    @field_validator("jwt_secret")
    @classmethod
    def _usable_secret(cls, value: SecretStr | None) -> SecretStr | None:
        # Every environment: a guessable key signs tokens anyone can forge, and a
        # development stack is often reachable from more than its own machine.
        if value is not None:
            problem = secret_problem("JWT_SECRET", value.get_secret_value())
            if problem:
                raise UnsafeConfiguration(problem)
        return value

    @field_validator("jwt_algorithm")
    @classmethod
    def _hmac_only(cls, value: str) -> str:
        # One shared secret signs and verifies; asymmetric keys would need a key
        # pair setting, and allowing both invites algorithm-confusion attacks.
        if value not in {"HS256", "HS384", "HS512"}:
            raise ValueError("JWT_ALGORITHM must be one of HS256, HS384, HS512")
        return value

    @field_validator("job_max_run_seconds")
    @classmethod
    def _positive_ceilings(cls, value: dict[str, int]) -> dict[str, int]:
        if any(seconds < 1 for seconds in value.values()):
            raise ValueError("JOB_MAX_RUN_SECONDS: every ceiling must be at least 1 second")
        return value

    def is_kind_enabled(self, kind: str) -> bool:
        """Whether jobs of `kind` are accepted and run here (demo kinds per
        `DEMO_KINDS_ENABLED`)."""
        if kind not in DEMO_KINDS:
            return True
        if self.demo_kinds_enabled is None:
            return not self.is_production
        return self.demo_kinds_enabled

    @property
    def sync_database_url(self) -> str:
        """`database_url` for the psycopg (sync) driver, with libpq's `sslmode`."""
        return to_sync_database_url(self.database_url)

    @property
    def web_workers(self) -> int:
        """The web worker processes per instance, as gunicorn's config counts them."""
        return self.web_concurrency or os.cpu_count() or 1

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
        if self.jwt_secret is None and self.needs_jwt_secret:
            problems.append("JWT_SECRET is required in production")
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


def secret_problem(name: str, secret: str) -> str | None:
    """Why `secret` cannot be used as the setting `name`, or None when it can."""
    generate = "generate one (openssl rand -hex 32)"
    if not secret:
        return f"{name} is empty; unset it (outside production) or {generate}"
    if hashlib.sha256(secret.encode()).hexdigest() in _COMMITTED_SECRET_DIGESTS:
        return f"{name} is a value committed in this repository; {generate}"
    if secret.lower() in _PLACEHOLDER_SECRETS or len(set(secret)) < 8:
        return f"{name} is a placeholder; {generate}"
    if len(secret.encode()) < MIN_SECRET_LENGTH:
        return f"{name} must be at least {MIN_SECRET_LENGTH} bytes; {generate}"
    return None


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

"""Settings: DATABASE_URL as hosts give it, list variables, and the production refusals."""

from __future__ import annotations

import re
import secrets
import subprocess
from pathlib import Path

import pytest
from pydantic import ValidationError

from api.settings import ApiSettings
from common.settings import UnsafeConfiguration, normalize_database_url
from worker.settings import WorkerSettings

GOOD_SECRET = secrets.token_hex(32)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test starts from an environment without any of the variables under test."""
    for name in (
        "ENVIRONMENT",
        "DEBUG",
        "DATABASE_URL",
        "JWT_SECRET",
        "CORS_ORIGINS",
        "CORS_ALLOW_CREDENTIALS",
        "ALLOWED_HOSTS",
        "FORWARDED_ALLOW_IPS",
    ):
        monkeypatch.delenv(name, raising=False)


class TestDatabaseUrl:
    """DATABASE_URL is accepted as Render and Heroku give it and rewritten for asyncpg."""

    def test_postgres_scheme_with_sslmode_becomes_asyncpg_with_ssl(self) -> None:
        url = normalize_database_url("postgres://u:p@h:5432/db?sslmode=require")
        assert url == "postgresql+asyncpg://u:p@h:5432/db?ssl=require"

    def test_postgresql_scheme_becomes_asyncpg(self) -> None:
        assert normalize_database_url("postgresql://u:p@h:5432/db") == (
            "postgresql+asyncpg://u:p@h:5432/db"
        )

    def test_asyncpg_url_is_kept(self) -> None:
        url = "postgresql+asyncpg://u:p@h:5432/db?ssl=require"
        assert normalize_database_url(url) == url

    def test_libpq_only_arguments_are_dropped(self) -> None:
        url = normalize_database_url(
            "postgres://u:p@h/db?sslmode=verify-full&channel_binding=require&application_name=x"
        )
        assert url == "postgresql+asyncpg://u:p@h/db?ssl=verify-full&application_name=x"

    # --8<-- [start:setting-from-environment]
    def test_database_url_from_the_environment_is_normalized(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("DATABASE_URL", "postgres://u:p@h:5432/db?sslmode=require")
        settings = ApiSettings(_env_file=None)
        assert settings.database_url == "postgresql+asyncpg://u:p@h:5432/db?ssl=require"

    # --8<-- [end:setting-from-environment]

    def test_unknown_sslmode_is_rejected(self) -> None:
        with pytest.raises(ValidationError, match="sslmode"):
            ApiSettings(_env_file=None, database_url="postgres://u:p@h/db?sslmode=sometimes")

    @pytest.mark.parametrize(
        "url", ["mysql://u:p@h:3306/db", "sqlite:///db.sqlite3", "redis://h:6379/0"]
    )
    def test_non_postgres_scheme_is_rejected(self, url: str) -> None:
        with pytest.raises(ValidationError, match="PostgreSQL"):
            ApiSettings(_env_file=None, database_url=url)


class TestListSettings:
    """CORS_ORIGINS, ALLOWED_HOSTS and FORWARDED_ALLOW_IPS read comma-separated or JSON lists."""

    @pytest.mark.parametrize(
        ("variable", "field"),
        [
            ("CORS_ORIGINS", "cors_origins"),
            ("ALLOWED_HOSTS", "allowed_hosts"),
            ("FORWARDED_ALLOW_IPS", "forwarded_allow_ips"),
        ],
    )
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            (
                " a.example.com, b.example.com ,,c.example.com",
                ["a.example.com", "b.example.com", "c.example.com"],
            ),
            ('["https://app.example.com", "10.0.0.1"]', ["https://app.example.com", "10.0.0.1"]),
        ],
        ids=["comma-separated-split-and-trimmed", "json-list-parsed"],
    )
    def test_list_is_read(
        self, monkeypatch: pytest.MonkeyPatch, variable: str, field: str, raw: str,
        expected: list[str],
    ) -> None:  # fmt: skip
        monkeypatch.setenv(variable, raw)
        assert getattr(ApiSettings(_env_file=None), field) == expected

    def test_single_value_becomes_a_one_item_list(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("CORS_ORIGINS", "https://app.example.com")
        assert ApiSettings(_env_file=None).cors_origins == ["https://app.example.com"]

    def test_allowed_hosts_defaults_to_any(self) -> None:
        assert ApiSettings(_env_file=None).allowed_hosts == ["*"]


class TestProductionChecks:
    """In production, an unsafe configuration refuses to start and names the setting."""

    def _production(self, **overrides: object) -> ApiSettings:
        values: dict[str, object] = {"environment": "production", "jwt_secret": GOOD_SECRET}
        values.update(overrides)
        return ApiSettings(_env_file=None, **values)  # type: ignore[arg-type]

    def test_missing_jwt_secret_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="JWT_SECRET is required"):
            self._production(jwt_secret=None)

    def test_missing_jwt_secret_in_the_environment_is_refused(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setenv("ENVIRONMENT", "production")
        with pytest.raises(ValidationError, match="JWT_SECRET"):
            ApiSettings(_env_file=None)

    @pytest.mark.parametrize(
        "secret", ["changeme", "CHANGEME", "secret", "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"]
    )
    def test_placeholder_jwt_secret_is_refused(self, secret: str) -> None:
        with pytest.raises(ValidationError, match="JWT_SECRET is a placeholder"):
            self._production(jwt_secret=secret)

    # --8<-- [start:setting-refused]
    def test_short_jwt_secret_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="JWT_SECRET must be at least 32"):
            self._production(jwt_secret="abcdefghij0123456789")

    # --8<-- [end:setting-refused]

    def test_cors_wildcard_with_credentials_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="CORS_ORIGINS"):
            self._production(cors_origins=["*"], cors_allow_credentials=True)

    def test_cors_wildcard_without_credentials_is_accepted(self) -> None:
        settings = self._production(cors_origins=["*"], cors_allow_credentials=False)
        assert settings.cors_origins == ["*"]

    def test_debug_on_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="DEBUG"):
            self._production(debug=True)

    def test_refusal_is_an_unsafe_configuration_error(self) -> None:
        with pytest.raises(ValidationError) as caught:
            self._production(debug=True)
        assert isinstance(caught.value.errors()[0]["ctx"]["error"], UnsafeConfiguration)

    def test_good_production_configuration_starts(self) -> None:
        settings = self._production(cors_origins=["https://app.example.com"])
        assert settings.is_production
        assert settings.production_problems() == []

    def test_same_unsafe_values_are_allowed_outside_production(self) -> None:
        settings = ApiSettings(
            _env_file=None,
            environment="development",
            cors_origins=["*"],
            cors_allow_credentials=True,
            debug=True,
        )
        assert len(settings.production_problems()) == 3

    def test_cors_credentials_are_off_by_default(self) -> None:
        assert ApiSettings(_env_file=None).cors_allow_credentials is False

    def test_the_worker_needs_no_jwt_secret_in_production(self) -> None:
        """The worker never sees a token, so it is not given the secret (#15 §7)."""
        settings = WorkerSettings(_env_file=None, environment="production")
        assert settings.production_problems() == []


_SECRET_ASSIGNMENT = re.compile(
    r"""JWT_SECRET\s*(?:=|:)\s*(?:\$\{JWT_SECRET:-)?["']?(?P<value>[^\s"'}]+)""", re.IGNORECASE
)


def _committed_secrets() -> set[str]:
    """Every literal `JWT_SECRET` value in the repository's history (not references)."""
    log = subprocess.run(
        ["git", "log", "--all", "-p", "--format=", "-G", "JWT_SECRET"],
        cwd=Path(__file__).parents[2], capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    values = {match["value"] for match in _SECRET_ASSIGNMENT.finditer(log)}
    # Literal values only, not the names of variables that hold one.
    return {
        value
        for value in values
        if re.fullmatch(r"[A-Za-z0-9+/=_-]{8,}", value) and "jwt_secret" not in value.lower()
    }


class TestSecretsInEveryEnvironment:
    """An empty, committed, placeholder or short JWT_SECRET is refused everywhere (#15 §5)."""

    ENVIRONMENTS = ("development", "test", "production")

    @pytest.mark.parametrize("environment", ENVIRONMENTS)
    @pytest.mark.parametrize(
        ("secret", "reason"),
        [
            ("", "is empty"),
            ("compose-development-only-jwt-secret-0123456789", "committed in this repository"),
            ("changeme", "placeholder"),
            ("abcdefghij0123456789", "at least 32 bytes"),
        ],
    )
    def test_unusable_secret_is_refused(self, environment: str, secret: str, reason: str) -> None:
        with pytest.raises(ValidationError, match=f"JWT_SECRET .*{reason}"):
            ApiSettings(_env_file=None, environment=environment, jwt_secret=secret)

    @pytest.mark.parametrize("environment", ENVIRONMENTS)
    def test_empty_secret_in_the_environment_is_refused(
        self, monkeypatch: pytest.MonkeyPatch, environment: str
    ) -> None:
        monkeypatch.setenv("ENVIRONMENT", environment)
        monkeypatch.setenv("JWT_SECRET", "")
        with pytest.raises(ValidationError, match="JWT_SECRET is empty"):
            ApiSettings(_env_file=None)

    def test_every_secret_ever_committed_here_is_refused(self) -> None:
        committed = _committed_secrets()
        assert "compose-development-only-jwt-secret-0123456789" in committed
        for secret in committed:
            with pytest.raises(ValidationError, match="JWT_SECRET"):
                ApiSettings(_env_file=None, environment="development", jwt_secret=secret)

    def test_unset_secret_outside_production_is_random(self) -> None:
        settings = ApiSettings(_env_file=None, environment="development")
        assert len(settings.jwt_key()) >= 32

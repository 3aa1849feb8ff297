"""render.yaml: what the schema cannot check, and how `make rehearse` resolves its env vars.

The schema check (`make validate`) proves the shape; `make rehearse` runs the
commands. These pin down the decisions in between, in milliseconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from devharness.services import ROOT
from scripts.blueprint import Backing, BlueprintError, resolve_env
from scripts.rehearse import Service

BLUEPRINT: dict[str, Any] = yaml.safe_load((ROOT / "render.yaml").read_text())
SERVICES = {s["name"]: s for s in BLUEPRINT["services"]}
RUNNABLE = [s for s in BLUEPRINT["services"] if s["type"] in {"web", "worker", "cron"}]
BACKING = Backing(
    database_url="postgresql://postgres@127.0.0.1:5432/rehearse_x",
    redis_url="redis://127.0.0.1:6379/0",
)


def _resolve_all() -> dict[str, dict[str, str]]:
    generated: dict[str, str] = {}
    services = {s["name"]: Service(spec=s, work_dir=Path("/nonexistent")) for s in RUNNABLE}
    return {
        name: resolve_env(
            service.spec, blueprint=BLUEPRINT, backing=BACKING, peers=services, generated=generated
        )
        for name, service in services.items()
    }


class TestBlueprint:
    """Each service builds from its own lock and redeploys only when its inputs change."""

    @pytest.mark.parametrize("spec", RUNNABLE, ids=lambda s: s["name"])
    def test_builds_from_its_hash_pinned_lock_and_filters_on_it(self, spec: dict[str, Any]) -> None:
        package = "worker" if spec["type"] == "cron" else spec["name"]
        lock = f"requirements/{package}.txt"
        assert f"--require-hashes -r {lock}" in spec["buildCommand"]
        assert (ROOT / lock).exists()
        assert set(spec["buildFilter"]["paths"]) == {
            "libs/common/**",
            f"services/{package}/**",
            lock,
        }
        assert spec["autoDeployTrigger"] == "checksPass"

    @pytest.mark.parametrize("spec", RUNNABLE, ids=lambda s: s["name"])
    def test_config_files_named_by_commands_exist(self, spec: dict[str, Any]) -> None:
        for word in spec["startCommand"].split():
            if word.endswith(".conf.py"):
                assert (ROOT / word).exists(), word

    def test_web_services_check_readiness_and_migrations_run_before_the_api(self) -> None:
        assert SERVICES["api"]["healthCheckPath"] == "/health/ready"
        assert SERVICES["realtime"]["healthCheckPath"] == "/health/ready"
        assert SERVICES["api"]["preDeployCommand"] == "cd services/api && alembic upgrade head"
        assert SERVICES["scheduler"]["startCommand"] == "python -m worker.scheduler --once"

    def test_key_value_never_evicts_and_postgres_version_is_a_string(self) -> None:
        assert SERVICES["redis"]["maxmemoryPolicy"] == "noeviction"
        assert SERVICES["redis"]["ipAllowList"] == []
        assert isinstance(BLUEPRINT["databases"][0]["postgresMajorVersion"], str)


class TestResolveEnv:
    """`make rehearse` gives every service what Render would, from the local stand-ins."""

    def test_one_generated_jwt_secret_is_shared_by_the_api_and_realtime(self) -> None:
        resolved = _resolve_all()
        secrets = {resolved[name]["JWT_SECRET"] for name in ("api", "realtime")}
        assert len(secrets) == 1
        assert len(secrets.pop()) >= 32

    def test_secrets_go_only_to_the_services_that_use_them(self) -> None:
        """JWT_SECRET: API and realtime; METRICS_TOKEN: the three that serve /metrics (#15 §7)."""
        resolved = _resolve_all()
        assert {name for name, env in resolved.items() if "JWT_SECRET" in env} == {
            "api",
            "realtime",
        }
        with_token = {name for name, env in resolved.items() if "METRICS_TOKEN" in env}
        assert with_token == {"api", "realtime", "worker"}
        assert len({resolved[name]["METRICS_TOKEN"] for name in with_token}) == 1

    def test_database_and_key_value_resolve_to_the_local_servers(self) -> None:
        resolved = _resolve_all()
        for env in resolved.values():
            assert env["REDIS_URL"] == BACKING.redis_url
        for name in ("api", "worker", "scheduler"):
            assert resolved[name]["DATABASE_URL"] == BACKING.database_url
        assert "DATABASE_URL" not in resolved["realtime"], "realtime needs no Postgres"

    def test_docs_in_production_are_one_setting_of_the_shared_group(self) -> None:
        """Decided once, in the group every service reads (#15 §7)."""
        groups = {g["name"]: g["envVars"] for g in BLUEPRINT["envVarGroups"]}
        shared = {var["key"]: var for var in groups["app-shared"]}
        assert shared["DOCS_ENABLED"]["value"] == "true"
        elsewhere = [
            name
            for name, spec in SERVICES.items()
            for var in spec.get("envVars", [])
            if var.get("key") == "DOCS_ENABLED"
        ]
        assert elsewhere == []
        assert {env["DOCS_ENABLED"] for env in _resolve_all().values()} == {"true"}

    def test_production_settings_that_the_app_insists_on(self) -> None:
        for name, env in _resolve_all().items():
            assert env["ENVIRONMENT"] == "production", name
            assert "*" not in env["FORWARDED_ALLOW_IPS"], name
            assert env["PYTHON_VERSION"], name  # its value: tests/unit/test_python_versions.py

    def test_sync_false_secrets_get_safe_values(self) -> None:
        resolved = _resolve_all()
        assert resolved["api"]["ALLOWED_HOSTS"] == "api.onrender.com"
        assert resolved["api"]["CORS_ORIGINS"] == "https://app.example.com"

    def test_an_unknown_sync_false_variable_is_an_error_not_a_guess(self) -> None:
        spec = {"name": "x", "type": "web", "envVars": [{"key": "STRIPE_KEY", "sync": False}]}
        with pytest.raises(BlueprintError, match="STRIPE_KEY"):
            resolve_env(spec, blueprint=BLUEPRINT, backing=BACKING, peers={}, generated={})

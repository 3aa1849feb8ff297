"""The images and the compose file ship no working secret and default to production (#15 §5)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[2]


def _stage(dockerfile: str, name: str) -> str:
    match = re.search(rf"^FROM \S+ AS {name}\n(?P<body>.*?)(?=^FROM |\Z)", dockerfile, re.M | re.S)
    assert match is not None, name
    return match["body"]


def _parent(dockerfile: str, name: str) -> str:
    match = re.search(rf"^FROM (\S+) AS {name}$", dockerfile, re.M)
    assert match is not None, name
    return match[1]


class TestImages:
    """Every service image runs with ENVIRONMENT=production unless told otherwise."""

    @pytest.mark.parametrize("target", ["api", "realtime", "worker"])
    def test_each_target_inherits_production(self, target: str) -> None:
        dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
        stage = target
        while stage != "runtime":  # api and realtime by way of web
            assert "ENVIRONMENT" not in _stage(dockerfile, stage), stage
            stage = _parent(dockerfile, stage)
        runtime = _stage(dockerfile, "runtime")
        assert re.search(r"^ENV ENVIRONMENT=production\b", runtime, re.M), runtime


class TestComposeFile:
    """docker-compose.yml has no JWT_SECRET of its own; `make up` generates one."""

    def test_jwt_secret_has_no_default_and_reaches_only_api_and_realtime(self) -> None:
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        given = {
            name: service["environment"]["JWT_SECRET"]
            for name, service in compose["services"].items()
            if "JWT_SECRET" in (service.get("environment") or {})
        }
        assert set(given) == {"api", "realtime"}
        for value in given.values():
            assert re.fullmatch(r"\$\{JWT_SECRET:\?[^}]*\}", value), value

    def test_make_up_generates_a_long_secret_when_none_is_set(self, tmp_path: Path) -> None:
        # The Makefile's rule, run in a scratch directory: a 64-hex-digit secret
        # in .run/jwt_secret, readable by its owner only, reused the next time.
        makefile = (ROOT / "Makefile").read_text()
        rule = re.search(r"^JWT_SECRET_FILE := .*?^up down [^\n]*\n", makefile, re.M | re.S)
        assert rule is not None
        (tmp_path / "Makefile").write_text(
            "PYTHON ?= python3\n"
            + rule.group(0)
            + "\nup: $(JWT_SECRET_FILE)\n\t@echo $$JWT_SECRET\n"
        )
        env = {"PATH": "/usr/bin:/bin"}
        first = subprocess.run(
            ["make", "-s", "up"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        again = subprocess.run(
            ["make", "-s", "up"], cwd=tmp_path, env=env, capture_output=True, text=True, check=True
        ).stdout.strip()
        assert re.fullmatch(r"[0-9a-f]{64}", first), first
        assert again == first
        assert (tmp_path / ".run" / "jwt_secret").stat().st_mode & 0o077 == 0
        given = subprocess.run(
            ["make", "-s", "up"], cwd=tmp_path, env={**env, "JWT_SECRET": "x" * 40},
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert given == "x" * 40

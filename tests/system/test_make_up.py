"""`make up` and the other compose targets before any container runs: which Compose they pick
(v2's `docker compose`, else v1's `docker-compose`, else COMPOSE), and what they say when
Docker or Compose is missing. Stand-in `docker` commands on a PATH of their own; no engine."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from devharness.processes import environment_without
from devharness.services import ROOT

pytestmark = pytest.mark.system
MAKE = "/usr/bin/make"
# A docker CLI with the Compose v2 plugin (`docker compose version` works) or without it.
DOCKER_WITH_PLUGIN = (
    '#!/bin/sh\n[ "$1 $2" = "compose version" ] && echo "Docker Compose version v2.40.3"\n'
)
DOCKER_WITHOUT_PLUGIN = '#!/bin/sh\necho "docker: unknown command: docker $1" >&2\nexit 1\n'
DOCKER_COMPOSE_V1 = "#!/bin/sh\necho 'docker-compose version 1.29.2'\n"


def path_with(tmp_path: Path, **commands: str) -> str:
    """A PATH holding only these stand-in commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, script in commands.items():
        command = bin_dir / name.replace("_", "-")
        command.write_text(script)
        command.chmod(0o755)
    return str(bin_dir)


def make(
    target: str, *, path: str, dry_run: bool = False, **variables: str
) -> subprocess.CompletedProcess[str]:
    env = environment_without("COMPOSE")
    env["PATH"] = path
    command = [MAKE, "--no-print-directory", *(["-n"] if dry_run else []), target]
    command += [f"{name}={value}" for name, value in variables.items()]
    return subprocess.run(
        command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30, check=False
    )


class TestMissingTools:
    """Without Docker or without Compose, the targets say what is missing and how to get it."""

    @pytest.mark.parametrize("target", ["up", "down", "logs", "ps"])
    def test_without_docker(self, tmp_path: Path, target: str) -> None:
        done = make(target, path=path_with(tmp_path))
        assert done.returncode != 0
        assert "Docker is not installed: there is no `docker` command on PATH." in done.stderr
        assert "https://docs.docker.com/engine/install/" in done.stderr
        assert "https://docs.docker.com/desktop/" in done.stderr
        assert "`make dev` runs the same services" in done.stderr
        assert "command not found" not in done.stderr
        assert done.stdout == ""  # nothing was run

    def test_with_docker_but_without_compose(self, tmp_path: Path) -> None:
        done = make("up", path=path_with(tmp_path, docker=DOCKER_WITHOUT_PLUGIN))
        assert done.returncode != 0
        assert "Docker Compose is missing: neither `docker compose` (v2) nor" in done.stderr
        assert "https://docs.docker.com/compose/install/linux/" in done.stderr
        assert "docker-compose-plugin" in done.stderr
        assert "command not found" not in done.stderr
        assert done.stdout == ""


class TestWhichCompose:
    """v2 where its plugin works, v1 otherwise, COMPOSE over both (`make -n` shows the commands)."""

    def test_v2_plugin_is_preferred(self, tmp_path: Path) -> None:
        path = path_with(tmp_path, docker=DOCKER_WITH_PLUGIN, docker_compose=DOCKER_COMPOSE_V1)
        done = make("up", path=path, dry_run=True)
        assert done.returncode == 0, done.stderr
        assert "\ndocker compose up -d --build\n" in done.stdout
        assert "docker compose port api 8000" in done.stdout

    def test_v1_without_the_plugin(self, tmp_path: Path) -> None:
        path = path_with(tmp_path, docker=DOCKER_WITHOUT_PLUGIN, docker_compose=DOCKER_COMPOSE_V1)
        done = make("down", path=path, dry_run=True)
        assert done.returncode == 0, done.stderr
        assert "\ndocker-compose down --remove-orphans\n" in done.stdout

    def test_v1_without_the_docker_cli(self, tmp_path: Path) -> None:
        done = make("ps", path=path_with(tmp_path, docker_compose=DOCKER_COMPOSE_V1), dry_run=True)
        assert done.returncode == 0, done.stderr
        assert "\ndocker-compose ps\n" in done.stdout

    def test_compose_variable_wins(self, tmp_path: Path) -> None:
        path = path_with(tmp_path, docker=DOCKER_WITH_PLUGIN)
        done = make("ps", path=path, dry_run=True, COMPOSE="podman-compose")
        assert done.returncode == 0, done.stderr
        assert "\npodman-compose ps\n" in done.stdout

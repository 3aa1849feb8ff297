"""`make install` as a newcomer runs it: a clean checkout, no uv anywhere, their own Python.

The checkout holds only what git tracks (no `.venv`, `.run/` or caches). `PATH`
has no `uv`, and the launching Python is a fresh virtualenv without a `uv`
module, so the bootstrap inside `.venv` is what runs. The launching
interpreter's package list must be the same afterwards: `python -m uv pip sync`
once installed the whole lock into it (issue 13).

The refusals run through the real Makefile and scripts/install.py too: a
Python older than 3.11 (a real one, where this machine has one), a Python whose
`ensurepip` cannot be imported (as on Debian without `python3.X-venv`), and a
`.venv` left incomplete.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from devharness.processes import environment_without
from tests.fixtures.checkout import copy_tracked_files

pytestmark = pytest.mark.system
# A cold package cache downloads the whole lock; warm, the install takes about 15 s.
INSTALL_TIMEOUT = 600
# What would change what the interpreter or uv does, from the shell running the tests
# (an activated virtualenv, say); an outer make's variables go too (environment_without).
_SCRUBBED = (
    "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "CONDA_PREFIX",
    "UV_PYTHON", "UV_SYSTEM_PYTHON", "UV_PROJECT_ENVIRONMENT",
)  # fmt: skip


def _path_without_uv() -> list[str]:
    """The directories of this `PATH` that hold no `uv` command."""
    directories = os.environ.get("PATH", os.defpath).split(os.pathsep)
    return [d for d in directories if d and not os.access(Path(d) / "uv", os.X_OK)]


def _environment(launcher: Path) -> dict[str, str]:
    """The launcher's `python3` first on a `PATH` without uv, nothing activated."""
    env = environment_without(*_SCRUBBED)
    env["PATH"] = os.pathsep.join([str(launcher.parent), *_path_without_uv()])
    return env


def _packages(python: Path) -> list[dict[str, str]]:
    """`pip list` of an interpreter, as JSON: what a user would look at."""
    listed = subprocess.run(
        [str(python), "-m", "pip", "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    packages: list[dict[str, str]] = json.loads(listed.stdout)
    return sorted(packages, key=lambda package: package["name"].lower())


def _has_uv_module(python: Path) -> bool:
    probe = subprocess.run([str(python), "-c", "import uv"], capture_output=True, timeout=60)
    return probe.returncode == 0


def _make_install(
    checkout: Path, env: dict[str, str], *variables: str
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", "install", *variables],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT,
        check=False,
    )  # fmt: skip


def _older_python() -> Path | None:
    """A real interpreter older than 3.11 on this machine (pyenv's, or python3.N on PATH)."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(pyenv.glob("3.*/bin/python3"), reverse=True)
    candidates += [Path(found) for n in range(10, 5, -1) if (found := shutil.which(f"python3.{n}"))]
    for python in candidates:
        probe = subprocess.run(
            [str(python), "-c", "import sys; print(sys.version_info < (3, 11))"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if probe.returncode == 0 and probe.stdout.strip() == "True":
            return python
    return None


@pytest.fixture(scope="module")
def launcher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Python without uv: a fresh venv (with pip) of the interpreter running the tests."""
    root = tmp_path_factory.mktemp("launcher")
    subprocess.run([sys.executable, "-m", "venv", str(root)], check=True, timeout=300)
    python = root / "bin" / "python3"
    assert not _has_uv_module(python), "the launching Python must not have uv"
    return python


@dataclass(frozen=True)
class Installed:
    """A clean checkout after `make install`, and the launcher's packages around it."""

    checkout: Path
    result: subprocess.CompletedProcess[str]
    before: list[dict[str, str]]
    after: list[dict[str, str]]

    @property
    def venv(self) -> Path:
        return self.checkout / ".venv"

    @property
    def output(self) -> str:
        return self.result.stdout + self.result.stderr


@pytest.fixture(scope="module")
def installed(launcher: Path, tmp_path_factory: pytest.TempPathFactory) -> Installed:
    checkout = tmp_path_factory.mktemp("checkout")
    copy_tracked_files(checkout)
    env = _environment(launcher)
    assert shutil.which("uv", path=env["PATH"]) is None
    before = _packages(launcher)
    result = _make_install(checkout, env)
    return Installed(checkout, result, before, _packages(launcher))


@pytest.mark.timeout(INSTALL_TIMEOUT + 120)
class TestCleanCheckoutWithoutUv:
    """`make install` from a clean checkout, with no uv on PATH nor in the launching Python."""

    def test_venv_has_what_make_test_runs(self, installed: Installed) -> None:
        assert installed.result.returncode == 0, installed.output[-4000:]
        assert (installed.venv / "bin" / "pytest").is_file()
        # uv was bootstrapped into .venv, and said so.
        assert (installed.venv / "bin" / "uv").is_file()
        assert f"uv {installed.venv}/bin/uv" in installed.result.stdout
        imports = subprocess.run(
            [str(installed.venv / "bin" / "python"), "-c",
             "import api.main, worker.app, realtime.main, common, devservices, pytest"],
            cwd=installed.checkout, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert imports.returncode == 0, imports.stderr

    def test_venv_uses_the_launching_interpreter(
        self, installed: Installed, launcher: Path
    ) -> None:
        version = "import sys; print(sys.version_info[:3])"
        ours = subprocess.run([str(launcher), "-c", version], capture_output=True, text=True)
        venv = subprocess.run(
            [str(installed.venv / "bin" / "python"), "-c", version], capture_output=True, text=True
        )  # fmt: skip
        assert venv.stdout == ours.stdout

    def test_launching_interpreter_is_untouched(self, installed: Installed, launcher: Path) -> None:
        assert installed.result.returncode == 0, installed.output[-4000:]
        assert installed.after == installed.before
        assert not _has_uv_module(launcher)

    def test_incomplete_venv_is_named_with_the_remedy(
        self, installed: Installed, launcher: Path
    ) -> None:
        # The package is still recorded as installed, so the sync leaves it alone; the
        # check after it must notice that its command is gone.
        pytest_command = installed.venv / "bin" / "pytest"
        aside = pytest_command.with_name("pytest.aside")
        pytest_command.rename(aside)
        try:
            result = _make_install(installed.checkout, _environment(launcher))
        finally:
            aside.rename(pytest_command)
        assert result.returncode != 0
        assert "is incomplete: bin/pytest missing" in result.stderr
        assert "run make install again" in result.stderr


class TestRefusals:
    """What cannot work is refused before anything is written, naming cause and remedy."""

    def test_python_older_than_3_11_is_refused(self, tmp_path: Path) -> None:
        old = _older_python()
        if old is None:
            pytest.skip("no Python older than 3.11 on this machine (pyenv or python3.N on PATH)")
        checkout = tmp_path / "checkout"
        copy_tracked_files(checkout)
        env = _environment(old)
        result = _make_install(checkout, env, f"PYTHON={old}")
        assert result.returncode != 0
        assert "Python 3.11 or newer is required" in result.stderr
        assert not (checkout / ".venv").exists()
        # scripts/install.py run by hand says the same.
        direct = subprocess.run(
            [str(old), "scripts/install.py"],
            cwd=checkout, env=env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        assert direct.returncode == 1
        assert "Python 3.11 or newer is required" in direct.stderr
        assert not (checkout / ".venv").exists()

    def test_python_without_ensurepip_names_the_os_package(
        self, launcher: Path, tmp_path: Path
    ) -> None:
        # Debian and Ubuntu ship ensurepip in python3.X-venv; without it the import fails.
        # A package of that name first on PYTHONPATH makes the import fail the same way.
        blocked = tmp_path / "blocked" / "ensurepip"
        blocked.mkdir(parents=True)
        (blocked / "__init__.py").write_text(
            "raise ImportError('ensurepip is not installed (test stand-in for python3-venv)')\n"
        )
        checkout = tmp_path / "checkout"
        copy_tracked_files(checkout)
        env = {**_environment(launcher), "PYTHONPATH": str(blocked.parent)}
        before = _packages(launcher)
        result = _make_install(checkout, env)
        assert result.returncode != 0
        minor = subprocess.run(
            [str(launcher), "-c", "import sys; print(sys.version_info[1])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        assert "has no ensurepip module" in result.stderr
        assert f"apt install python3.{minor}-venv" in result.stderr
        assert not (checkout / ".venv").exists()
        assert _packages(launcher) == before

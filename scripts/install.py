"""`make install`: the project's virtualenv from the hash-pinned lock, touching nothing else.

Every step works inside `.venv`, so the Python that runs this script (the
user's own, a system Python, a pyenv shim) is never written to:

1. `python -m venv .venv` with the launching interpreter (3.11 or newer).
2. uv: the one on PATH if there is one, else the locked uv installed into
   `.venv` with `.venv/bin/python -m pip --require-hashes` (never
   `python -m uv`, which installs into the interpreter that launched it, and
   never `pip install uv` into the user's Python, which PEP 668 refuses).
3. `uv pip sync --python .venv/bin/python --require-hashes requirements/dev.txt`,
   then the workspace packages, editable.
4. A check that `.venv` has what `make test` runs.

Each failure names its cause and what to do about it, and exits non-zero.
Standard library only: this runs before anything is installed.

    python3 scripts/install.py [--venv .venv]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MINIMUM = (3, 11)
LOCK = ROOT / "requirements" / "dev.txt"
WORKSPACE = [
    "libs/common",
    "libs/devservices",
    "libs/devharness",
    "libs/client",
    "services/api",
    "services/worker",
    "services/realtime",
]
# What `make test`, `make lint` and `make dev` run from .venv/bin, and what they import.
EXPECTED_COMMANDS = ["python", "pytest", "ruff", "mypy", "gunicorn", "celery", "alembic", "uv"]
EXPECTED_IMPORTS = (
    "import common, devservices, devharness, jobsclient, api.main, worker.app, realtime.main"
)


class InstallError(Exception):
    """A step failed; the message names the cause and the remedy."""


def _run(cmd: list[str], *, what: str) -> None:
    print("+ " + " ".join(cmd), flush=True)
    result = subprocess.run(cmd, cwd=ROOT, check=False)  # noqa: S603
    if result.returncode != 0:
        raise InstallError(f"{what} failed (exit {result.returncode}): {' '.join(cmd)}")


def check_python(version: tuple[int, ...] = tuple(sys.version_info[:3])) -> None:
    """Refuse an interpreter older than the project supports."""
    if version < MINIMUM:
        found = ".".join(map(str, version))
        raise InstallError(
            f"Python {MINIMUM[0]}.{MINIMUM[1]} or newer is required; {sys.executable} is {found}. "
            "Run `make install PYTHON=python3.11` (or newer)."
        )


def _venv_package() -> str:
    return f"python{sys.version_info[0]}.{sys.version_info[1]}-venv"


def check_venv_support() -> None:
    """`venv` and `ensurepip` are separate OS packages on Debian and Ubuntu; say which."""
    missing = []
    for module in ("venv", "ensurepip"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise InstallError(
            f"{sys.executable} has no {' or '.join(missing)} module, so it cannot make a "
            f"virtualenv. On Debian and Ubuntu install the {_venv_package()} package "
            f"(`sudo apt install {_venv_package()}`); elsewhere use a Python from python.org, "
            "pyenv or uv, which include it."
        )


def _venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def _venv_version(venv: Path) -> tuple[int, int] | None:
    python = _venv_python(venv)
    if not python.exists():
        return None
    probe = subprocess.run(  # noqa: S603
        [str(python), "-c", "import sys; print(*sys.version_info[:2])"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        return None
    major, minor = probe.stdout.split()
    return int(major), int(minor)


def create_venv(venv: Path, *, with_pip: bool) -> None:
    """A venv of the launching interpreter; an existing one of another version is replaced."""
    found = _venv_version(venv)
    if found is not None and found != sys.version_info[:2]:
        print(
            f"{venv} is Python {found[0]}.{found[1]}, not {sys.version_info[0]}."
            f"{sys.version_info[1]}: recreating it",
            flush=True,
        )
        shutil.rmtree(venv)
        found = None
    if found is None and venv.exists():
        shutil.rmtree(venv)  # a broken or half-made venv: start again
    has_pip = found is not None and (venv / "bin" / "pip").exists()
    if found is None or (with_pip and not has_pip):
        # On an existing venv this only adds pip (ensurepip's bundled copy: no download).
        cmd = [sys.executable, "-m", "venv"]
        if not with_pip:
            cmd.append("--without-pip")
        _run([*cmd, str(venv)], what="creating the virtualenv")
    if not _venv_python(venv).exists():
        raise InstallError(
            f"{venv} has no bin/python after `python -m venv`. On Debian and Ubuntu install "
            f"{_venv_package()}."
        )


def _locked_uv() -> list[str]:
    """The `uv==…` entry of the dev lock, with its hashes, as requirement-file lines."""
    lines = LOCK.read_text().splitlines()
    block: list[str] = []
    for line in lines:
        if line.startswith("uv==") or (block and line.startswith(" ")):
            block.append(line)
        elif block:
            break
    if not block:
        raise InstallError(f"{LOCK} pins no uv; run `make lock`")
    return block


def find_uv(venv: Path) -> str:
    """uv from PATH, or the locked one installed into the venv (never into the user's Python)."""
    on_path = shutil.which("uv")
    if on_path:
        return on_path
    in_venv = venv / "bin" / "uv"
    if in_venv.exists():
        return str(in_venv)
    create_venv(venv, with_pip=True)
    pinned = venv / "uv-requirements.txt"
    pinned.write_text("\n".join(_locked_uv()) + "\n")
    try:
        _run(
            [
                str(_venv_python(venv)),
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--require-hashes",
                "-r",
                str(pinned),
            ],
            what="installing uv into the virtualenv with its pip",
        )
    finally:
        pinned.unlink()
    if not in_venv.exists():
        raise InstallError(f"pip reported success but {in_venv} is missing")
    return str(in_venv)


def sync(uv: str, venv: Path) -> None:
    """The exact locked set (hash-checked), then the workspace packages, editable."""
    python = str(_venv_python(venv))
    _run(
        [uv, "pip", "sync", "--quiet", "--python", python, "--require-hashes", str(LOCK)],
        what="installing the lock",
    )
    editables = [arg for path in WORKSPACE for arg in ("-e", path)]
    _run(
        [
            uv,
            "pip",
            "install",
            "--quiet",
            "--python",
            python,
            "--no-deps",
            "--no-build-isolation",
            *editables,
        ],
        what="installing the workspace packages",
    )


def verify(venv: Path) -> None:
    """`.venv` holds what `make test` runs and imports every package; else say what is missing."""
    bin_dir = venv / "bin"
    missing = [name for name in EXPECTED_COMMANDS if not (bin_dir / name).exists()]
    if missing:
        raise InstallError(
            f"{venv} is incomplete: bin/{', bin/'.join(missing)} missing. "
            f"Delete it (rm -rf {venv}) and run make install again."
        )
    probe = subprocess.run(  # noqa: S603
        [str(bin_dir / "python"), "-c", EXPECTED_IMPORTS],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode != 0:
        cause = (probe.stderr.strip().splitlines() or [f"exit {probe.returncode}"])[-1]
        raise InstallError(
            f"{venv} is incomplete: {cause}. Delete it (rm -rf {venv}) and run make install again."
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--venv", default=".venv", help="where (default .venv)")
    args = parser.parse_args(argv)
    venv = (ROOT / args.venv).resolve()
    try:
        check_python()
        uv_on_path = shutil.which("uv") is not None
        if not uv_on_path:
            check_venv_support()
        # pip only when uv must be bootstrapped into the venv.
        create_venv(venv, with_pip=not uv_on_path)
        uv = find_uv(venv)
        sync(uv, venv)
        verify(venv)
    except InstallError as exc:
        print(f"\nmake install: {exc}", file=sys.stderr)
        return 1
    relative = os.path.relpath(venv, Path.cwd())
    print(
        f"\n{relative} is ready (Python {sys.version_info[0]}.{sys.version_info[1]}, uv {uv}). "
        "Next: make test, or make dev"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

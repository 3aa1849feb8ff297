"""The Python versions written across the repository agree with each other.

Two numbers, each with one meaning:

- the oldest supported Python: `requires-python` in every pyproject, ruff's
  `target-version`, mypy's `python_version`, `make install`'s check and the
  first entry of the CI matrix;
- the deployed Python: the base image of every Dockerfile and of the compose
  file, render.yaml's `PYTHON_VERSION`, and the last entry of the CI matrix
  (the newest CPython every locked dependency has wheels for: docs/local-docker.md).

The matrix runs every minor in between. The uv that `make install` bootstraps,
the one Render's build installs and the one in the images are one version too.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import yaml

from devharness.services import ROOT
from scripts import install

Version = tuple[int, int]
WORKSPACE = [
    "libs/common",
    "libs/devservices",
    "services/api",
    "services/worker",
    "services/realtime",
]
DOCKERFILES = ["deploy/Dockerfile", "deploy/console.Dockerfile"]


def _version(text: str) -> Version:
    major, minor = text.split(".")[:2]
    return int(major), int(minor)


def _pyproject(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def _minimum(pyproject: dict[str, Any]) -> Version:
    match = re.fullmatch(r">=\s*(\d+\.\d+)", pyproject["project"]["requires-python"])
    assert match, "requires-python must be a plain lower bound, e.g. >=3.11"
    return _version(match.group(1))


def _test_job() -> dict[str, Any]:
    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    job: dict[str, Any] = workflow["jobs"]["test"]
    return job


def _matrix() -> list[Version]:
    return [_version(entry) for entry in _test_job()["strategy"]["matrix"]["python"]]


def _image_version(image: str) -> Version:
    match = re.fullmatch(r"python:(\d+\.\d+)-slim", image)
    assert match, f"{image}: expected python:3.X-slim"
    return _version(match.group(1))


def _deployed() -> Version:
    text = (ROOT / "deploy/Dockerfile").read_text()
    match = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", text, re.MULTILINE)
    assert match, "deploy/Dockerfile names no default PYTHON_IMAGE"
    return _image_version(match.group(1))


ROOT_PYPROJECT = _pyproject(ROOT / "pyproject.toml")
MINIMUM = _minimum(ROOT_PYPROJECT)


class TestOldestSupported:
    """requires-python, ruff, mypy, make install and the matrix start at the same Python."""

    def test_every_package_requires_the_same_minimum(self) -> None:
        for package in WORKSPACE:
            assert _minimum(_pyproject(ROOT / package / "pyproject.toml")) == MINIMUM, package

    def test_ruff_targets_the_minimum(self) -> None:
        assert ROOT_PYPROJECT["tool"]["ruff"]["target-version"] == "py{}{}".format(*MINIMUM)

    def test_mypy_checks_against_the_minimum(self) -> None:
        assert _version(ROOT_PYPROJECT["tool"]["mypy"]["python_version"]) == MINIMUM

    def test_make_install_refuses_below_the_minimum(self) -> None:
        assert install.MINIMUM == MINIMUM
        makefile = (ROOT / "Makefile").read_text()
        assert "sys.version_info >= ({}, {})".format(*MINIMUM) in makefile

    def test_the_matrix_starts_at_the_minimum(self) -> None:
        assert _matrix()[0] == MINIMUM


class TestDeployed:
    """The images, render.yaml and the matrix's newest entry are one Python."""

    def test_every_dockerfile_defaults_to_the_same_base(self) -> None:
        for name in DOCKERFILES:
            images = re.findall(r"^ARG PYTHON_IMAGE=(\S+)$", (ROOT / name).read_text(), re.M)
            assert [_image_version(image) for image in images] == [_deployed()], name

    def test_compose_builds_on_the_same_base(self) -> None:
        compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
        defaults = [
            re.fullmatch(r"\$\{PYTHON_IMAGE:-(\S+)\}", build["args"]["PYTHON_IMAGE"])
            for service in compose["services"].values()
            if (build := service.get("build"))
        ]
        assert defaults, "docker-compose.yml builds no image"
        assert all(defaults), "every build passes PYTHON_IMAGE with a default"
        assert {_image_version(found.group(1)) for found in defaults if found} == {_deployed()}

    def test_render_pins_a_full_version_of_the_same_minor(self) -> None:
        blueprint = yaml.safe_load((ROOT / "render.yaml").read_text())
        for service in blueprint["services"]:
            if service.get("runtime") != "python":
                continue
            pinned = {e.get("key"): e.get("value") for e in service["envVars"]}["PYTHON_VERSION"]
            # Render takes only a fully qualified version in PYTHON_VERSION.
            assert re.fullmatch(r"\d+\.\d+\.\d+", str(pinned)), service["name"]
            assert _version(str(pinned)) == _deployed(), service["name"]

    def test_the_matrix_runs_every_minor_up_to_the_deployed_one(self) -> None:
        matrix = _matrix()
        assert matrix == [(3, minor) for minor in range(MINIMUM[1], matrix[-1][1] + 1)]
        assert matrix[-1] == _deployed()

    def test_ci_installs_the_deployed_python_for_the_rehearsal(self) -> None:
        steps = _test_job()["steps"]
        wanted = [s["with"]["python-version"] for s in steps if "setup-python" in s.get("uses", "")]
        assert len(wanted) == 1
        versions = wanted[0].splitlines()
        assert "{}.{}".format(*_deployed()) in versions
        assert versions[-1] == "${{ matrix.python }}", "the matrix's Python must be the default"


class TestUvPin:
    """One uv version: the dev lock's, Render's build and the images'."""

    def test_render_and_the_images_install_the_locked_uv(self) -> None:
        locked = install._locked_uv()[0].split()[0]  # uv==X.Y.Z
        blueprint = (ROOT / "render.yaml").read_text()
        assert set(re.findall(r"pip install (uv==\S+)", blueprint)) == {locked}
        dockerfile = (ROOT / "deploy/Dockerfile").read_text()
        assert re.findall(r"^ARG UV_VERSION=(\S+)$", dockerfile, re.M) == [locked[4:]]

"""scripts/install.py's checks, each failure naming its cause and remedy.

`make install` itself, from a clean checkout without uv, is
tests/system/test_make_install.py; these are the checks that need no install.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from scripts import install


class TestCheckPython:
    """An interpreter older than 3.11 is refused, naming what to run instead."""

    def test_3_10_is_refused_with_the_version_found(self) -> None:
        with pytest.raises(install.InstallError) as refused:
            install.check_python((3, 10, 13))
        assert "Python 3.11 or newer is required" in str(refused.value)
        assert "is 3.10.13" in str(refused.value)
        assert "make install PYTHON=python3.11" in str(refused.value)

    def test_3_11_and_later_pass(self) -> None:
        for version in [(3, 11, 0), (3, 13, 0), (3, 15, 1)]:
            install.check_python(version)


class TestCheckVenvSupport:
    """Without venv or ensurepip, the message names Debian's package for this Python."""

    def test_missing_ensurepip_names_the_os_package(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setitem(sys.modules, "ensurepip", None)  # `import ensurepip` now fails
        with pytest.raises(install.InstallError) as refused:
            install.check_venv_support()
        package = f"python{sys.version_info[0]}.{sys.version_info[1]}-venv"
        assert "has no ensurepip module" in str(refused.value)
        assert f"sudo apt install {package}" in str(refused.value)

    def test_present_modules_pass(self) -> None:
        install.check_venv_support()


class TestVerify:
    """A `.venv` missing what `make test` runs is named, with how to start again."""

    def test_missing_commands_are_listed(self, tmp_path: Path) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name in install.EXPECTED_COMMANDS:
            if name not in {"pytest", "mypy"}:
                (bin_dir / name).touch()
        with pytest.raises(install.InstallError) as refused:
            install.verify(tmp_path)
        assert f"{tmp_path} is incomplete: bin/pytest, bin/mypy missing" in str(refused.value)
        assert f"rm -rf {tmp_path}" in str(refused.value)

    def test_a_package_that_does_not_import_is_named(self, tmp_path: Path) -> None:
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        for name in install.EXPECTED_COMMANDS:
            (bin_dir / name).touch()
        # A python that cannot import the workspace: this interpreter with no path to it.
        (bin_dir / "python").unlink()
        (bin_dir / "python").write_text(
            f"#!/bin/sh\nexec {sys.executable} -I -c 'import no_such_package_here'\n"
        )
        (bin_dir / "python").chmod(0o755)
        with pytest.raises(install.InstallError) as refused:
            install.verify(tmp_path)
        assert "No module named 'no_such_package_here'" in str(refused.value)


class TestLockedUv:
    """The uv bootstrapped into `.venv` is the dev lock's, with its hashes."""

    def test_block_is_the_pin_and_its_hashes(self) -> None:
        block = install._locked_uv()
        assert block[0].startswith("uv==")
        assert all(line.strip().startswith("--hash=sha256:") for line in block[1:])
        assert len(block) > 2

"""A fresh checkout for tests that run the repository's own entry points (make targets)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from devharness.services import ROOT


def copy_tracked_files(destination: Path) -> None:
    """The files git tracks (and untracked ones it does not ignore), as in the worktree.

    What a clone of the working tree would hold: no `.venv`, `.run/`, `.env` or
    caches, so nothing ignored in the developer's checkout can help the test.
    """
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    for name in filter(None, listed.split("\0")):
        source = ROOT / name
        if source.is_file():  # a tracked file deleted in the worktree is gone here too
            target = destination / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target)

from __future__ import annotations

import re
from pathlib import Path

_LINE = re.compile(r"^([A-Za-z0-9_-]+):\s*(.+)$")
# Heroku's name for the one-shot step that must succeed before the processes start.
RELEASE = "release"


def read_procfile(path: Path) -> dict[str, str]:
    """The `name: command` lines of a Procfile, in order; blank lines and `#` comments skipped."""
    processes: dict[str, str] = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise ValueError(f"{path}:{number}: not a `name: command` line: {line[:80]!r}")
        name, command = match.groups()
        if name in processes:
            raise ValueError(f"{path}:{number}: {name!r} is defined twice")
        processes[name] = command.strip()
    if not set(processes) - {RELEASE}:
        raise ValueError(f"{path}: no processes")
    return processes

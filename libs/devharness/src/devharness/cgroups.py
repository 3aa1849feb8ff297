"""Memory-capped cgroups for tests and benchmarks: made for one run, removed after it.

`MemoryCgroup.create(name, limit)` makes a cgroup with a memory limit, the way
a container runtime (Render's too) holds an instance to its plan:

- cgroup v1 (memory controller on its own hierarchy): a child of this
  process's own memory cgroup, so the processes stay inside whatever holds
  this process (and are counted there too);
- cgroup v2: a child of this process's cgroup when its memory controller is
  delegated there, else a child of the hierarchy's root.

A process enters it through `prefix()`, a shell that writes itself into
`cgroup.procs` and then execs the command, so every process it starts is
inside from the first instruction. `remove()` moves anything left to the
parent and deletes the directory. Making a cgroup needs root (or a delegated
subtree); `CgroupUnavailable` says why it could not be made.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from common.memory import parse_mountinfo

_CGROUP_ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """Raised when no memory cgroup can be made here (no permission, no controller)."""


def _own_paths() -> dict[str, str]:
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["v1"] = path
    return paths


def _candidates() -> Iterator[tuple[str, Path]]:
    """(version, parent directory) where a memory cgroup could be made, best first."""
    own = _own_paths()
    for mount_root, mount_point, fstype, options in parse_mountinfo(
        Path("/proc/self/mountinfo").read_text()
    ):
        if fstype == "cgroup" and "memory" in options and "v1" in own:
            relative = own["v1"][len(mount_root) :] if own["v1"].startswith(mount_root) else ""
            yield "v1", Path(mount_point) / relative.strip("/")
        elif fstype == "cgroup2" and "v2" in own:
            relative = own["v2"][len(mount_root) :] if own["v2"].startswith(mount_root) else ""
            yield "v2", Path(mount_point) / relative.strip("/")
            yield "v2", Path(mount_point)


@dataclass
class MemoryCgroup:
    """A cgroup made for one test or benchmark run, holding its processes to `limit` bytes."""

    path: Path
    version: str
    limit: int

    @classmethod
    def create(cls, name: str, limit: int) -> MemoryCgroup:
        """Make `name` with a memory limit of `limit` bytes (and no swap beyond it)."""
        reasons = []
        for version, parent in _candidates():
            path = parent / name
            try:
                path.mkdir()
            except OSError as exc:
                reasons.append(f"{version} {parent}: {exc.strerror}")
                continue
            cgroup = cls(path, version, limit)
            try:
                cgroup._set_limit()
            except OSError as exc:
                reasons.append(f"{version} {parent}: {exc.strerror or exc}")
                cgroup.remove()
                continue
            return cgroup
        raise CgroupUnavailable("; ".join(reasons) or "no cgroup memory controller is mounted")

    def _set_limit(self) -> None:
        if self.version == "v2":
            if not (self.path / "memory.max").exists():
                raise OSError("the memory controller is not enabled for this subtree")
            (self.path / "memory.max").write_text(str(self.limit))
            with contextlib.suppress(OSError):
                (self.path / "memory.swap.max").write_text("0")
        else:
            (self.path / "memory.limit_in_bytes").write_text(str(self.limit))
            with contextlib.suppress(OSError):  # absent without swap accounting
                (self.path / "memory.memsw.limit_in_bytes").write_text(str(self.limit))

    def prefix(self) -> list[str]:
        """A command prefix that runs the command inside this cgroup."""
        procs = str(self.path / "cgroup.procs")
        return ["/bin/sh", "-c", 'echo 0 > "$0" && exec "$@"', procs]

    def pids(self) -> list[int]:
        """The processes inside now."""
        with contextlib.suppress(OSError):
            text = (self.path / "cgroup.procs").read_text()
            return [int(line) for line in text.split()]
        return []

    def oom_kills(self) -> int:
        """How many processes the kernel's OOM killer has killed in this cgroup."""
        name = "memory.events" if self.version == "v2" else "memory.oom_control"
        for line in (self.path / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
        return 0

    def peak(self) -> int | None:
        """The most memory charged to the cgroup so far (page cache included), if known."""
        name = "memory.peak" if self.version == "v2" else "memory.max_usage_in_bytes"
        with contextlib.suppress(OSError, ValueError):
            return int((self.path / name).read_text())
        return None

    def remove(self) -> None:
        """Move what is still inside to the parent cgroup and delete the directory."""
        parent_procs = self.path.parent / "cgroup.procs"
        deadline = time.monotonic() + 5
        while self.path.exists():
            for pid in self.pids():
                with contextlib.suppress(OSError):
                    parent_procs.write_text(str(pid))
            try:
                self.path.rmdir()
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)  # exiting processes leave the cgroup a moment later


def memory_cgroup_or_reason(name: str, limit: int) -> tuple[MemoryCgroup | None, str]:
    """A cgroup, or None and why not (callers fall back to telling the service its limit)."""
    if os.name != "posix" or not _CGROUP_ROOT.is_dir():
        return None, "no /sys/fs/cgroup on this system"
    try:
        return MemoryCgroup.create(name, limit), ""
    except (CgroupUnavailable, OSError) as exc:
        return None, str(exc)

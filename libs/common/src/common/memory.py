"""The memory an instance may use, and how a service sizes what grows with load to fit it.

The limit is `MEMORY_LIMIT` when it is set (bytes, or a size: `512MB`,
`512MiB`, `2GB`); otherwise the cgroup's, the smallest on the way from this
process's cgroup up to the root of its hierarchy (cgroup v2 `memory.max`, v1
`memory.limit_in_bytes`), which is what a container, a Render instance among
them, is held to; otherwise the host's memory, and the service says so in its
log, since nothing then stops a burst short of the machine.

A service keeps `MEMORY_HEADROOM` of the limit free (20%: allocator slack,
page cache, a measurement that was a little low) and plans with the rest: its
fixed part (the processes it starts with, at their measured size) comes off
first, and what is left is shared among what grows with load, each at its
measured cost per unit (a hashing process, a socket, a job process). When the
budget is full, more load waits or is refused; nothing grows past it.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

MIB = 1 << 20
# cgroup v1 reports "no limit" as the largest page-aligned counter, about 2**63.
_UNLIMITED = 1 << 62
_V2_FILE = "memory.max"
_V1_FILE = "memory.limit_in_bytes"
_logger = logging.getLogger("common.memory")


@dataclass(frozen=True, slots=True)
class MemoryLimit:
    """How many bytes the instance may use, and where that figure came from."""

    bytes: int
    source: str

    @property
    def is_enforced(self) -> bool:
        """Whether something outside the process holds it to the limit (a cgroup)."""
        return self.source.startswith("cgroup")


def parse_mountinfo(mountinfo: str) -> list[tuple[str, str, str, set[str]]]:
    """(root, mount point, filesystem type, super options) of each mount (proc(5) mountinfo)."""
    mounts = []
    for line in mountinfo.splitlines():
        fields = line.split()
        if "-" not in fields:
            continue
        separator = fields.index("-")
        if len(fields) < separator + 4 or separator < 5:
            continue
        fstype, super_options = fields[separator + 1], set(fields[separator + 3].split(","))
        mounts.append((fields[3], fields[4], fstype, super_options))
    return mounts


def _read_limit(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if not text.isdigit():  # "max" (v2): no limit at this level
        return None
    value = int(text)
    return value if value < _UNLIMITED else None


def _smallest_on_path(mount_point: Path, relative: str, filename: str) -> tuple[int, Path] | None:
    """The smallest limit from the cgroup directory up to the hierarchy's root, and its file."""
    directory = mount_point / relative.strip("/")
    if not directory.is_dir():
        # The process's cgroup is not visible in this mount (a container without
        # its own cgroup namespace sees its own cgroup as the mount's root).
        directory = mount_point
    found: tuple[int, Path] | None = None
    while True:
        limit = _read_limit(directory / filename)
        if limit is not None and (found is None or limit < found[0]):
            found = (limit, directory / filename)
        if directory == mount_point or directory.parent == directory:
            return found
        directory = directory.parent


def cgroup_limit(cgroup: str, mountinfo: str, *, root: Path = Path("/")) -> MemoryLimit | None:
    """The memory limit cgroups put on a process, from its `/proc/<pid>/cgroup` and mountinfo.

    Both hierarchies are read (a hybrid host has the memory controller on v1 and
    an empty v2 tree); the smaller limit wins. `root` prefixes mount points (tests).
    """
    paths: dict[str, str] = {}
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":
            paths["v2"] = path
        elif "memory" in controllers.split(","):
            paths["v1"] = path
    found: list[tuple[int, str]] = []
    for mount_root, mount_point, fstype, options in parse_mountinfo(mountinfo):
        if fstype == "cgroup2" and "v2" in paths:
            version, filename, path = "v2", _V2_FILE, paths["v2"]
        elif fstype == "cgroup" and "memory" in options and "v1" in paths:
            version, filename, path = "v1", _V1_FILE, paths["v1"]
        else:
            continue
        relative = path[len(mount_root) :] if path.startswith(mount_root) else ""
        limit = _smallest_on_path(root / mount_point.lstrip("/"), relative, filename)
        if limit is not None:
            found.append((limit[0], f"cgroup {version} {limit[1]}"))
    if not found:
        return None
    value, source = min(found)
    return MemoryLimit(value, source)


def host_memory() -> int:
    """The machine's physical memory in bytes."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def detect_limit(setting: int | None = None) -> MemoryLimit:
    """`MEMORY_LIMIT` if set, else this process's cgroup limit, else the host's memory."""
    if setting is not None:
        return MemoryLimit(int(setting), "MEMORY_LIMIT")
    try:
        limit = cgroup_limit(
            Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
        )
    except OSError:
        limit = None
    return limit or MemoryLimit(host_memory(), "host memory (no MEMORY_LIMIT, no cgroup limit)")


def cgroup_cpus(cgroup: str, mountinfo: str, *, root: Path = Path("/")) -> float | None:
    """The CPUs a cgroup quota allows (v2 `cpu.max`, v1 `cpu.cfs_quota_us` / period), if any."""
    paths = {}
    for line in cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            controllers = parts[1].split(",") if parts[1] else ["v2"]
            for name in controllers:
                paths[name] = parts[2]
    for mount_root, mount_point, fstype, options in parse_mountinfo(mountinfo):
        base = root / mount_point.lstrip("/")
        if fstype == "cgroup2" and "v2" in paths:
            path = paths["v2"]
        elif fstype == "cgroup" and "cpu" in options and "cpu" in paths:
            path = paths["cpu"]
        else:
            continue
        relative = path[len(mount_root) :] if path.startswith(mount_root) else ""
        directory = base / relative.strip("/")
        if not directory.is_dir():
            directory = base
        quota = _cpu_quota(directory)
        if quota is not None:
            return quota
    return None


def _cpu_quota(directory: Path) -> float | None:
    try:
        if (directory / "cpu.max").exists():
            quota, _, period = (directory / "cpu.max").read_text().strip().partition(" ")
            return None if quota == "max" else int(quota) / int(period or "100000")
        quota_us = int((directory / "cpu.cfs_quota_us").read_text())
        period_us = int((directory / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return None if quota_us <= 0 else quota_us / period_us


def available_cpus() -> int:
    """Whole CPUs this process may run on: its affinity, lowered by a cgroup quota (at least 1)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    try:
        quota = cgroup_cpus(
            Path("/proc/self/cgroup").read_text(), Path("/proc/self/mountinfo").read_text()
        )
    except OSError:
        quota = None
    if quota is not None:
        cpus = min(cpus or 1, math.ceil(quota))
    return max(1, cpus or 1)


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    """An instance's limit, the headroom kept free, and the fixed part of the service in it."""

    limit: MemoryLimit
    headroom: float
    fixed: int

    @property
    def usable(self) -> int:
        """The bytes the service plans with: the limit less the headroom."""
        return int(self.limit.bytes * (1 - self.headroom))

    @property
    def available(self) -> int:
        """What is left for what grows with load once the fixed part is counted."""
        return max(0, self.usable - self.fixed)

    def units(self, unit_bytes: int, *, shares: int = 1) -> int:
        """How many units of `unit_bytes` one of `shares` equal shares of `available` holds."""
        return self.available // max(1, shares) // max(1, unit_bytes)

    def describe(self) -> str:
        """One line for the log: the limit, its source, and the split."""
        return (
            f"memory limit {self.limit.bytes / MIB:,.0f} MiB from {self.limit.source}; "
            f"planning with {self.usable / MIB:,.0f} MiB ({1 - self.headroom:.0%}): "
            f"{self.fixed / MIB:,.0f} MiB fixed, {self.available / MIB:,.0f} MiB for load"
        )


def plan_budget(limit_setting: int | None, headroom: float, fixed: int) -> MemoryBudget:
    """The budget of this process's instance; warns when no limit is enforced."""
    budget = MemoryBudget(detect_limit(limit_setting), headroom, fixed)
    if budget.limit.source.startswith("host"):
        _logger.warning(
            "no memory limit found (MEMORY_LIMIT unset, no cgroup limit): planning with the "
            "host's %s MiB; set MEMORY_LIMIT to the instance's memory",
            f"{budget.limit.bytes / MIB:,.0f}",
        )
    return budget

"""The memory limit: MEMORY_LIMIT, else the cgroup's (v1 or v2), else the host's; the budget."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.memory import (
    MIB,
    MemoryBudget,
    MemoryLimit,
    cgroup_cpus,
    cgroup_limit,
    detect_limit,
    host_memory,
    plan_budget,
)
from common.settings import CommonSettings

V2_MOUNT = "30 23 0:27 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
V1_MOUNTS = (
    "35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n"
    "32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime - cgroup cgroup rw,cpu,cpuacct\n"
    "41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n"
)


def _write(root: Path, path: str, text: str) -> None:
    file = root / path.lstrip("/")
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(text)


class TestCgroupV2:
    """memory.max of the process's cgroup and its ancestors; the smallest wins."""

    def test_the_smallest_limit_on_the_way_to_the_root_wins(self, tmp_path: Path) -> None:
        _write(tmp_path, "/sys/fs/cgroup/app.slice/memory.max", "536870912\n")
        _write(tmp_path, "/sys/fs/cgroup/app.slice/web/memory.max", "max\n")
        limit = cgroup_limit("0::/app.slice/web\n", V2_MOUNT, root=tmp_path)
        assert limit is not None
        assert limit.bytes == 512 * MIB
        assert limit.source.startswith("cgroup v2 ")
        assert limit.source.endswith("app.slice/memory.max")
        assert limit.is_enforced

    def test_max_everywhere_is_no_limit(self, tmp_path: Path) -> None:
        _write(tmp_path, "/sys/fs/cgroup/web/memory.max", "max\n")
        assert cgroup_limit("0::/web\n", V2_MOUNT, root=tmp_path) is None

    def test_a_container_sees_its_own_cgroup_as_the_mount_root(self, tmp_path: Path) -> None:
        # No cgroup namespace: /proc/self/cgroup names a host path the mount does not show.
        _write(tmp_path, "/sys/fs/cgroup/memory.max", "2147483648\n")
        limit = cgroup_limit("0::/kubepods/pod1/abc\n", V2_MOUNT, root=tmp_path)
        assert limit is not None
        assert limit.bytes == 2 * 1024 * MIB


class TestCgroupV1:
    """memory.limit_in_bytes on the memory hierarchy; the 'unlimited' value is no limit."""

    def test_nested_limit_is_read(self, tmp_path: Path) -> None:
        _write(tmp_path, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")
        _write(tmp_path, "/sys/fs/cgroup/memory/svc/memory.limit_in_bytes", "512000000")
        cgroup = "4:memory:/svc\n0::/\n"
        limit = cgroup_limit(cgroup, V1_MOUNTS, root=tmp_path)
        assert limit == MemoryLimit(
            512_000_000, f"cgroup v1 {tmp_path}/sys/fs/cgroup/memory/svc/memory.limit_in_bytes"
        )

    def test_unlimited_is_no_limit(self, tmp_path: Path) -> None:
        _write(tmp_path, "/sys/fs/cgroup/memory/memory.limit_in_bytes", "9223372036854771712")
        assert cgroup_limit("4:memory:/\n0::/\n", V1_MOUNTS, root=tmp_path) is None

    def test_no_cgroup_mounted_is_no_limit(self, tmp_path: Path) -> None:
        assert (
            cgroup_limit("0::/\n", "22 1 0:21 / /proc rw - proc proc rw\n", root=tmp_path) is None
        )


class TestCpuQuota:
    """A CPU quota bounds what counts as one CPU each (Render's 0.5 CPU is one)."""

    def test_v2_cpu_max(self, tmp_path: Path) -> None:
        _write(tmp_path, "/sys/fs/cgroup/web/cpu.max", "50000 100000\n")
        assert cgroup_cpus("0::/web\n", V2_MOUNT, root=tmp_path) == 0.5

    def test_v2_no_quota(self, tmp_path: Path) -> None:
        _write(tmp_path, "/sys/fs/cgroup/web/cpu.max", "max 100000\n")
        assert cgroup_cpus("0::/web\n", V2_MOUNT, root=tmp_path) is None

    def test_v1_quota(self, tmp_path: Path) -> None:
        _write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_quota_us", "200000")
        _write(tmp_path, "/sys/fs/cgroup/cpu,cpuacct/svc/cpu.cfs_period_us", "100000")
        cgroup = "2:cpu,cpuacct:/svc\n"
        assert cgroup_cpus(cgroup, V1_MOUNTS, root=tmp_path) == 2.0


class TestDetectLimit:
    """MEMORY_LIMIT wins; without it the limit names where it came from."""

    def test_the_setting_wins(self) -> None:
        assert detect_limit(256 * MIB) == MemoryLimit(256 * MIB, "MEMORY_LIMIT")

    def test_without_the_setting_a_cgroup_or_the_host(self) -> None:
        limit = detect_limit(None)
        assert limit.source.startswith(("cgroup v1 ", "cgroup v2 ", "host memory"))
        assert 0 < limit.bytes <= max(host_memory(), limit.bytes)

    def test_the_host_is_a_warning(self, caplog: pytest.LogCaptureFixture) -> None:
        budget = plan_budget(None, 0.2, 0)
        warned = any("no memory limit found" in record.message for record in caplog.records)
        assert warned == budget.limit.source.startswith("host")

    def test_sizes_are_read_from_the_environment(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("MEMORY_LIMIT", "512MB")
        assert CommonSettings(_env_file=None).memory_limit == 512_000_000
        monkeypatch.setenv("MEMORY_LIMIT", "2GiB")
        assert CommonSettings(_env_file=None).memory_limit == 2 * 1024 * MIB


class TestBudget:
    """The budget: the limit less the headroom, less the fixed part, shared among units."""

    def test_split(self) -> None:
        budget = MemoryBudget(
            MemoryLimit(1000 * MIB, "MEMORY_LIMIT"), headroom=0.2, fixed=300 * MIB
        )
        assert budget.usable == 800 * MIB
        assert budget.available == 500 * MIB
        assert budget.units(50 * MIB) == 10
        assert budget.units(50 * MIB, shares=2) == 5
        assert "1,000 MiB from MEMORY_LIMIT" in budget.describe()

    def test_a_fixed_part_larger_than_the_budget_leaves_nothing(self) -> None:
        budget = MemoryBudget(MemoryLimit(100 * MIB, "MEMORY_LIMIT"), headroom=0.2, fixed=90 * MIB)
        assert budget.available == 0
        assert budget.units(MIB) == 0

"""CPU time of processes from /proc: user + system, reaped children included."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class ProcessCpu:
    """One process's name, process group and CPU seconds so far (its reaped children's too)."""

    comm: str
    pgid: int
    seconds: float


def process_cpu(pid: int) -> ProcessCpu | None:
    """`ProcessCpu` of `pid`, or None once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    # state ppid pgrp ... utime stime cutime cstime (proc(5): fields 3, 5, 14-17)
    return ProcessCpu(comm, int(fields[2]), sum(int(value) for value in fields[11:15]) / TICKS)


def group_cpu_seconds(groups: dict[int, str]) -> dict[str, float]:
    """CPU seconds of every live process in each of the process groups, by the groups' names."""
    used = dict.fromkeys(groups.values(), 0.0)
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (cpu := process_cpu(int(entry.name))) and cpu.pgid in groups:
            used[groups[cpu.pgid]] += cpu.seconds
    return used


def delta(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {name: after.get(name, 0.0) - before.get(name, 0.0) for name in after}

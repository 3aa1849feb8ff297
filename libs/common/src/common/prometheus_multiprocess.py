"""Prometheus multiprocess mode: the directory of per-process files, and its cleanup.

prometheus_client picks its value store when `prometheus_client.values` is
imported: with `PROMETHEUS_MULTIPROC_DIR` set, every process writes its samples
to mmap files in that directory and a scrape sums them (`MultiProcessCollector`).
So this module must not import prometheus_client at module level: gunicorn's
config calls `prepare_multiprocess_dir()` before the (preloaded) app imports it,
and the workers forked afterwards inherit the variable.

A process that imported prometheus_client before the directory was known (the
Celery main process, which loads the app before `worker_init`) is switched to
the file store here; that is safe only while no metric value exists yet, which
holds for labelled metrics until their first `.labels()` call.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

ENV_VAR = "PROMETHEUS_MULTIPROC_DIR"
_PRIVATE_PREFIX = "prometheus-multiproc-"
# One directory per process tree: a gunicorn reload (HUP) re-reads the config,
# and must neither wipe the live workers' files nor make a second directory.
_prepared: dict[str, Any] = {}


def prepare_multiprocess_dir() -> str:
    """Turn multiprocess mode on for this process and its future children; the directory.

    `PROMETHEUS_MULTIPROC_DIR`, when set, is emptied of a previous run's files;
    otherwise a private temporary directory is made and exported. Idempotent.
    """
    if "path" in _prepared:
        return str(_prepared["path"])
    path = os.environ.get(ENV_VAR)
    if path:
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        # Stale files of a previous run would add dead processes' counts.
        for stale in directory.glob("*.db"):
            stale.unlink(missing_ok=True)
        _prepared["owned"] = False
    else:
        _remove_orphaned_dirs()
        path = tempfile.mkdtemp(prefix=f"{_PRIVATE_PREFIX}{os.getpid()}-")
        os.environ[ENV_VAR] = path
        _prepared["owned"] = True
    _prepared["path"] = path
    _use_file_store()
    return path


def _remove_orphaned_dirs() -> None:
    # A master killed with SIGKILL never ran on_exit; its pid names its directory.
    for directory in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*-*"):
        pid = directory.name.removeprefix(_PRIVATE_PREFIX).split("-", 1)[0]
        if pid.isdigit() and not is_alive(int(pid)):
            shutil.rmtree(directory, ignore_errors=True)


def is_alive(pid: int) -> bool:
    """Whether process `pid` exists (a process of another user counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# prometheus_client asks os.getpid() (a system call) on every sample write, to
# notice a fork; the pid cached here and refreshed in each forked child
# answers the same question for free.
_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def current_pid() -> int:
    """This process's pid, kept up to date across forks without a system call."""
    return _pid[0]


def _use_file_store() -> None:
    if "prometheus_client.values" not in sys.modules and os.environ.get(ENV_VAR):
        import prometheus_client.values  # noqa: F401 (picks the file store from ENV_VAR)
    values: Any = sys.modules["prometheus_client.values"]
    if getattr(values.ValueClass, "_cached_pid", False):
        return
    # Values made from now on go to files (also when prometheus_client was
    # imported before the directory existed), keyed by the cached pid.
    values.ValueClass = values.MultiProcessValue(process_identifier=current_pid)
    values.ValueClass._cached_pid = True


def is_multiprocess() -> bool:
    """Whether samples go to the multiprocess directory (several processes, one scrape)."""
    return bool(os.environ.get(ENV_VAR))


def mark_process_dead(pid: int) -> None:
    """Drop a dead process's live gauges (its counters and histograms stay in the sum)."""
    if not is_multiprocess():
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def remove_multiprocess_dir() -> None:
    """Delete the directory if `prepare_multiprocess_dir` made it (the tree is exiting)."""
    if _prepared.get("owned"):
        shutil.rmtree(str(_prepared["path"]), ignore_errors=True)


# Gunicorn server hooks; each gunicorn.conf.py binds them by these names.
def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """`child_exit`: the master reaped a worker (recycled, crashed or killed)."""
    mark_process_dead(worker.pid)


def gunicorn_on_exit(server: Any) -> None:
    """`on_exit`: the master is leaving; its workers are gone."""
    remove_multiprocess_dir()

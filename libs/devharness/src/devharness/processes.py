"""Long-running child processes for system tests, each in its own process group.

A test starts a process with `start_process`, waits for a line in its log, and
stops it by signalling its group (the group this module created for it), so a
Celery worker's pool children go with their parent and nothing else is touched.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, ClassVar, Self

import psutil

from devharness.polling import eventually

STOP_TIMEOUT = 15.0

# What a parent `make` (`make test`) exports to its recipes. A test that runs make
# drops them, so its make is a top-level one: `make: ***`, not `make[1]: ***`.
MAKE_VARIABLES = frozenset({"MAKEFLAGS", "MAKELEVEL", "MFLAGS", "MAKEOVERRIDES"})


def environment_without(*names: str) -> dict[str, str]:
    """This process's environment without `names` and without a parent make's variables."""
    dropped = MAKE_VARIABLES | set(names)
    return {key: value for key, value in os.environ.items() if key not in dropped}


def popen_in_session(
    command: list[str], *, cwd: Path, env: dict[str, str], log: IO[bytes]
) -> subprocess.Popen[bytes]:
    """Start `command` in a new session (its own process group), stdin closed, output to `log`."""
    return subprocess.Popen(
        command,
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


@dataclass
class ManagedProcess:
    """A child started in a new session: its Popen, its log file and a name for reports.

    `stop` signals the whole group, so a Celery worker's pool children go with it;
    a subclass whose leader stops its own children overrides `terminate`.
    """

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    _log_file: IO[bytes] = field(repr=False)
    stop_timeout: ClassVar[float] = STOP_TIMEOUT

    @classmethod
    def start(
        cls, name: str, command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path,
        **fields: Any,
    ) -> Self:  # fmt: skip
        """Start `command` in a new session (its own process group), output to `log_path`."""
        log_file = log_path.open("wb")
        process = popen_in_session(command, cwd=cwd, env=env, log=log_file)
        return cls(name, process, log_path, log_file, **fields)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pgid(self) -> int:
        """The process group this module created (start_new_session): the leader's pid."""
        return self.process.pid

    def log(self) -> str:
        """Everything the process group wrote so far (stdout and stderr)."""
        return self.log_path.read_text(errors="replace")

    def log_records(self) -> list[dict[str, Any]]:
        """The JSON log lines written so far."""
        return json_records(self.log())

    def is_running(self) -> bool:
        return self.process.poll() is None

    def check_running(self, waiting_for: str) -> None:
        """Raise, with the log, if the process has exited: what it was to do never comes."""
        if not self.is_running():
            raise RuntimeError(
                f"{self.name} exited with {self.process.returncode} before {waiting_for}:\n"
                + self.log()
            )

    async def wait_for_log(self, needle: str, *, within: float) -> None:
        """Return once `needle` is in the log; raise if the process exits or time runs out."""

        async def logged() -> bool:
            if needle in self.log():
                return True
            self.check_running(f"logging {needle!r}")
            return False

        await eventually(
            logged,
            within=within,
            interval=0.05,
            explain=lambda: f"{self.name} did not log {needle!r}",
        )

    def kill(self) -> None:
        """SIGKILL the whole group at once (a crash: no cleanup, no acks)."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)

    async def wait_exit(self, within: float) -> int | None:
        """The leader's exit code, or None if it still runs after `within` seconds."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(self.process.wait, within)
        return None

    def terminate(self) -> None:
        """SIGTERM the whole group."""
        # poll() None means the leader is not reaped yet, so its pid (the group
        # id) cannot belong to anyone else when we signal it.
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGTERM)

    async def stop(self, within: float | None = None) -> int:
        """`terminate` and wait; SIGKILL the group if the leader outlives `within` seconds."""
        self.terminate()
        code = await self.wait_exit(self.stop_timeout if within is None else within)
        if code is None:
            self.kill()
            code = await asyncio.to_thread(self.process.wait)
        self._log_file.close()
        return code


def json_records(log: str) -> list[dict[str, Any]]:
    """The JSON objects among a log's lines; other output (a traceback) is skipped."""
    records = []
    for line in log.splitlines():
        with contextlib.suppress(ValueError):
            record = json.loads(line)
            if isinstance(record, dict):
                records.append(record)
    return records


def start_process(
    name: str, command: list[str], *, env: dict[str, str], cwd: Path, log_path: Path
) -> ManagedProcess:
    """Start `command` in a new session (its own process group), output to `log_path`."""
    return ManagedProcess.start(name, command, env=env, cwd=cwd, log_path=log_path)


@dataclass(frozen=True)
class Snapshot:
    """Processes seen at one moment, by pid and start time (so a reused pid is no match)."""

    processes: dict[int, tuple[float, str]]

    @classmethod
    def of_tree(cls, root: int, *others: int, include_root: bool = True) -> Snapshot:
        """`root`, all its descendants, and `others` (daemons that left the tree, say)."""
        found: dict[int, tuple[float, str]] = {}
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(root)
            for process in [top] * include_root + top.children(recursive=True):
                with contextlib.suppress(psutil.NoSuchProcess):
                    found[process.pid] = (process.create_time(), " ".join(process.cmdline()))
        for pid in others:
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                found[pid] = (process.create_time(), " ".join(process.cmdline()))
        return cls(found)

    def pid_of(self, command: str) -> int:
        """The pid of the one process whose command line contains `command`."""
        (pid,) = [pid for pid, (_, line) in self.processes.items() if command in line]
        return pid

    def alive(self) -> list[str]:
        """`pid command` of each process of the snapshot still running (zombies are gone)."""
        left = []
        for pid, (started, command) in self.processes.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                if process.create_time() == started and process.status() != psutil.STATUS_ZOMBIE:
                    left.append(f"{pid} {command}")
        return left

    def kill(self) -> None:
        """SIGKILL whatever of the snapshot still runs (a failed test's leftovers)."""
        for pid, (started, _) in self.processes.items():
            with contextlib.suppress(psutil.NoSuchProcess):
                process = psutil.Process(pid)
                if process.create_time() == started:
                    process.kill()

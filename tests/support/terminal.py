"""A pseudo-terminal for tests that need what only a terminal does.

`Terminal` starts a command as the leader of a new session whose controlling
terminal is the pty (util-linux `setsid --ctty`), so the kernel delivers what
a real terminal would: Ctrl-C (`\\x03`) becomes SIGINT to the foreground
process group, and closing the terminal (`hang_up`) sends SIGHUP to the
session leader, as when a terminal window or an ssh connection closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import subprocess
import threading
import time
from pathlib import Path

_READ_INTERVAL = 0.05


class Terminal:
    """A command on its own pty; everything it prints is collected in `text()`."""

    def __init__(self, command: list[str], *, env: dict[str, str], cwd: Path) -> None:
        self.master, slave = os.openpty()
        try:
            self.process = subprocess.Popen(
                ["setsid", "--ctty", *command],
                stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd,
            )  # fmt: skip
        finally:
            os.close(slave)
        self._output = bytearray()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._reader = threading.Thread(target=self._read, name="pty-reader", daemon=True)
        self._reader.start()

    @property
    def pid(self) -> int:
        """The session leader's pid (setsid execs the command in place)."""
        return self.process.pid

    def _read(self) -> None:
        # select with a timeout rather than a blocking read: the master must be
        # closable (a hang-up) while this thread runs.
        while not self._closing.is_set():
            ready, _, _ = select.select([self.master], [], [], _READ_INTERVAL)
            if not ready:
                continue
            try:
                data = os.read(self.master, 65536)
            except OSError:  # EIO: no process has the terminal open any more
                return
            if not data:
                return
            with self._lock:
                self._output += data

    def text(self) -> str:
        with self._lock:
            return self._output.decode(errors="replace")

    def type(self, keys: str) -> None:
        """Type on the keyboard (`\\x03` is Ctrl-C)."""
        os.write(self.master, keys.encode())

    async def wait_for(self, needle: str, *, within: float) -> None:
        """Return once `needle` was printed; raise if the command exits or time runs out."""
        deadline = time.monotonic() + within
        while needle not in self.text():
            if self.process.poll() is not None:
                raise RuntimeError(f"exited ({self.process.returncode}):\n{self.text()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{needle!r} not printed in {within:g}s:\n{self.text()[-4000:]}")
            await asyncio.sleep(_READ_INTERVAL)  # poll interval

    def hang_up(self) -> None:
        """Close the terminal, as closing its window does (SIGHUP to the session leader)."""
        self._closing.set()
        self._reader.join()
        with contextlib.suppress(OSError):
            os.close(self.master)

    async def wait_exit(self, within: float) -> int | None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(self.process.wait, within)
        return None

    def close(self) -> None:
        if not self._closing.is_set():
            self.hang_up()

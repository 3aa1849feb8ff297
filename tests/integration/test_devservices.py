"""The embedded PostgreSQL that `make dev` and the tests start: what counts as already running."""

from __future__ import annotations

import os
from pathlib import Path

from devharness.services import ROOT
from devservices import EmbeddedPostgres, free_port
from devservices._ports import is_listening

TEMPLATE = ROOT / ".run" / "test" / "postgres-template"


class TestRunningServer:
    """A server is reused only if its directory's postmaster.pid names a live postgres."""

    def test_a_pid_file_left_by_a_killed_server_does_not_count(self, tmp_path: Path) -> None:
        postgres = EmbeddedPostgres.from_template(TEMPLATE, tmp_path / "pg", port=free_port())
        postgres.start()
        pid_file = postgres.data_dir / "postmaster.pid"
        lines = pid_file.read_text().splitlines()
        postgres.stop()
        # The server was SIGKILLed: its file stayed, and its pid is another process's now.
        lines[0] = str(os.getpid())
        pid_file.write_text("\n".join(lines) + "\n")

        again = EmbeddedPostgres(postgres.data_dir, port=free_port())
        try:
            again.start()
            assert again.started_here
            assert is_listening(again.port)
        finally:
            again.stop()

    def test_a_live_server_is_reused_and_left_running(self, tmp_path: Path) -> None:
        postgres = EmbeddedPostgres.from_template(TEMPLATE, tmp_path / "pg", port=free_port())
        postgres.start()
        try:
            other = EmbeddedPostgres(postgres.data_dir, port=free_port())
            assert other.start() == postgres.url()
            assert not other.started_here
            other.stop()
            assert is_listening(postgres.port)
        finally:
            postgres.stop()


class TestStop:
    """A server started here stops, whatever happened to the directories above its data."""

    def test_stops_when_a_parent_directory_became_private(self, tmp_path: Path) -> None:
        # As root the server runs as another user; pytest makes /tmp/pytest-of-<user>
        # private (0700) whenever a session starts, under servers already running.
        parent = tmp_path / "parent"
        postgres = EmbeddedPostgres.from_template(TEMPLATE, parent / "pg", port=free_port())
        postgres.start()
        try:
            parent.chmod(0o700)
            postgres.stop()
            assert not is_listening(postgres.port)
        finally:
            parent.chmod(0o755)
            if is_listening(postgres.port):
                postgres.started_here = True
                postgres.stop()

"""`python -m devservices start` under make, with stand-in services: how everything stops.

What `make dev` does, minus the heavy processes: a Makefile target runs the
supervisor on a Procfile, with an embedded Redis (the database part is the same
code and is covered by test_make_dev.py). Each stand-in listens on a port, so a
test can tell that it is gone; signals arrive the ways they do in real life:
to the whole process group (a terminal's Ctrl-C, `kill -- -PGID`), through a
real pseudo-terminal (Ctrl-C typed, the window closed) and through a pipe whose
reader is gone.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import pytest

from devharness.polling import eventually
from devharness.processes import Snapshot, environment_without
from devharness.services import ROOT
from devservices import free_ports
from devservices._ports import is_listening
from tests.fixtures.terminal import Terminal

pytestmark = pytest.mark.system
PYTHON = ROOT / ".venv" / "bin" / "python"
EXIT_TIMEOUT = 30.0

# A stand-in server: listens, says so, and on SIGINT stops as a server does,
# telling whether Redis still answers (its own last words need it, as
# realtime's do). `slow` takes a second to stop, as a worker finishing its
# task does; `stubborn` ignores SIGINT; `chatty` prints 5000 lines while it
# stops (into a pipe whose reader may be gone); `crash` exits 3 at once.
SERVICE = """\
import os, signal, socket, sys, time, urllib.parse
name, port, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server = socket.create_server(("127.0.0.1", port))
if mode == "stubborn":
    signal.signal(signal.SIGINT, signal.SIG_IGN)
print(f"{name} listening on {port}", flush=True)
if mode == "crash":
    sys.exit(3)
try:
    while True:
        signal.pause()
except KeyboardInterrupt:
    if mode == "slow":
        time.sleep(1)
    redis = urllib.parse.urlsplit(os.environ["REDIS_URL"])
    try:
        with socket.create_connection((redis.hostname, redis.port), timeout=5) as conn:
            conn.sendall(b"PING\\r\\n")
            said = conn.recv(64).decode().strip()
    except OSError as exc:
        said = f"nothing ({exc})"
    print(f"{name} stopping; redis said {said}", flush=True)
    for number in range(5000 if mode == "chatty" else 0):
        print(f"{name} stopping {number}", flush=True)
"""
MAKEFILE = """\
run:
\t@{python} -m devservices start Procfile $(ARGS)
"""


@dataclass
class Project:
    """A directory with a Makefile, a Procfile of stand-ins and the environment to run it."""

    path: Path
    env: dict[str, str]
    spare_ports: list[int]
    ports: dict[str, int] = field(default_factory=dict)
    snapshots: list[Snapshot] = field(default_factory=list)

    def snapshot(self, root: int, *, include_root: bool = True) -> Snapshot:
        """The processes under `root` now (killed at teardown if a test leaves any)."""
        taken = Snapshot.of_tree(root, include_root=include_root)
        self.snapshots.append(taken)
        return taken

    def procfile(self, **processes: str) -> None:
        """`name="mode"` runs a stand-in; a value containing a space is a command as it is."""
        lines = []
        for name, spec in processes.items():
            if " " not in spec:
                self.ports[name] = self.spare_ports.pop()
                spec = f"exec {PYTHON} service.py {name} {self.ports[name]} {spec}"
            lines.append(f"{name}: {spec}")
        (self.path / "Procfile").write_text("\n".join(lines) + "\n")

    def command(self, args: str = "") -> list[str]:
        return ["make", "--no-print-directory", "run", f"ARGS={args}"]

    def start(
        self, args: str = "", *, stdout: int | IO[bytes], stderr: int | IO[bytes]
    ) -> subprocess.Popen[bytes]:
        """`make run` in a new session (its own process group), as a terminal's job is."""
        return subprocess.Popen(
            self.command(args), cwd=self.path, env=self.env, stdin=subprocess.DEVNULL,
            stdout=stdout, stderr=stderr, start_new_session=True,
        )  # fmt: skip

    async def run_logged(self, *ready: str, args: str = "") -> tuple[subprocess.Popen[bytes], Path]:
        """`make run`, its output into out.log; returns once each of `ready` was printed."""
        log = self.path / "out.log"
        with log.open("wb") as out:
            make = self.start(args, stdout=out, stderr=subprocess.STDOUT)
        for needle in ready:
            await wait_for_file(log, needle)
        return make, log

    def listening(self) -> list[str]:
        """What still accepts connections: the stand-ins and the embedded Redis."""
        ports = {**self.ports, "redis": int(self.env["DEV_REDIS_PORT"])}
        return [name for name, port in ports.items() if is_listening(port)]


@pytest.fixture
def project(tmp_path: Path) -> Iterator[Project]:
    (tmp_path / "service.py").write_text(SERVICE)
    (tmp_path / "Makefile").write_text(MAKEFILE.format(python=PYTHON))
    env = environment_without("REDIS_URL", "JWT_SECRET", "ENVIRONMENT")
    # No embedded Postgres (its start and stop are test_make_dev's); a real Redis.
    redis_port, *spare_ports = free_ports(8)
    env.update(
        DATABASE_URL="postgresql://unused@127.0.0.1:1/unused",
        DEV_REDIS_PORT=str(redis_port),
        DEV_RUN_DIR=str(tmp_path / "run"),
    )
    project = Project(tmp_path, env, spare_ports)
    yield project
    for snapshot in project.snapshots:
        snapshot.kill()


def _text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


async def wait_for_file(path: Path, needle: str, *, within: float = 20.0) -> str:
    return await eventually(
        lambda: text if needle in (text := _text(path)) else None,
        within=within,
        interval=0.05,
        explain=lambda: f"{needle!r} not in {path.name}:\n{_text(path)}",
    )


def wait_exit(process: subprocess.Popen[bytes]) -> int:
    try:
        return process.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        raise AssertionError(f"make run did not exit within {EXIT_TIMEOUT:g}s") from None


def lines_with(text: str, needle: str) -> list[int]:
    return [number for number, line in enumerate(text.splitlines()) if needle in line]


class TestSignalToTheProcessGroup:
    """Ctrl-C, `kill -TERM -- -PGID` or SIGHUP to make's whole group: all stop, Redis last."""

    @pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
    async def test_services_stop_then_redis_and_the_supervisor_exits_0(
        self, project: Project, signum: signal.Signals
    ) -> None:
        project.procfile(web="polite", worker="slow")
        make, log = await project.run_logged("web listening", "worker listening")
        before = project.snapshot(make.pid)
        assert project.listening() == ["web", "worker", "redis"]

        os.killpg(make.pid, signum)
        if signum != signal.SIGINT:
            # A second SIGTERM or SIGHUP is the same stop, not a force: make
            # passes its SIGTERM on, a closed terminal is both seen and signalled.
            await wait_for_file(log, f"{signum.name} received")
            os.kill(before.pid_of("devservices start"), signum)
        # make waits for the supervisor, then dies of the signal it got itself
        # (so that a calling script knows it was stopped).
        assert wait_exit(make) == -signum
        text = log.read_text()
        stopped_redis = lines_with(text, "embedded Redis stopped")
        assert len(stopped_redis) == 1, text
        for name in ("web", "worker"):
            assert f"{name} stopping; redis said +PONG" in text
            assert lines_with(text, f"{name} stopping")[0] < stopped_redis[0], text
        assert f"{signum.name} received: stopping everything" in text
        assert "received again" not in text  # make's passed-on SIGTERM is the same stop
        assert lines_with(text, "everything stopped")[-1] > stopped_redis[0], text
        assert "make: ***" not in text  # the supervisor exited 0
        assert "Traceback" not in text
        assert project.listening() == []
        assert before.alive() == []


class TestReaderGone:
    """`make dev | tee`, and tee dies first: writes to the pipe fail, the shutdown does not."""

    async def test_a_closed_pipe_neither_kills_nor_hangs_the_shutdown(
        self, project: Project
    ) -> None:
        project.procfile(web="chatty", worker="polite")
        errors = project.path / "stderr.log"
        with errors.open("wb") as err:
            make = project.start(stdout=subprocess.PIPE, stderr=err)
        assert make.stdout is not None
        seen = b""
        while b"web listening" not in seen or b"worker listening" not in seen:
            chunk = os.read(make.stdout.fileno(), 65536)
            assert chunk, f"make exited:\n{seen.decode()}{errors.read_text()}"
            seen += chunk
        before = project.snapshot(make.pid)
        make.stdout.close()  # the reader is gone, like tee killed by the same Ctrl-C

        os.killpg(make.pid, signal.SIGINT)
        assert wait_exit(make) == -signal.SIGINT
        stderr = errors.read_text()
        assert "make: ***" not in stderr  # the supervisor exited 0
        assert "Traceback" not in stderr
        assert "Broken pipe" not in stderr
        assert project.listening() == []
        assert before.alive() == []


class TestTerminal:
    """A real pseudo-terminal: Ctrl-C typed through `| tee`, and the terminal closed."""

    @contextlib.asynccontextmanager
    async def running(self, project: Project, *, in_shell: bool) -> AsyncIterator[Terminal]:
        """`make run` in a terminal, once web and worker listen: typed into an interactive
        bash as `... 2>&1 | tee out.log` (a job of its own), or as the terminal's program."""
        if in_shell:
            env = {**project.env, "PS1": "$ ", "TERM": "dumb"}
            shell = ["bash", "--norc", "--noprofile", "-i"]
            terminal = Terminal(shell, env=env, cwd=project.path)
            terminal.type(f"{' '.join(project.command())} 2>&1 | tee out.log\n")
        else:
            terminal = Terminal(project.command(), env=project.env, cwd=project.path)
        try:
            for name in ("worker", "web"):
                await terminal.wait_for(f"{name} listening", within=20)
            yield terminal
        finally:
            terminal.close()

    async def test_ctrl_c_through_tee_stops_everything(self, project: Project) -> None:
        project.procfile(web="chatty", worker="polite")
        async with self.running(project, in_shell=True) as terminal:
            job = project.snapshot(terminal.pid, include_root=False)
            terminal.type("\x03")  # SIGINT to the terminal's foreground group: the supervisor's
            await _until_gone(job)
            assert terminal.process.poll() is None, "the shell itself should survive"
            assert project.listening() == []
            # make and tee both exit 0: the supervisor took the terminal's foreground,
            # so make saw a clean exit rather than an interrupt, and tee read to the end.
            terminal.type('echo "statuses=${PIPESTATUS[*]}."\n')
            await terminal.wait_for("statuses=0 0.", within=EXIT_TIMEOUT)
            assert "make: ***" not in terminal.text()
            assert "everything stopped" in (project.path / "out.log").read_text()

    async def test_closing_a_shells_terminal_stops_everything(self, project: Project) -> None:
        project.procfile(web="polite", worker="polite")
        async with self.running(project, in_shell=True) as terminal:
            before = project.snapshot(terminal.pid)
            terminal.hang_up()  # SIGHUP to bash, which sends it on to its jobs
            assert await terminal.wait_exit(EXIT_TIMEOUT) is not None
            await _until_gone(before)
            assert project.listening() == []

    async def test_closing_the_terminal_of_make_itself_stops_everything(
        self, project: Project
    ) -> None:
        """`ssh -t host make dev` or a window running make: make alone gets the SIGHUP."""
        project.procfile(web="polite", worker="polite")
        async with self.running(project, in_shell=False) as terminal:
            before = project.snapshot(terminal.pid)
            terminal.hang_up()
            assert await terminal.wait_exit(EXIT_TIMEOUT) == -signal.SIGHUP
            await _until_gone(before)
            assert project.listening() == []


async def _until_gone(snapshot: Snapshot, *, within: float = EXIT_TIMEOUT) -> None:
    # Polled: a process tree has no exit event.
    await eventually(
        lambda: not snapshot.alive(),
        within=within,
        interval=0.05,
        explain=lambda: f"left running: {snapshot.alive()}",
    )


class TestEscalation:
    """What will not stop on SIGINT is killed: after the grace period, or on a second Ctrl-C."""

    async def test_a_second_ctrl_c_kills_what_ignores_the_first(self, project: Project) -> None:
        project.procfile(web="polite", stubborn="stubborn")
        make, log = await project.run_logged(
            "stubborn listening", "web listening", args="--grace 600"
        )
        before = project.snapshot(make.pid)

        os.killpg(make.pid, signal.SIGINT)
        await wait_for_file(log, "web stopped")
        assert "stubborn" in project.listening()
        os.killpg(make.pid, signal.SIGINT)
        assert wait_exit(make) == -signal.SIGINT
        text = log.read_text()
        assert "stubborn killed on request" in text
        assert "everything stopped; stubborn had to be killed" in text
        assert lines_with(text, "stubborn killed")[0] < lines_with(text, "Redis stopped")[0]
        assert project.listening() == []
        assert before.alive() == []

    async def test_a_group_member_that_outlives_the_grace_period_is_killed(
        self, project: Project
    ) -> None:
        # `cmd &` in a non-interactive shell ignores SIGINT: an orphan in the making.
        project.ports.update(bg=project.spare_ports.pop(), head=project.spare_ports.pop())
        project.procfile(
            family=f"{PYTHON} service.py bg {project.ports['bg']} polite & "
            f"exec {PYTHON} service.py head {project.ports['head']} polite"
        )
        make, log = await project.run_logged("bg listening", "head listening", args="--grace 1")
        before = project.snapshot(make.pid)

        os.killpg(make.pid, signal.SIGTERM)
        wait_exit(make)
        text = log.read_text()
        assert "head stopping" in text  # the leader stopped on SIGINT...
        assert "family killed after 1s" in text  # ...its background child did not
        assert "make: *** [Makefile:2: run] Error 1" in text  # not a clean stop: said so
        assert project.listening() == []
        assert before.alive() == []


class TestLifecycle:
    """The release step, and a process that exits by itself."""

    async def test_a_process_that_exits_stops_the_others_and_fails(self, project: Project) -> None:
        project.procfile(web="polite", flaky="crash")
        make, log = await project.run_logged()
        assert wait_exit(make) == 2  # make's status for a failed recipe
        text = log.read_text()
        assert "flaky exited on its own (exit 3): stopping the others" in text
        assert lines_with(text, "web stopped")[0] < lines_with(text, "Redis stopped")[0]
        assert "make: *** [Makefile:2: run] Error 1" in text
        assert project.listening() == []

    async def test_release_runs_to_its_end_first(self, project: Project) -> None:
        project.procfile(release="echo migrating && echo migrated", web="polite")
        make, log = await project.run_logged("web listening")
        os.killpg(make.pid, signal.SIGTERM)
        assert wait_exit(make) == -signal.SIGTERM
        text = log.read_text()
        assert lines_with(text, "release finished (exit 0)")[0] < lines_with(text, "web started")[0]
        assert lines_with(text, "release | migrated")[0] < lines_with(text, "web started")[0]

    async def test_a_failed_release_starts_nothing(self, project: Project) -> None:
        project.procfile(release="echo no database; exit 4", web="polite")
        make, log = await project.run_logged()
        assert wait_exit(make) == 2
        text = log.read_text()
        assert "release failed (exit 4): not starting the processes" in text
        assert "web started" not in text
        assert "embedded Redis stopped" in text
        assert project.listening() == []

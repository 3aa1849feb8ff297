"""`make dev` on a machine with nothing running: embedded Postgres and Redis, migrations, the
API, realtime, the worker, the scheduler and the console; the addresses once they answer; a
countdown job from POST to succeeded; and a stop that leaves nothing behind, however it comes
(Ctrl-C to the process group, Ctrl-C typed into a terminal through `| tee`, the terminal
closed, SIGTERM with the pipe's reader gone)."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from devharness.polling import eventually
from devharness.processes import ManagedProcess, Snapshot, start_process
from devharness.services import ROOT
from devservices._ports import is_listening
from tests.fixtures.devstack import DevPorts, dev_environment
from tests.fixtures.jobs import FINAL_STATES
from tests.fixtures.terminal import Terminal

pytestmark = pytest.mark.system
PASSWORD = "correct horse battery staple"
READY_TIMEOUT = 120.0
STOP_TIMEOUT = 60.0
SERVICES = ("release", "api", "realtime", "worker", "scheduler", "console")


@dataclass
class DevRun:
    """One `make dev`: its environment and ports, and the run directory it shares."""

    run_dir: Path
    env: dict[str, str] = field(init=False)
    ports: DevPorts = field(init=False)
    snapshots: list[Snapshot] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.env, self.ports = dev_environment(self.run_dir)

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.ports.api}"

    def banner(self) -> list[str]:
        """The lines `make dev` prints once everything answers."""
        return [
            f"API        {self.api}",
            f"docs       {self.api}/docs",
            f"WebSocket  ws://127.0.0.1:{self.ports.realtime}/ws",
            f"console    http://127.0.0.1:{self.ports.console}",
        ]

    def snapshot(self, root: int, *, include_root: bool = True) -> Snapshot:
        """Every process of this run now: the tree under `root` and the Postgres server
        (pg_ctl starts it in a session of its own, outside the tree)."""
        postmaster = int((self.run_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        taken = Snapshot.of_tree(root, postmaster, include_root=include_root)
        self.snapshots.append(taken)
        return taken

    def listening(self) -> list[str]:
        ports = dataclasses.asdict(self.ports)
        return [name for name, port in ports.items() if is_listening(port)]

    async def until_all_gone(self, snapshot: Snapshot) -> None:
        # Polled: a process tree has no exit event.
        await eventually(
            lambda: not snapshot.alive() and not self.listening(),
            within=STOP_TIMEOUT,
            interval=0.1,
            explain=lambda: f"left: {snapshot.alive()}, listening: {self.listening()}",
        )


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One run directory for the module: Postgres is initdb'd once, as on a developer's machine."""
    return tmp_path_factory.mktemp("dev-run")


@pytest.fixture
def dev_run(run_dir: Path) -> Iterator[DevRun]:
    run = DevRun(run_dir)
    yield run
    for snapshot in run.snapshots:  # a failed test's leftovers
        snapshot.kill()


async def wait_for_log(dev: ManagedProcess, needle: str) -> None:
    await dev.wait_for_log(needle, within=READY_TIMEOUT)


def assert_clean_stop_log(log: str) -> None:
    """Every service stopped, then Redis, then Postgres; nothing complained."""
    lines = log.splitlines()

    def first(needle: str) -> int:
        found = [number for number, line in enumerate(lines) if needle in line]
        assert found, f"{needle!r} not in the log:\n{log[-6000:]}"
        return found[0]

    redis_stopped = first("embedded Redis stopped")
    postgres_stopped = first("embedded PostgreSQL stopped")
    for name in SERVICES[1:]:
        assert first(f"dev       | {name} stopped") < redis_stopped
    assert redis_stopped < postgres_stopped < first("everything stopped")
    assert "subscription lost" not in log  # realtime stopped while Redis still answered
    assert "make: ***" not in log  # the supervisor exited 0
    assert "Traceback" not in log


class TestMakeDev:
    """`make dev` brings up the whole stack, says where it is, serves a job, and stops whole."""

    async def test_countdown_job_succeeds_and_ctrl_c_stops_everything_databases_last(
        self, dev_run: DevRun, tmp_path: Path
    ) -> None:
        dev = start_process(
            "make dev", ["make", "--no-print-directory", "dev"],
            env=dev_run.env, cwd=ROOT, log_path=tmp_path / "dev.log",
        )  # fmt: skip
        try:
            await wait_for_log(dev, dev_run.banner()[-1])
            for line in dev_run.banner():
                assert line in dev.log()
            before = dev_run.snapshot(dev.pid)
            base = dev_run.api
            async with httpx.AsyncClient(base_url=base, timeout=10) as client:
                # The banner comes once everything answers.
                assert (await client.get("/health/ready")).status_code == 200
                docs = await client.get("/docs")
                assert docs.status_code == 200
                assert "/static/docs/swagger-ui-bundle.js" in docs.text
                assert (await client.get("/static/docs/swagger-ui-bundle.js")).status_code == 200

                # The job console: its own origin, pointed at this API, which allows it.
                console = f"http://127.0.0.1:{dev_run.ports.console}"
                config = await client.get(f"{console}/config.js")
                assert f'"apiUrl": "{base}"' in config.text
                preflight = await client.options(
                    "/v1/jobs",
                    headers={"Origin": console, "Access-Control-Request-Method": "POST"},
                )
                assert preflight.headers.get("access-control-allow-origin") == console

                email = f"dev-stack-{time.monotonic_ns()}@example.com"
                registered = await client.post(
                    "/v1/auth/register", json={"email": email, "password": PASSWORD}
                )
                assert registered.status_code == 201, registered.text
                token = await client.post(
                    "/v1/auth/token", data={"username": email, "password": PASSWORD}
                )
                headers = {"Authorization": f"Bearer {token.json()['access_token']}"}
                posted = await client.post(
                    "/v1/jobs",
                    headers=headers,
                    json={"kind": "demo.countdown", "params": {"steps": 4, "interval": 0.1}},
                )
                assert posted.status_code == 202, posted.text
                location = posted.headers["location"]

                async def final() -> dict[str, Any] | None:
                    job: dict[str, Any] = (await client.get(location, headers=headers)).json()
                    return job if job["state"] in FINAL_STATES else None

                job = await eventually(
                    final, within=60, interval=0.05, explain=lambda: f"job stuck:\n{dev.log()}"
                )
                assert job["state"] == "succeeded", job
                assert job["result"] == {"steps": 4}
                assert job["progress"] == 100

            # Ctrl-C: the terminal sends SIGINT to the whole foreground group.
            os.killpg(dev.pgid, signal.SIGINT)
            code = await dev.wait_exit(STOP_TIMEOUT)
            assert code is not None, f"make dev did not stop:\n{dev.log()}"
            # make dies of the SIGINT it got itself, once the supervisor exited 0.
            assert code == -signal.SIGINT, dev.log()
            assert_clean_stop_log(dev.log())
            await dev_run.until_all_gone(before)
        finally:
            await dev.stop()


class TestStopWhateverStdoutIs:
    """The reported failure and its cousins: nothing may survive, whatever stdout is."""

    def shell(self, dev_run: DevRun) -> Terminal:
        env = {**dev_run.env, "PS1": "$ ", "TERM": "dumb"}
        return Terminal(["bash", "--norc", "--noprofile", "-i"], env=env, cwd=ROOT)

    async def test_ctrl_c_typed_through_tee_stops_everything(
        self, dev_run: DevRun, tmp_path: Path
    ) -> None:
        log = tmp_path / "dev.log"
        terminal = self.shell(dev_run)
        try:
            terminal.type(f"make dev 2>&1 | tee {log}\n")
            await terminal.wait_for(dev_run.banner()[-1], within=READY_TIMEOUT)
            job = dev_run.snapshot(terminal.pid, include_root=False)

            terminal.type("\x03")  # SIGINT to the terminal's foreground group
            await dev_run.until_all_gone(job)
            assert terminal.process.poll() is None, "the shell itself should survive"
            # A clean stop: make and tee exit 0, make prints no error, and the log
            # holds the shutdown's last line (tee was not interrupted).
            terminal.type('echo "statuses=${PIPESTATUS[*]}."\n')
            await terminal.wait_for("statuses=0 0.", within=STOP_TIMEOUT)
            assert "make: ***" not in terminal.text()
            text = log.read_text()
            assert dev_run.banner()[0] in text
            assert "everything stopped" in text
            assert "subscription lost" not in text
        finally:
            terminal.close()

    async def test_closing_the_terminal_stops_everything(self, dev_run: DevRun) -> None:
        terminal = self.shell(dev_run)
        try:
            terminal.type("make dev 2>&1 | tee /dev/null\n")
            await terminal.wait_for(dev_run.banner()[-1], within=READY_TIMEOUT)
            everything = dev_run.snapshot(terminal.pid)

            terminal.hang_up()  # SIGHUP to the shell, which sends it on to its jobs
            await dev_run.until_all_gone(everything)
        finally:
            terminal.close()

    async def test_sigterm_with_the_pipes_reader_gone(
        self, dev_run: DevRun, tmp_path: Path
    ) -> None:
        errors = tmp_path / "stderr.log"
        make = _start_make_dev(dev_run, stderr=errors)
        try:
            assert make.stdout is not None
            seen = b""
            deadline = time.monotonic() + READY_TIMEOUT
            while dev_run.banner()[-1].encode() not in seen:
                chunk = await asyncio.to_thread(os.read, make.stdout.fileno(), 65536)
                assert chunk, f"make dev exited:\n{seen.decode()[-4000:]}"
                assert time.monotonic() < deadline, seen.decode()[-4000:]
                seen += chunk
            everything = dev_run.snapshot(make.pid)
            make.stdout.close()  # the reader is gone: the shutdown's lines meet EPIPE

            os.killpg(make.pid, signal.SIGTERM)
            code = await asyncio.to_thread(make.wait, STOP_TIMEOUT)
            assert code == -signal.SIGTERM
            stderr = errors.read_text()
            assert "make: ***" not in stderr  # the supervisor exited 0
            assert "Traceback" not in stderr
            await dev_run.until_all_gone(everything)
        finally:
            if make.poll() is None:
                os.killpg(make.pid, signal.SIGKILL)
                make.wait()


def _start_make_dev(dev_run: DevRun, *, stderr: Path) -> subprocess.Popen[bytes]:
    """`make dev` in a session of its own, stdout into a pipe we read, stderr into a file."""
    with stderr.open("wb") as err:
        return subprocess.Popen(
            ["make", "--no-print-directory", "dev"], cwd=ROOT, env=dev_run.env,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
        )  # fmt: skip

"""Every command in README.md and docs/getting-started.md, run as a user runs it.

The pages' ```bash blocks are the commands (```text and ```console blocks are
output, and another shell tag is an error). From a fresh copy of the tracked
files, `make dev` is started through the real Makefile on embedded services
and free ports, and the other commands run in order in one bash, as in the
user's second shell, twice: the second run must show the same, finished job,
as the quickstart says. A command that cannot run here is listed in
NOT_RUN with the reason and the test that covers it; any other command is run.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from devharness.processes import start_process
from devharness.services import ROOT
from tests.fixtures.checkout import copy_tracked_files
from tests.fixtures.devstack import DevPorts, dev_environment, wait_ready

pytestmark = [pytest.mark.system, pytest.mark.timeout(300)]

PAGES = ["README.md", "docs/getting-started.md"]
SERVER = "make dev"
# Each command the test does not run: why not, and which test runs it instead.
NOT_RUN = {
    "git clone <repository URL> fastapi-microservices && cd fastapi-microservices": (
        "needs the published repository; this test runs from a copy of the tracked files"
    ),
    "make install": "tests/system/test_make_install.py runs it from a copy of the tracked files",
    "make test": "this test is part of it; CI runs it (.ci/run)",
}
BASH_TIMEOUT = 120.0
SHELL_TAGS = {"bash", "sh", "shell", "zsh", "console", "shell-session"}
_FENCE = re.compile(r"^```\s*([\w-]*)")
_SNIPPET = re.compile(r'^--8<-- "(?P<path>[^":]+)(?::(?P<section>[\w-]+))?"$')
_WORKSPACE_SOURCES = [
    "libs/common/src",
    "libs/devservices/src",
    "libs/devharness/src",
    "libs/client/src",
    "services/api/src",
    "services/worker/src",
    "services/realtime/src",
]


@dataclass(frozen=True)
class Command:
    """One logical command line of a page: as written, and as compared."""

    page: str
    text: str

    @property
    def key(self) -> str:
        """The command without its comment, continuations joined, spaces collapsed."""
        return " ".join(_strip_comment(self.text.replace("\\\n", " ")).split())


def _strip_comment(line: str) -> str:
    quote = ""
    for index, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (index == 0 or line[index - 1].isspace()):
            return line[:index]
    return line


def _section(path: Path, name: str) -> str:
    text = path.read_text()
    start = re.search(rf"--8<-- \[start:{name}\].*\n", text)
    end = re.search(rf".*--8<-- \[end:{name}\]", text)
    assert start is not None, f"{path.name} has no section {name!r}"
    assert end is not None, f"{path.name} does not end section {name!r}"
    return text[start.end() : end.start()]


def _expand(page: str) -> list[str]:
    """The page's lines with its snippet includes resolved (README sections only)."""
    lines = []
    for line in (ROOT / page).read_text().splitlines():
        match = _SNIPPET.match(line.strip())
        if match is None:
            lines.append(line)
            continue
        # Only README sections, so that every command shown is one this test reads.
        assert match["path"] == "README.md", f"{page} includes {line.strip()}"
        assert match["section"], f"{page} includes all of README.md"
        lines.extend(_section(ROOT / "README.md", match["section"]).splitlines())
    return lines


def page_commands(page: str) -> list[Command]:
    """Every command of the page's ```bash blocks, in order."""
    commands: list[Command] = []
    tag: str | None = None
    pending = ""
    for line in _expand(page):
        fence = _FENCE.match(line.strip())
        if fence and tag is None:
            tag = fence[1]
            assert tag == "bash" or tag not in SHELL_TAGS, (
                f"{page}: a ```{tag} block; tag commands ```bash and output ```text"
            )
            continue
        if fence:
            assert not pending, f"{page}: a command ends in a continuation: {pending!r}"
            tag = None
            continue
        if tag != "bash":
            continue
        pending += line + "\n"
        if line.endswith("\\"):
            continue
        command = Command(page, pending.rstrip("\n"))
        pending = ""
        if command.key:
            commands.append(command)
    return commands


def all_commands() -> list[Command]:
    """The commands of every page, each once (a page may include another's)."""
    seen: dict[str, Command] = {}
    for page in PAGES:
        for command in page_commands(page):
            seen.setdefault(command.key, command)
    return list(seen.values())


def localized(command: Command, ports: DevPorts) -> str:
    """The command pointed at this test's `make dev`: its ports, nothing else changed."""
    text = command.text
    for default, port in ((8000, ports.api), (8001, ports.realtime), (8002, ports.console)):
        text = re.sub(rf"\b(localhost|127\.0\.0\.1):{default}\b", rf"\g<1>:{port}", text)
    # The client's default addresses are :8000 and :8001.
    return text.replace(
        "-m jobsclient",
        f"-m jobsclient --api http://127.0.0.1:{ports.api} --ws ws://127.0.0.1:{ports.realtime}/ws",
    )


@dataclass
class Outcome:
    """What one command printed and its exit status."""

    command: Command
    output: str
    status: int


def _script(commands: list[Command], ports: DevPorts) -> str:
    # As a user would, it stops at the first command that fails: what follows needs it.
    lines = []
    for number, command in enumerate(commands):
        lines += [
            f"printf '\\n@@@ {number} start\\n'",
            localized(command, ports),
            f"__status=$?; printf '\\n@@@ {number} exit %d\\n' \"$__status\"",
            '[ "$__status" -eq 0 ] || exit 0',
        ]
    lines.append("printf '\\n@@@ JOB=%s\\n' \"${JOB-}\"")
    return "\n".join(lines) + "\n"


async def run_in_bash(
    commands: list[Command], ports: DevPorts, *, cwd: Path, env: dict[str, str], log_path: Path
) -> tuple[list[Outcome], str]:
    """Run the commands in order in one bash; the outcome of each that ran, and $JOB."""
    script = _script(commands, ports)
    bash = start_process("bash", ["bash", "-c", script], env=env, cwd=cwd, log_path=log_path)
    finished = await bash.wait_exit(BASH_TIMEOUT) is not None
    await bash.stop()
    output = bash.log()
    assert finished, f"the commands did not finish in {BASH_TIMEOUT:g}s:\n{output}"
    outcomes = []
    for number, command in enumerate(commands):
        found = re.search(rf"\n@@@ {number} start\n(.*)\n@@@ {number} exit (\d+)\n", output, re.S)
        if found is None:
            break
        outcomes.append(Outcome(command, found[1], int(found[2])))
    job = re.search(r"\n@@@ JOB=(.*)\n", output)
    return outcomes, job[1] if job else ""


def _json(outcome: Outcome) -> dict[str, object]:
    body: dict[str, object] = json.loads(outcome.output)
    return body


Check = Callable[[Outcome, int, str], None]


def _registered(outcome: Outcome, run: int, job: str) -> None:
    body = _json(outcome)
    if run == 1:
        assert body["email"] == "ada@example.com", body
    else:
        assert body["status"] == 409, body  # the email exists since the first run


def _me(outcome: Outcome, run: int, job: str) -> None:
    assert _json(outcome)["email"] == "ada@example.com", outcome.output


def _job(outcome: Outcome, run: int, job: str) -> None:
    body = _json(outcome)
    assert body["id"] == job, body
    assert body["kind"] == "demo.countdown", body
    # Read at once after the 202, then again on the second run, by when it has finished.
    assert body["state"] in ({"queued", "running", "succeeded"} if run == 1 else {"succeeded"})


def _watched(outcome: Outcome, run: int, job: str) -> None:
    # --until-done exits 0 only on the job's job.succeeded, which came over the WebSocket.
    assert outcome.status == 0
    assert "100%" in outcome.output, outcome.output


def _listed(outcome: Outcome, run: int, job: str) -> None:
    items = _json(outcome)["items"]
    assert isinstance(items, list)
    assert job in [item["id"] for item in items], items


# What each quickstart command must print, by a pattern of the command.
CHECKS: list[tuple[str, Check]] = [
    (r"/v1/auth/register", _registered),
    (r"/v1/users/me", _me),
    (r"/v1/jobs/\$JOB\b", _job),
    (r"-m jobsclient .*--until-done \"\$JOB\"", _watched),
    (r"/v1/jobs\?state=succeeded", _listed),
]


class TestCommandInventory:
    """Every command on the pages is run by this test or listed with the test that runs it."""

    def test_pages_show_make_dev_and_runnable_commands(self) -> None:
        keys = [command.key for command in all_commands()]
        assert SERVER in keys
        assert [key for key in keys if key not in NOT_RUN and key != SERVER]

    def test_every_listed_command_is_still_on_a_page(self) -> None:
        keys = {command.key for command in all_commands()}
        assert set(NOT_RUN) <= keys, "NOT_RUN lists a command no page shows any more"

    def test_every_quickstart_check_matches_a_command(self) -> None:
        keys = [command.key for command in all_commands()]
        for pattern, _ in CHECKS:
            assert any(re.search(pattern, key) for key in keys), pattern


class TestReadmeCommands:
    """The quickstart works as written against a real `make dev`, and again a second time."""

    async def test_quickstart_runs_as_written_twice(self, tmp_path: Path) -> None:
        checkout = tmp_path / "checkout"
        copy_tracked_files(checkout)
        # The running virtualenv stands in for `make install` (tested on its own).
        (checkout / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
        env, ports = dev_environment(checkout / ".run")
        # Import the copy's packages, not the worktree's editable install.
        env["PYTHONPATH"] = os.pathsep.join(str(checkout / path) for path in _WORKSPACE_SOURCES)
        runnable = [command for command in all_commands() if command.key not in {*NOT_RUN, SERVER}]

        dev = start_process(
            "make dev", ["make", "--no-print-directory", "dev"],
            env=env, cwd=checkout, log_path=tmp_path / "dev.log",
        )  # fmt: skip
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{ports.api}") as client:
                await wait_ready(client, dev, within=120)
            jobs = []
            for run in (1, 2):
                outcomes, job = await run_in_bash(
                    runnable, ports, cwd=checkout, env=env, log_path=tmp_path / f"run-{run}.log"
                )
                jobs.append(job)
                for outcome in outcomes:
                    where = f"run {run}, {outcome.command.page}: {outcome.command.key}"
                    assert outcome.status == 0, f"{where}\nexit {outcome.status}:\n{outcome.output}"
                    for pattern, check in CHECKS:
                        if re.search(pattern, outcome.command.key):
                            check(outcome, run, job)
                assert len(outcomes) == len(runnable), f"run {run} stopped early"
            assert jobs[0], "JOB was empty"
            assert jobs[1] == jobs[0], "the second run's Idempotency-Key gave another job"
        except AssertionError as failure:
            raise AssertionError(f"{failure}\n--- make dev log ---\n{dev.log()}") from None
        finally:
            if dev.is_running():
                os.killpg(dev.pgid, signal.SIGINT)  # Ctrl-C, as a user stops it
                await dev.wait_exit(60)
            await dev.stop()

"""`python -m devservices`: Postgres and Redis for development, and a Procfile runner on them.

    python -m devservices run -- COMMAND...
    python -m devservices start [PROCFILE] [--announce COMMAND] [--grace SECONDS]

For each of `DATABASE_URL` and `REDIS_URL` that is unset, an embedded server
starts under `.run/` (data kept between runs) and its URL is exported; a dev
`JWT_SECRET` is generated once into `.run/`. Variables that are set are used
as they are. The servers stop last, after everything that uses them.

`run` runs one command in the foreground (a Ctrl-C reaches it through the
terminal; SIGTERM and SIGHUP are passed on to it) and exits with its status.

`start` runs a Procfile's processes (plus its `release` entry first, as on
Heroku), with `.env` read as honcho and foreman do (the environment wins), and
relays their output with a prefix. SIGINT, SIGTERM or SIGHUP stops every
process, then the servers; a second Ctrl-C kills what is left. Exit status: 0
after a stop that a signal asked for and every process obeyed in time, else 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

from dotenv import dotenv_values

from devservices._output import Output
from devservices._procfile import read_procfile
from devservices._services import EmbeddedServices
from devservices._supervisor import STOP_SIGNALS, SYSTEM, Supervisor

DEFAULT_GRACE = 10.0


class _Stopped(Exception):
    def __init__(self, signum: int) -> None:
        self.signum = signum


def _to_stderr(text: str) -> None:
    print(f"devservices: {text}", file=sys.stderr, flush=True)


def run(command: list[str], *, run_dir: Path) -> int:
    """Run `command` with the services it needs; return its exit status."""
    services = EmbeddedServices(run_dir, os.environ, say=_to_stderr)
    children: list[subprocess.Popen[bytes]] = []

    def pass_on(signum: int, _frame: object) -> None:
        if not children:
            raise _Stopped(signum)
        children[0].send_signal(signum)

    for signum in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, pass_on)
    try:
        env = services.start()
        children.append(subprocess.Popen(command, env=env))
        # Ctrl-C reaches the child through the terminal's process group.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        code = children[0].wait()
        return 128 - code if code < 0 else code
    except _Stopped as stopped:
        return 128 + stopped.signum
    except KeyboardInterrupt:
        return 128 + signal.SIGINT
    finally:
        for signum in STOP_SIGNALS:  # nothing may cut the servers' stop short
            signal.signal(signum, signal.SIG_IGN)
        services.stop()


def _environment(dotenv: Path) -> dict[str, str]:
    from_file = {k: v for k, v in dotenv_values(dotenv).items() if v is not None}
    return {**from_file, **os.environ}


async def _start(
    processes: dict[str, str],
    *,
    env: dict[str, str],
    run_dir: Path,
    announce: str | None,
    grace: float,
    output: Output,
) -> int:
    supervisor = Supervisor(env=env, output=output, grace=grace)
    supervisor.handle_signals()  # before anything starts: a signal now still stops it all
    output.fit(SYSTEM, *processes)
    services = EmbeddedServices(run_dir, env, say=supervisor.say)
    problems: list[str] = []
    try:
        supervisor.env = await asyncio.to_thread(services.start)
        if not supervisor.is_stopping:
            await supervisor.serve(processes, announce=announce)
    except Exception as exc:  # a server or a process could not start: stop what did
        supervisor.say(f"cannot go on: {type(exc).__name__}: {exc}")
        problems.append("the start failed")
    finally:
        await supervisor.stop_all()
        if not await asyncio.to_thread(services.stop):
            problems.append("a database did not stop cleanly")
    if output.dropped:
        supervisor.say(f"{output.dropped} lines were dropped: stdout was not being read")
    problems += [f"{name} exited on its own" for name in supervisor.exited_on_its_own]
    problems += [f"{name} had to be killed" for name in supervisor.killed]
    if problems or not supervisor.is_stopping:
        supervisor.say(f"everything stopped; {', '.join(problems) or 'no stop was asked for'}")
        return 1
    supervisor.say("everything stopped")
    return 0


@contextlib.contextmanager
def _terminal_foreground() -> Iterator[None]:
    """Make our own process group the terminal's foreground group while we run.

    A terminal sends Ctrl-C's SIGINT to its whole foreground group: under
    `make dev | tee log` that is make, tee and us. make then re-raises the
    signal it got and exits 130 with a `make: *** ... Interrupt` line, and tee
    dies before the shutdown's lines reach the log. As a shell does for a job,
    we take the terminal for our own group, so Ctrl-C (and Ctrl-\\) reach only
    us; make then sees us exit 0 and exits 0 itself, and tee reads to the end.
    The terminal goes back to the group that had it before we exit.
    """
    try:
        tty = os.open("/dev/tty", os.O_RDWR | os.O_NOCTTY)
    except OSError:  # no controlling terminal: CI, a service manager, a test's pipes
        yield
        return
    previous_handler = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    previous: int | None = None
    try:
        with contextlib.suppress(OSError):  # a terminal that will not hand over: carry on
            foreground = os.tcgetpgrp(tty)
            # Only when we are in the foreground (not `make dev &`).
            if foreground == os.getpgrp():
                os.setpgid(0, 0)
                os.tcsetpgrp(tty, os.getpgrp())
                previous = foreground
        yield
    finally:
        if previous is not None:
            with contextlib.suppress(OSError):  # the terminal may be gone (a hang-up)
                os.tcsetpgrp(tty, previous)
        signal.signal(signal.SIGTTOU, previous_handler)
        os.close(tty)


def start(
    procfile: Path, *, run_dir: Path, announce: str | None, grace: float, output: Output
) -> int:
    """Run the Procfile's processes on the services until a signal; the exit status."""
    processes = read_procfile(procfile)
    env = _environment(Path(".env"))
    try:
        with _terminal_foreground():
            return asyncio.run(
                _start(
                    processes,
                    env=env,
                    run_dir=run_dir,
                    announce=announce,
                    grace=grace,
                    output=output,
                )
            )
    finally:
        for signum in STOP_SIGNALS:  # the loop is gone; the last lines still go out
            signal.signal(signum, signal.SIG_IGN)
        output.close()


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m devservices`."""
    assert __doc__ is not None
    parser = argparse.ArgumentParser(prog="devservices", description=__doc__.splitlines()[0])
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--run-dir", type=Path, default=Path(os.environ.get("DEV_RUN_DIR", ".run")))
    sub = parser.add_subparsers(dest="action", required=True)
    run_parser = sub.add_parser(
        "run", parents=[common], help="run a command with Postgres and Redis"
    )
    run_parser.add_argument("command", nargs=argparse.REMAINDER)
    start_parser = sub.add_parser(
        "start", parents=[common], help="run a Procfile's processes on Postgres and Redis"
    )
    start_parser.add_argument("procfile", nargs="?", type=Path, default=Path("Procfile"))
    start_parser.add_argument(
        "--announce", metavar="COMMAND", help="a one-shot command started with the processes"
    )
    start_parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE,
        help=f"seconds a process may take to stop before it is killed ({DEFAULT_GRACE:g})",
    )
    args = parser.parse_args(argv)
    if args.action == "run":
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            parser.error("run needs a command after --")
        return run(command, run_dir=args.run_dir)
    try:
        read_procfile(args.procfile)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    return start(
        args.procfile,
        run_dir=args.run_dir,
        announce=args.announce,
        grace=args.grace,
        output=Output(),
    )


if __name__ == "__main__":
    sys.exit(main())

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from devservices._output import Output
from devservices._procfile import RELEASE

# What stops a supervisor: Ctrl-C (SIGINT, to the terminal's whole foreground
# group), `kill` (SIGTERM) and a closed terminal (SIGHUP).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
SYSTEM = "dev"
_READ_CHUNK = 65_536
_MAX_LINE = 65_536
_POLL_SECONDS = 0.05
_AFTER_KILL_SECONDS = 5.0


def describe(returncode: int) -> str:
    """`exit 3` or `signal SIGKILL`, for a process's return code."""
    if returncode < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-returncode).name}"
    return f"exit {returncode}"


@dataclass
class _Child:
    """One command: its shell (the leader of a session and process group of its own)."""

    name: str
    process: asyncio.subprocess.Process
    relay: asyncio.Task[None]

    @property
    def pgid(self) -> int:
        return self.process.pid

    def is_alive(self) -> bool:
        """Whether anything of its process group is left (the leader, or what it started)."""
        if self.process.returncode is None:
            return True
        try:
            # The leader is reaped, so the group id is free only once the group is empty.
            os.killpg(self.pgid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def signal_group(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pgid, signum)


class Supervisor:
    """Runs commands (`sh -c`), each in a session of its own, relays their output, stops them.

    Because each command has its own session and process group, a terminal's
    Ctrl-C, a closed terminal or `kill` reaches the supervisor only, which then
    owns the order: it sends every group the SIGINT a Ctrl-C would have sent
    it alone (uvicorn, Celery and most servers stop gracefully on it; Celery's
    pool processes ignore it and let the main process finish its tasks),
    waits up to `grace` seconds for each group to be empty, and SIGKILLs what
    is left. A second Ctrl-C skips the wait. Whatever runs the supervisor
    stops the databases after `stop_all()` returns, never before.
    """

    def __init__(
        self, *, env: Mapping[str, str], output: Output, cwd: Path | None = None, grace: float
    ) -> None:
        self.env = dict(env)  # the processes' environment (complete it before serve())
        self._cwd = cwd
        self.output = output
        self.grace = grace
        self.stop_signal: signal.Signals | None = None
        self.exited_on_its_own: list[str] = []
        self.killed: list[str] = []
        self._stop_requested = asyncio.Event()
        self._forced = asyncio.Event()
        self._children: list[_Child] = []

    @property
    def is_stopping(self) -> bool:
        return self._stop_requested.is_set()

    def say(self, text: str) -> None:
        self.output.line(SYSTEM, text)

    def handle_signals(self) -> None:
        """Turn SIGINT, SIGTERM and SIGHUP into a stop; a second SIGINT kills at once."""
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self._on_signal, signum)
        self.output.watch_terminal(
            lambda: loop.call_soon_threadsafe(self._on_signal, signal.SIGHUP)
        )

    def _on_signal(self, signum: int) -> None:
        name = signal.Signals(signum).name
        if self.stop_signal is None:
            self.stop_signal = signal.Signals(signum)
            self.say(f"{name} received: stopping everything (Ctrl-C again to kill at once)")
            self._stop_requested.set()
        elif signum == signal.SIGINT and not self._forced.is_set():
            # Only a second Ctrl-C forces: a SIGTERM sent to the process group
            # arrives twice (make passes its own on to us), and means "stop".
            self.say(f"{name} received again: killing what is left")
            self._forced.set()

    def request_stop(self) -> None:
        """Stop as if signalled (used when a process exits on its own)."""
        self._stop_requested.set()

    async def _spawn(self, name: str, command: str, *, prefixed: bool = True) -> _Child:
        process = await asyncio.create_subprocess_shell(
            command,
            env=self.env,
            cwd=self._cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert process.stdout is not None
        relay = asyncio.create_task(self._relay(name, process.stdout, prefixed=prefixed))
        child = _Child(name, process, relay)
        self._children.append(child)
        if prefixed:
            self.say(f"{name} started (pid {process.pid})")
        return child

    async def _relay(self, name: str, stream: asyncio.StreamReader, *, prefixed: bool) -> None:
        """Copy the child's output line by line, until every writer of its pipe is gone."""

        def emit(line: bytes) -> None:
            if prefixed:
                self.output.line(name, line)
            else:
                self.output.raw(line)

        pending = b""
        while chunk := await stream.read(_READ_CHUNK):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                emit(line)
            if len(pending) > _MAX_LINE:  # a line without an end: pass it on in pieces
                emit(pending)
                pending = b""
        if pending:
            emit(pending)

    async def _first_exit(self, children: list[_Child]) -> _Child | None:
        """Wait for a stop (None) or for one of `children` to exit (that child)."""
        exits = {asyncio.ensure_future(child.process.wait()): child for child in children}
        stop = asyncio.ensure_future(self._stop_requested.wait())
        try:
            await asyncio.wait({*exits, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for future in (*exits, stop):
                future.cancel()
        if self.is_stopping:
            return None
        return next(child for child in children if child.process.returncode is not None)

    async def run_once(self, name: str, command: str) -> int | None:
        """Run a one-shot command to its end: its return code, or None if stopped first."""
        child = await self._spawn(name, command)
        if await self._first_exit([child]) is None:
            return None
        await child.relay
        code = child.process.returncode
        assert code is not None
        self.say(f"{name} finished ({describe(code)})")
        return code

    async def serve(self, processes: Mapping[str, str], *, announce: str | None = None) -> None:
        """Run a Procfile's processes until a signal or until one exits, then stop them all.

        A `release` entry runs first, to its end; the others start only if it
        succeeds. `announce` (a one-shot command, typically waiting for the
        processes to answer and printing where they are) starts with them and
        may end without stopping anything; its output is relayed unprefixed.
        """
        self.output.fit(SYSTEM, *processes)
        if RELEASE in processes:
            code = await self.run_once(RELEASE, processes[RELEASE])
            if code is None:
                return
            if code != 0:
                self.exited_on_its_own.append(RELEASE)
                self.say(f"{RELEASE} failed ({describe(code)}): not starting the processes")
                return
        children = []
        for name, command in processes.items():
            if name != RELEASE and not self.is_stopping:
                children.append(await self._spawn(name, command))
        if announce and not self.is_stopping:
            await self._spawn("announce", announce, prefixed=False)
        exited = await self._first_exit(children)
        if exited is not None:
            await asyncio.wait([exited.relay], timeout=1)  # its last words first
            code = exited.process.returncode
            assert code is not None
            self.exited_on_its_own.append(exited.name)
            self.say(f"{exited.name} exited on its own ({describe(code)}): stopping the others")
            self.request_stop()

    async def stop_all(self) -> None:
        """SIGINT every group still alive, wait up to `grace` (or a second Ctrl-C), then SIGKILL."""
        alive = [child for child in self._children if child.is_alive()]
        if alive:
            self.say(f"stopping {', '.join(child.name for child in alive)}")
        for child in alive:
            child.signal_group(signal.SIGINT)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.grace
        while alive:
            for child in [child for child in alive if not child.is_alive()]:
                alive.remove(child)
                self.say(f"{child.name} stopped")
            if not alive:
                break
            if self._forced.is_set() or loop.time() > deadline:
                for child in alive:
                    child.signal_group(signal.SIGKILL)
                    self.killed.append(child.name)
                    reason = "on request" if self._forced.is_set() else f"after {self.grace:g}s"
                    self.say(f"{child.name} killed {reason}")
                await self._wait_gone(alive, within=_AFTER_KILL_SECONDS)
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._forced.wait(), _POLL_SECONDS)
        relays = [child.relay for child in self._children if not child.relay.done()]
        if relays:
            # A process that escaped its group may still hold a pipe: stop reading it.
            _, late = await asyncio.wait(relays, timeout=1)
            for relay in late:
                relay.cancel()
        self._children.clear()

    @staticmethod
    async def _wait_gone(children: list[_Child], *, within: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while any(child.is_alive() for child in children):
            if loop.time() > deadline:
                return
            await asyncio.sleep(_POLL_SECONDS)  # poll interval: a group has no exit event

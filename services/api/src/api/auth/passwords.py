"""Argon2id password hashing off the event loop, within the worker's share of the memory budget.

Each API worker hashes in its own small fork server (`api.auth._hash_server`),
started on the first login: one process of about 7 MiB that imports only
Argon2 and forks a child per hash, so a hash costs its Argon2 memory and
little more. Processes rather than threads: a hashing thread would share the
interpreter lock with the event loop. The hashes run five nice steps below
the worker and give their CPU away every half millisecond, so a request that
wakes waits for a hash at most that long, and a hash still gets a share of a
busy CPU (see `api.auth._hash_server`).

How many hashes run at once, and how much memory they may hold, is a
`HashingPlan` sized from the memory budget (`api.capacity`). A hash reserves
its Argon2 memory before it starts and gives it back when its child is done
(not when the waiting request goes away); a login that finds the budget full
waits up to `PASSWORD_HASH_WAIT_SECONDS` and then gets `HashingBusy`, a 503
with `Retry-After`. Hashes made with other parameters still verify, and are
replaced with one of the current parameters on the next successful login.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import re
import sys
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from api.auth.errors import HashingBusy, HashingFailed

_logger = logging.getLogger("api.auth.passwords")
KIB = 1024
MIB = 1024 * KIB
# OWASP Password Storage Cheat Sheet, Argon2id: equally strong settings (memory KiB,
# iterations), all with parallelism 1; the first is the strongest against memory-poor hardware.
OWASP_ARGON2ID = ((47104, 1), (19456, 2), (12288, 3), (9216, 4), (7168, 5))
# Measured (PSS, `make bench` memory rows): the fork server, and a child beyond its Argon2 memory.
HASH_SERVER_BYTES = 7 * MIB
HASH_CHILD_BYTES = 2 * MIB
# Passwords are at most 256 characters at registration; a longer login attempt cannot match.
MAX_PASSWORD_CHARS = 1024
# Requests waiting for room to hash, per hash a worker may run at once.
WAITERS_PER_SLOT = 128
_PHC_PARAMS = re.compile(r"^\$argon2(?:id|i|d)\$(?:v=\d+\$)?m=(\d+),t=(\d+),p=(\d+)\$")


@dataclass(frozen=True, slots=True)
class Argon2Params:
    """Argon2id's cost: memory in KiB, iterations, lanes."""

    memory_kib: int
    time_cost: int
    parallelism: int = 1

    @property
    def memory_bytes(self) -> int:
        return self.memory_kib * KIB

    def meets_owasp(self) -> bool:
        """At least as costly as one of OWASP's equally strong Argon2id settings."""
        return any(
            self.memory_kib >= memory and self.time_cost >= iterations
            for memory, iterations in OWASP_ARGON2ID
        )

    @classmethod
    def of_hash(cls, password_hash: str) -> Argon2Params | None:
        """The parameters an encoded Argon2 hash was made with (None if it is not one)."""
        match = _PHC_PARAMS.match(password_hash)
        if match is None:
            return None
        memory, time_cost, parallelism = (int(group) for group in match.groups())
        return cls(memory, time_cost, parallelism)

    def __str__(self) -> str:
        return f"argon2id m={self.memory_kib} t={self.time_cost} p={self.parallelism}"


@dataclass(frozen=True, slots=True)
class HashingPlan:
    """One worker's hashing: the parameters of new hashes, hashes at once, memory at once."""

    params: Argon2Params
    slots: int
    capacity: int
    note: str = ""

    def describe(self) -> str:
        line = (
            f"hashing: up to {self.slots} at a time per worker with {self.params}, "
            f"{self.capacity / MIB:,.0f} MiB of hashing memory"
        )
        return f"{line}; {self.note}" if self.note else line


def hash_cost(params: Argon2Params) -> int:
    """The memory one hash in flight holds: its Argon2 memory and its child process."""
    return params.memory_bytes + HASH_CHILD_BYTES


def plan_hashing(
    params: Argon2Params, *, memory: int, most: int, adjustable: bool = True
) -> HashingPlan:
    """Fit hashes of `params` into `memory` bytes, at most `most` at a time.

    When not even one fits and `adjustable`, the memory cost steps down OWASP's
    list of equally strong settings (more iterations, less memory) until one does.
    """
    choices = [params]
    if adjustable:
        choices += [
            Argon2Params(kib, iterations)
            for kib, iterations in OWASP_ARGON2ID
            if kib < params.memory_kib
        ]
    for choice in choices:
        fits = memory // hash_cost(choice)
        if fits >= 1:
            note = "" if choice == params else f"memory cost lowered from {params} to fit"
            return HashingPlan(choice, min(most, fits), max(memory, hash_cost(choice)), note)
    cheapest = choices[-1]
    return HashingPlan(
        cheapest,
        1,
        hash_cost(cheapest),
        f"the budget holds no hash ({memory / MIB:,.1f} MiB); one at a time, over budget",
    )


class _Slots:
    """At most `count` hashes and `capacity` bytes at once; waiters served first come first.

    At most `max_waiters` wait: a longer queue could not drain within the wait anyway.
    """

    def __init__(self, count: int, capacity: int, *, max_waiters: int) -> None:
        self._count = count
        self.capacity = capacity
        self._free = capacity
        self._max_waiters = max_waiters
        self._waiters: deque[tuple[int, asyncio.Future[None]]] = deque()

    def _fits(self, need: int) -> bool:
        return self._count > 0 and need <= self._free

    def _take(self, need: int) -> None:
        self._count -= 1
        self._free -= need

    def release(self, need: int) -> None:
        self._count += 1
        self._free += need
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._fits(self._waiters[0][0]):
            need, waiter = self._waiters.popleft()
            if not waiter.done():
                self._take(need)
                waiter.set_result(None)

    async def acquire(self, need: int, *, within: float) -> None:
        """Reserve `need` bytes and a slot; `TimeoutError` if none frees up `within` seconds."""
        if not self._waiters and self._fits(need):
            self._take(need)
            return
        if len(self._waiters) >= self._max_waiters or within <= 0:
            raise TimeoutError
        waiter = asyncio.get_running_loop().create_future()
        entry = (need, waiter)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(within):
                await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                self.release(need)  # granted just as the wait ended
            else:
                with contextlib.suppress(ValueError):  # passed over by _wake already
                    self._waiters.remove(entry)
                self._wake()  # the head may have changed
            raise


@dataclass(eq=False)
class _Server:
    """One hashing server process and the requests it has not answered yet."""

    process: asyncio.subprocess.Process
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    reader: asyncio.Task[None] | None = None


class _HashServer:
    """The worker's hashing server, started when first needed and again when it has died."""

    def __init__(self) -> None:
        self._current: _Server | None = None
        self._ids = itertools.count(1)
        self._starting = asyncio.Lock()

    @property
    def pid(self) -> int | None:
        return self._current.process.pid if self._current else None

    async def _running(self) -> _Server:
        async with self._starting:
            current = self._current
            if current is None or current.process.returncode is not None:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "api.auth._hash_server",
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
                current = self._current = _Server(process)
                current.reader = asyncio.create_task(self._read(current))
            return current

    async def _read(self, server: _Server) -> None:
        stdout = server.process.stdout
        assert stdout is not None
        # Children of a server that died still answer: they hold the pipe until they exit.
        async for line in stdout:
            with contextlib.suppress(ValueError, KeyError, TypeError):
                answer = json.loads(line)
                future = server.pending.pop(int(answer["id"]), None)
                if future is not None and not future.done():
                    future.set_result(answer)
        # The server and all its children are gone: what is still unanswered is lost.
        if self._current is server:
            self._current = None
        if server.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                server.process.kill()
        pending, server.pending = server.pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(HashingFailed("The hashing process ended; try again."))

    async def submit(self, request: dict[str, Any]) -> asyncio.Future[dict[str, Any]]:
        """Send `request`; the future of its answer."""
        server = await self._running()
        request_id = next(self._ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        server.pending[request_id] = future
        line = json.dumps({**request, "id": request_id}, separators=(",", ":")) + "\n"
        stdin = server.process.stdin
        assert stdin is not None
        stdin.write(line.encode())
        return future

    async def aclose(self) -> None:
        """Close the server's stdin (it exits once its children finish) and wait a little."""
        server, self._current = self._current, None
        if server is None:
            return
        stdin = server.process.stdin
        assert stdin is not None
        stdin.close()
        try:
            async with asyncio.timeout(5):
                await server.process.wait()
        except TimeoutError:
            server.process.kill()
        if server.reader is not None:
            await asyncio.gather(server.reader, return_exceptions=True)


class PasswordHasher:
    """Hashes and verifies passwords in the worker's hashing server, as the plan allows."""

    def __init__(self, plan: HashingPlan, *, wait_seconds: float) -> None:
        self.plan = plan
        self._wait = wait_seconds
        self._slots = _Slots(plan.slots, plan.capacity, max_waiters=plan.slots * WAITERS_PER_SLOT)
        self._server = _HashServer()
        self._dummy: str | None = None
        self._warned_oversized = False

    @property
    def server_pid(self) -> int | None:
        """The hashing server's pid once it runs (for tests and measurements)."""
        return self._server.pid

    def _params(self) -> list[int]:
        params = self.plan.params
        return [params.memory_kib, params.time_cost, params.parallelism]

    async def _run(self, request: dict[str, Any], need: int) -> dict[str, Any]:
        if need > self._slots.capacity and not self._warned_oversized:
            self._warned_oversized = True
            _logger.warning(
                "a stored hash needs %s MiB, more than this worker's hashing memory (%s MiB); "
                "it runs alone and is replaced with %s on success",
                f"{need / MIB:,.0f}",
                f"{self._slots.capacity / MIB:,.0f}",
                self.plan.params,
            )
        need = min(need, self._slots.capacity)
        try:
            await self._slots.acquire(need, within=self._wait)
        except TimeoutError:
            raise HashingBusy(
                "Too many sign-ins at once; try again shortly.",
                retry_after=max(1, round(self._wait)),
            ) from None
        try:
            future = await self._server.submit(request)
        except BaseException:
            self._slots.release(need)
            raise
        # Released when the child is done, even if this request is cancelled meanwhile:
        # the child keeps its memory until then.
        future.add_done_callback(lambda done: self._done(done, need))
        answer = await asyncio.shield(future)
        if "error" in answer:
            raise HashingFailed(f"Password hashing failed: {answer['error']}")
        return answer

    def _done(self, future: asyncio.Future[dict[str, Any]], need: int) -> None:
        self._slots.release(need)
        if not future.cancelled():
            future.exception()  # retrieved here: a cancelled request no longer awaits it

    async def hash(self, password: str) -> str:
        """The Argon2id hash of `password` with the plan's parameters."""
        if len(password) > MAX_PASSWORD_CHARS:
            raise ValueError(f"passwords are limited to {MAX_PASSWORD_CHARS} characters")
        request = {"op": "hash", "password": password, "params": self._params()}
        answer = await self._run(request, hash_cost(self.plan.params))
        return str(answer["hash"])

    async def verify_and_update(
        self, password: str, password_hash: str | None
    ) -> tuple[bool, str | None]:
        """Whether `password` matches, and a new hash when the stored one has old parameters.

        With no hash it burns the same time and answers False: equal work for
        unknown accounts keeps response times from telling which emails exist.
        """
        if len(password) > MAX_PASSWORD_CHARS:
            return False, None
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy password for unknown accounts")
            await self._verify(password, self._dummy)
            return False, None
        return await self._verify(password, password_hash)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether `password` matches `password_hash` (False, after equal work, with no hash)."""
        valid, _ = await self.verify_and_update(password, password_hash)
        return valid

    async def _verify(self, password: str, password_hash: str) -> tuple[bool, str | None]:
        stored = Argon2Params.of_hash(password_hash)
        # A rehash after the verify runs in the same child, which holds the larger of the two.
        need = max(stored.memory_bytes if stored else 0, self.plan.params.memory_bytes)
        request = {
            "op": "verify",
            "password": password,
            "hash": password_hash,
            "params": self._params(),
        }
        answer = await self._run(request, need + HASH_CHILD_BYTES)
        rehash = answer.get("rehash")
        return bool(answer["valid"]), str(rehash) if rehash else None

    async def aclose(self) -> None:
        """Stop the hashing server (hashes in flight finish first)."""
        await self._server.aclose()

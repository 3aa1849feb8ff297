"""Argon2 password hashing in child processes, so the event loop never waits for it."""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

T = TypeVar("T")
_HASHER = PasswordHash((Argon2Hasher(),))


def _start_worker() -> None:
    # A terminal's Ctrl-C reaches the whole process group, these processes
    # included; the API decides when they end (`close()`), as gunicorn and
    # Celery do for theirs, instead of each dying with a KeyboardInterrupt.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # SCHED_IDLE: the hash runs on CPU time nothing else wants, and any request
    # that wakes up preempts it at once (Linux). Elsewhere, or if refused, the
    # lowest nice value does nearly as well.
    with contextlib.suppress(OSError, AttributeError):
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        return
    with contextlib.suppress(OSError, AttributeError):
        os.nice(19)


def _hash(password: str) -> str:
    return _HASHER.hash(password)


def _verify(password: str, password_hash: str) -> bool:
    return _HASHER.verify(password, password_hash)


class PasswordHasher:
    """Hashes and verifies passwords off the event loop, at most `concurrency` at a time.

    The hashes run in up to `concurrency` child processes at the lowest CPU
    priority, started on demand. Processes rather than threads: a hashing
    thread would share the interpreter lock with the event loop, and one
    starved of CPU while holding it would stall every request of the process.
    Argon2 is memory-hard by design (64 MiB a hash by default), so the limit
    bounds memory under a burst of logins as well as CPU.
    """

    def __init__(self, *, concurrency: int) -> None:
        # "spawn": a fork of a process running an event loop and threads is unsafe.
        self._executor = ProcessPoolExecutor(
            max_workers=concurrency,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_start_worker,
        )
        self._dummy: str | None = None

    async def _run(self, function: Callable[..., T], *args: str) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def hash(self, password: str) -> str:
        """The Argon2id hash of `password`."""
        return await self._run(_hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether `password` matches; with no hash, burns the same time and answers False.

        Doing equal work for unknown accounts keeps response times from telling
        which emails are registered.
        """
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy password for unknown accounts")
            await self._run(_verify, password, self._dummy)
            return False
        return await self._run(_verify, password, password_hash)

    def close(self) -> None:
        """Stop the hashing processes (hashes in progress finish first)."""
        self._executor.shutdown(wait=True, cancel_futures=True)

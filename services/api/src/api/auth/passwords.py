"""Argon2 password hashing, run in worker threads so the event loop never blocks."""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

T = TypeVar("T")
# How much lower the hashing threads' CPU priority is than the event loop's (Linux nice).
HASH_THREAD_NICENESS = 10


def _lower_priority() -> None:
    # On Linux a thread has its own nice value (and threads it starts inherit it), so
    # a burst of logins queues behind the event loop's work instead of starving it.
    with contextlib.suppress(OSError, AttributeError):  # not permitted, or no setpriority
        tid = threading.get_native_id()
        current = os.getpriority(os.PRIO_PROCESS, tid)
        os.setpriority(os.PRIO_PROCESS, tid, min(19, current + HASH_THREAD_NICENESS))


class PasswordHasher:
    """Hashes and verifies passwords off the event loop, at most `concurrency` at a time.

    Argon2 is memory-hard by design (64 MiB a hash by default), so the limit
    bounds memory under a burst of logins as well as CPU. The hashing threads
    run at a lower priority, so requests that need no hash stay fast meanwhile.
    """

    def __init__(self, *, concurrency: int) -> None:
        self._hash = PasswordHash((Argon2Hasher(),))
        self._executor = ThreadPoolExecutor(
            max_workers=concurrency, thread_name_prefix="argon2", initializer=_lower_priority
        )
        self._dummy: str | None = None

    async def _run(self, function: Callable[..., T], *args: str) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, function, *args)

    async def hash(self, password: str) -> str:
        """The Argon2id hash of `password`."""
        return await self._run(self._hash.hash, password)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether `password` matches; with no hash, burns the same time and answers False.

        Doing equal work for unknown accounts keeps response times from telling
        which emails are registered.
        """
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy password for unknown accounts")
            await self._run(self._hash.verify, password, self._dummy)
            return False
        return await self._run(self._hash.verify, password, password_hash)

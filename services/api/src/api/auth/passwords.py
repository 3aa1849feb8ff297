"""Argon2 password hashing, run in worker threads so the event loop never blocks."""

from __future__ import annotations

import anyio.to_thread
from anyio import CapacityLimiter
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher


class PasswordHasher:
    """Hashes and verifies passwords off the event loop, at most `concurrency` at a time.

    Argon2 is memory-hard by design (64 MiB a hash by default), so the limit
    bounds memory under a burst of logins as well as CPU.
    """

    def __init__(self, *, concurrency: int) -> None:
        self._hash = PasswordHash((Argon2Hasher(),))
        self._limiter = CapacityLimiter(concurrency)
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        """The Argon2id hash of `password`."""
        return await anyio.to_thread.run_sync(self._hash.hash, password, limiter=self._limiter)

    async def verify(self, password: str, password_hash: str | None) -> bool:
        """Whether `password` matches; with no hash, burns the same time and answers False.

        Doing equal work for unknown accounts keeps response times from telling
        which emails are registered.
        """
        if password_hash is None:
            if self._dummy is None:
                self._dummy = await self.hash("dummy password for unknown accounts")
            await anyio.to_thread.run_sync(
                self._hash.verify, password, self._dummy, limiter=self._limiter
            )
            return False
        return await anyio.to_thread.run_sync(
            self._hash.verify, password, password_hash, limiter=self._limiter
        )

"""Wait for an eventual condition by polling with a deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, overload

T = TypeVar("T")


@overload
async def eventually(
    probe: Callable[[], Awaitable[T | None]],
    *,
    within: float = ...,
    interval: float = ...,
    explain: Callable[[], str] | None = ...,
) -> T: ...


@overload
async def eventually(
    probe: Callable[[], T | None],
    *,
    within: float = ...,
    interval: float = ...,
    explain: Callable[[], str] | None = ...,
) -> T: ...


async def eventually(
    probe: Callable[[], Awaitable[T | None]] | Callable[[], T | None],
    *,
    within: float = 5.0,
    interval: float = 0.02,
    explain: Callable[[], str] | None = None,
) -> T:
    """Call `probe` (plain or async) until it returns something truthy; its value, or TimeoutError.

    A probe stops the wait early by raising (a process that exited will never
    log the line). `explain()` gives the TimeoutError's text: what was seen last.
    """
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            detail = f": {explain()}" if explain is not None else ""
            raise TimeoutError(f"condition not met within {within:g}s{detail}")
        await asyncio.sleep(interval)

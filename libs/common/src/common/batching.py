"""`Batches`: what the requests of one event-loop turn ask of Redis, sent as one call.

Used by the rate limiter (one script call for many hits) and the revocation
cut-offs (one MGET for many users). The sending task starts on the loop's
next turn, so its first call holds every item queued in this one; items
queued while a call is in flight go in the next, one call at a time, at most
`max_size` items each. Under load that is one round trip, and one pass
through redis-py, for many requests; alone, an item waits for nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def _retrieved(future: asyncio.Future[Any]) -> None:
    # An error nobody awaits any more (its request was cancelled) is not logged as lost.
    if not future.cancelled():
        future.exception()


class Batches(Generic[T, R]):
    """Queues items; `send` answers a batch of them with one result each, in order."""

    def __init__(self, send: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_size: int) -> None:
        self._send = send
        self._max_size = max_size
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.sent = 0

    def submit(self, item: T) -> asyncio.Future[R]:
        """Queue `item`; its result (or the batch's error) comes with the next call."""
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        future.add_done_callback(_retrieved)
        self._queue.append((item, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_batches())
        return future

    async def _send_batches(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_size]
                del self._queue[: self._max_size]
                try:
                    results = await self._send([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in [*batch, *self._queue]:
                        future.cancel()
                    self._queue.clear()
                    raise
                except Exception as exc:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(exc)
                    continue
                self.sent += 1
                for (_, future), result in zip(batch, results, strict=True):
                    if not future.done():  # its request may have been cancelled
                        future.set_result(result)
        finally:
            self._sender = None

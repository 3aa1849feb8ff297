"""Limits of one socket: how many messages its client may send per window.

A connection lives in one process, so its count needs no Redis: a sliding log
of the last `amount` arrival times is exact and costs O(amount) memory.
"""

from __future__ import annotations

import time
from collections import deque

import limits


class MessageRate:
    """A moving window over one connection's inbound messages."""

    def __init__(self, spec: str) -> None:
        item = limits.parse(spec)
        self.amount = item.amount
        self.window = float(item.get_expiry())
        self._arrivals: deque[float] = deque(maxlen=item.amount)

    def allow(self, now: float | None = None) -> bool:
        """Count a message; False once `amount` arrived within the last window."""
        now = time.monotonic() if now is None else now
        if len(self._arrivals) == self.amount and now - self._arrivals[0] < self.window:
            return False
        self._arrivals.append(now)
        return True

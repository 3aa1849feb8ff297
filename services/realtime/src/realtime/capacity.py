"""How many sockets one realtime worker accepts: its share of the memory budget, per socket.

An instance runs a gunicorn master and WEB_CONCURRENCY workers: that is the
fixed part, at the sizes `make bench` measures (PSS, idle). What grows with
load is sockets, each holding `WS_CONNECTION_BYTES` (measured: the bench's
Memory row for realtime and its Fan-out memory row). The rest of the budget is
split evenly among the workers; `ConnectionLimit` refuses a handshake beyond a
worker's share with close code 1013 (try again later), so a flood of sockets
is shed, never the process.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.contracts.realtime import CLOSE_TRY_AGAIN_LATER
from common.memory import MIB, MemoryBudget, plan_budget
from realtime.settings import RealtimeSettings

# Measured PSS with the shipped settings (`make bench`, Memory rows): the master, and a
# worker once it has served its first sockets (about 38 MiB idle, 30 more warm).
MASTER_BYTES = 40 * MIB
WORKER_BYTES = 75 * MIB
FULL_REASON = "server full; try again later"


def memory_budget(settings: RealtimeSettings) -> MemoryBudget:
    """The instance's budget with the master and the workers as its fixed part."""
    fixed = MASTER_BYTES + settings.web_workers * WORKER_BYTES
    return plan_budget(settings.memory_limit, settings.memory_headroom, fixed)


def connection_limit(settings: RealtimeSettings, budget: MemoryBudget | None = None) -> int:
    """Sockets one worker accepts: WS_MAX_CONNECTIONS, else what its share of the budget holds."""
    if settings.ws_max_connections is not None:
        return settings.ws_max_connections
    budget = budget or memory_budget(settings)
    return max(1, budget.units(settings.ws_connection_bytes, shares=settings.web_workers))


class ConnectionLimit:
    """ASGI middleware: at most `limit` WebSockets open in this process; 1013 beyond it.

    Counted from the handshake on (authentication holds memory too), so the
    limit is exact however many handshakes arrive at once.
    """

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit
        self.open = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        if self.open >= self.limit:
            await _refuse(receive, send)
            return
        self.open += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.open -= 1


async def _refuse(receive: Receive, send: Send) -> None:
    # Accepted, then closed: a browser sees the code and reason, where a refused
    # upgrade would only show a failed connection (1006).
    message: Message = await receive()
    if message["type"] != "websocket.connect":
        return
    await send({"type": "websocket.accept"})
    await send({"type": "websocket.close", "code": CLOSE_TRY_AGAIN_LATER, "reason": FULL_REASON})


def describe(settings: RealtimeSettings, budget: MemoryBudget, limit: int) -> str:
    """The log line: budget, socket size and the limit per worker."""
    return (
        f"{budget.describe()}; up to {limit:,} sockets per worker at "
        f"{settings.ws_connection_bytes / 1024:,.0f} KiB each ({settings.web_workers} workers)"
    )

"""Issue single-use WebSocket tickets (stored in Redis, consumed by the realtime service)."""

from __future__ import annotations

from redis.asyncio import Redis

from common.auth import Principal
from common.contracts import realtime


async def issue_ticket(redis: Redis, *, principal: Principal, prefix: str, ttl: int) -> str:
    """Store a new ticket for the principal's user that lapses after `ttl` seconds; return it.

    The ticket remembers the token's expiry and issue time: the socket it opens
    closes when that token expires or is revoked.
    """
    ticket = realtime.new_ticket()
    # NX: a collision of 256 random bits will not happen, but must never hand
    # one user's ticket to another if it did.
    value = realtime.ticket_value(
        str(principal.user_id),
        expires_at=principal.expires_at,
        issued_at_ms=principal.issued_at_ms,
    )
    stored = await redis.set(realtime.ticket_key(prefix, ticket), value, ex=ttl, nx=True)
    if not stored:
        raise RuntimeError("ticket collision")
    return ticket

"""Issue single-use WebSocket tickets (stored in Redis, consumed by the realtime service)."""

from __future__ import annotations

import uuid

from redis.asyncio import Redis

from common.contracts import realtime


async def issue_ticket(redis: Redis, *, user_id: uuid.UUID, prefix: str, ttl: int) -> str:
    """Store a new ticket for `user_id` that lapses after `ttl` seconds; return it."""
    ticket = realtime.new_ticket()
    # NX: a collision of 256 random bits will not happen, but must never hand
    # one user's ticket to another if it did.
    stored = await redis.set(realtime.ticket_key(prefix, ticket), str(user_id), ex=ttl, nx=True)
    if not stored:
        raise RuntimeError("ticket collision")
    return ticket

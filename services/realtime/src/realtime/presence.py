"""How many sockets each user has open, across every worker and instance: a cap per user.

Each open socket holds a lease in its user's Redis sorted set (member: the
connection id, score: when the lease ends, in Redis's own clock). A handshake
takes a lease only while fewer than `WS_MAX_CONNECTIONS_PER_USER` unexpired
ones exist, in one script, so concurrent handshakes on different processes
cannot both take the last place. A closing socket gives its lease back; one
task per process renews the leases of its open sockets every third of the
lease, so the sockets of a process that died without closing them stop
counting within `LEASE_SECONDS`.

The key is a fixed-length digest of the user id, as for the rate limits.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterable

from redis.asyncio import Redis
from redis.exceptions import RedisError

_logger = logging.getLogger("realtime.presence")
LEASE_SECONDS = 60.0

# KEYS[1] the user's set; ARGV: member, cap, lease in ms. 1 if the lease was taken.
_ACQUIRE_LUA = """
local now = redis.call('TIME')
local now_ms = now[1] * 1000 + math.floor(now[2] / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('ZADD', KEYS[1], now_ms + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 1
"""

# KEYS[1] the user's set; ARGV: lease in ms, then the members to renew (only if present).
_RENEW_LUA = """
local now = redis.call('TIME')
local until_ms = now[1] * 1000 + math.floor(now[2] / 1000) + tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', until_ms, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]))
return 0
"""


def sockets_key(prefix: str, user_id: str) -> str:
    """The Redis key of one user's socket leases (a digest: never the raw id)."""
    digest = hashlib.sha256(user_id.encode()).hexdigest()[:32]
    return f"{prefix}ws:open:{digest}"


class UserSockets:
    """The per-user cap on concurrent sockets, shared by every process through Redis."""

    def __init__(
        self, redis: Redis, *, prefix: str, cap: int, lease_seconds: float = LEASE_SECONDS
    ) -> None:
        self.cap = cap
        self._redis = redis
        self._prefix = prefix
        self._lease_ms = int(lease_seconds * 1000)
        self._acquire = redis.register_script(_ACQUIRE_LUA)
        self._renew = redis.register_script(_RENEW_LUA)

    async def acquire(self, user_id: str, connection_id: str) -> bool:
        """Take a place for `connection_id`; False when the user has `cap` sockets open."""
        key = sockets_key(self._prefix, user_id)
        taken = await self._acquire(keys=[key], args=[connection_id, self.cap, self._lease_ms])
        return bool(taken)

    async def release(self, user_id: str, connection_id: str) -> None:
        """Give the place back (a closing socket); a failure leaves it to expire."""
        with contextlib.suppress(RedisError):
            await self._redis.zrem(sockets_key(self._prefix, user_id), connection_id)

    async def renew(self, open_sockets: Iterable[tuple[str, Iterable[str]]]) -> None:
        """Extend the leases of this process's open sockets: (user id, connection ids) pairs."""
        async with self._redis.pipeline(transaction=False) as pipe:
            count = 0
            for user_id, connection_ids in open_sockets:
                members = list(connection_ids)
                if members:
                    key = sockets_key(self._prefix, user_id)
                    await self._renew(keys=[key], args=[self._lease_ms, *members], client=pipe)
                    count += 1
            if count:
                await pipe.execute()

    async def keep_renewing(
        self, open_sockets: Callable[[], Iterable[tuple[str, Iterable[str]]]]
    ) -> None:
        """Renew every third of the lease, for as long as the process runs."""
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            try:
                await self.renew(open_sockets())
            except RedisError as exc:
                # The next round tries again; a lease outlives two missed rounds.
                _logger.warning("socket lease renewal failed: %s", type(exc).__name__)

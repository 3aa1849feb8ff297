"""Access-token revocation: a per-user cut-off time, checked on every authenticated request.

Logging out and changing the password write "every token of this user issued
up to now is revoked" into Redis (`{prefix}auth:revoked-before:{user_id}`, the
time in milliseconds), for as long as a token can live (`ACCESS_TOKEN_TTL_
SECONDS` plus the leeway), after which every token it revokes has expired
anyway: the store holds one small key per recently revoked user and cleans
itself. An access token carries its issue time in milliseconds (`iat_ms`), so
a token issued right after the cut-off, in the same second, is not caught by
it.

No extra round trip on the hot path: each process remembers a user's cut-off
for `TOKEN_REVOCATION_CACHE_SECONDS`, so a user's requests cost one Redis read
per process per that many seconds, and the reads that requests need at the
same moment (many users, each seen once in a while) go out as one MGET per
turn of the event loop; the process that revokes updates its own
memory at once, and every process subscribed to the revocation channel does
too (`listen`). A process that misses a message (its subscription dropped)
still sees the revocation once its remembered value expires: that interval is
the bound on how long a revoked token can still be used elsewhere.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from common.auth import InvalidToken, Principal
from common.batching import Batches
from common.errors import ServiceUnavailable
from common.settings import CommonSettings

_logger = logging.getLogger("common.revocation")
# Users this process remembers (a bounded, oldest-out cache).
_CACHE_MAX = 50_000
_POLL_SECONDS = 1.0
# The most cut-offs one MGET reads.
READ_BATCH_MAX = 64


def revoked_before_key(prefix: str, user_id: uuid.UUID) -> str:
    """The Redis key of a user's cut-off."""
    return f"{prefix}auth:revoked-before:{user_id}"


def revocations_channel(prefix: str) -> str:
    """The pub/sub channel announcing cut-offs (`<user id> <cut-off ms>`)."""
    return f"{prefix}auth:revocations"


class RevocationUnavailable(ServiceUnavailable, retry_after=5):
    """Raised when a revocation cannot be stored because Redis does not answer."""


class Revocations:
    """Reads and writes users' cut-offs; one per process, built in `lifespan`."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        cache_seconds: float,
        token_lifetime_seconds: int,
        on_revoke: Callable[[uuid.UUID, int], None] | None = None,
    ) -> None:
        self._redis = redis
        self._prefix = prefix
        self._cache_seconds = cache_seconds
        self._lifetime_ms = token_lifetime_seconds * 1000
        # user id -> (cut-off ms, 0 for none; when this process read it, monotonic).
        self._cache: dict[uuid.UUID, tuple[int, float]] = {}
        self._stopping = False
        # Told of every announced revocation (realtime closes the user's sockets).
        self._on_revoke = on_revoke
        self._pubsub: PubSub | None = None
        # Cut-offs wanted at the same moment, read by one MGET (`common.batching`), and
        # the reads in flight by user: a user's concurrent requests share one.
        self._reads: Batches[uuid.UUID, int] = Batches(self._read, max_size=READ_BATCH_MAX)
        self._wanted: dict[uuid.UUID, asyncio.Future[int]] = {}

    @property
    def batches_read(self) -> int:
        """MGETs made so far."""
        return self._reads.sent

    @classmethod
    def from_settings(
        cls,
        redis: Redis,
        settings: CommonSettings,
        *,
        on_revoke: Callable[[uuid.UUID, int], None] | None = None,
    ) -> Revocations:
        """Cut-offs under the settings' key prefix, kept as long as an access token can live."""
        return cls(
            redis,
            prefix=settings.redis_key_prefix,
            cache_seconds=settings.token_revocation_cache_seconds,
            token_lifetime_seconds=settings.access_token_ttl_seconds + settings.jwt_leeway_seconds,
            on_revoke=on_revoke,
        )

    def _remember(self, user_id: uuid.UUID, cutoff: int) -> None:
        if user_id not in self._cache and len(self._cache) >= _CACHE_MAX:
            del self._cache[next(iter(self._cache))]
        self._cache[user_id] = (cutoff, time.monotonic())

    async def cutoff(self, user_id: uuid.UUID) -> int:
        """The user's cut-off in ms (0: none), remembered for `cache_seconds`."""
        remembered = self._cache.get(user_id)
        if remembered is not None and time.monotonic() - remembered[1] < self._cache_seconds:
            return remembered[0]
        wanted = self._wanted.get(user_id)
        if wanted is None:
            wanted = self._wanted[user_id] = self._reads.submit(user_id)
            wanted.add_done_callback(lambda _: self._wanted.pop(user_id, None))
        # Shielded: a request cancelled while it waits leaves the read to the others.
        return await asyncio.shield(wanted)

    async def _read(self, users: list[uuid.UUID]) -> list[int]:
        """The cut-offs of `users`, read by one MGET and remembered."""
        values = await self._redis.mget([revoked_before_key(self._prefix, user) for user in users])
        cutoffs = [int(value) if value is not None else 0 for value in values]
        for user_id, cutoff in zip(users, cutoffs, strict=True):
            self._remember(user_id, cutoff)
        return cutoffs

    async def check(self, principal: Principal) -> None:
        """Raise `InvalidToken` if the principal's token was issued before its user's cut-off.

        Redis unreachable: the token is accepted (it is verified and short-lived),
        and the failure logged; revocation is then as good as the cache.
        """
        try:
            cutoff = await self.cutoff(principal.user_id)
        except (RedisError, OSError) as exc:
            _logger.warning("revocation store unavailable: %s", type(exc).__name__)
            return
        if cutoff and principal.issued_at_ms <= cutoff:
            _logger.info("rejected token: revoked")
            raise InvalidToken("token revoked")

    async def revoke_all(self, user_id: uuid.UUID) -> None:
        """Revoke every access token of `user_id` issued up to now (in every process)."""
        cutoff = int(time.time() * 1000)
        key = revoked_before_key(self._prefix, user_id)
        try:
            async with self._redis.pipeline(transaction=False) as pipe:
                pipe.set(key, cutoff, px=self._lifetime_ms)
                pipe.publish(revocations_channel(self._prefix), f"{user_id} {cutoff}")
                await pipe.execute()
        except (RedisError, OSError) as exc:
            raise RevocationUnavailable(
                "Could not revoke the access tokens; try again shortly.",
            ) from exc
        self._remember(user_id, cutoff)

    def _apply(self, message: Any) -> None:
        user, _, cutoff = str(message, "utf-8").partition(" ")
        try:
            user_id, cutoff_ms = uuid.UUID(user), int(cutoff)
        except ValueError:
            return
        self._remember(user_id, cutoff_ms)
        if self._on_revoke is not None:
            self._on_revoke(user_id, cutoff_ms)

    async def listen(self, pubsub_redis: Redis) -> None:
        """Apply announced cut-offs as they come, until `stop_listening`; resubscribe after
        errors."""
        channel = revocations_channel(self._prefix)
        while not self._stopping:
            pubsub = self._pubsub = pubsub_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(channel)
                while not self._stopping:
                    message = await pubsub.get_message(timeout=_POLL_SECONDS)
                    if message is not None and message["type"] == "message":
                        self._apply(message["data"])
            except Exception as exc:
                if self._stopping:
                    # `stop_listening` closed the connection under us: whatever that
                    # raised mid-command (redis-py can raise AttributeError when the
                    # writer is gone during SUBSCRIBE) is the stop itself.
                    return
                if not isinstance(exc, (RedisError, OSError)):
                    raise
                _logger.warning("revocation channel lost: %s", type(exc).__name__)
            finally:
                self._pubsub = None
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            if not self._stopping:
                await asyncio.sleep(1)

    async def stop_listening(self, listener: asyncio.Task[None]) -> None:
        """End `listen` (running as `listener`) at once.

        By closing its connection, not by cancelling it: a cancellation that
        meets redis-py's read timeout can be lost (Python 3.11's
        `asyncio.timeout`), and the task would never end.
        """
        self._stopping = True
        pubsub = self._pubsub
        if pubsub is not None and pubsub.connection is not None:
            await pubsub.connection.disconnect(nowait=True)
        try:
            await asyncio.wait_for(listener, timeout=_POLL_SECONDS * 2)
        except TimeoutError:
            _logger.warning("revocation listener did not stop in time")

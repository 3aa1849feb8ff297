"""The fan-out: Redis subscriptions routed in memory by user id to this process's sockets.

Two routings (`WS_ROUTING`). `pattern`: `PSUBSCRIBE {prefix}events:user:*` on one
dedicated connection receives every user's events; each is handed to the sockets
of its user in this process and dropped when there are none. `per_user`: the same
connection `SUBSCRIBE`s to the channel of each user with a socket here, on the
user's first socket, and `UNSUBSCRIBE`s after the last one closes, so Redis sends
an event only to the processes that hold its user. A socket starts reading its
stream only once its user's subscription is confirmed: every event is then either
in what it reads or arrives live, and the session drops the copies by id.

When the connection fails, every socket holds its live events and the
subscription reconnects with jittered exponential backoff; once it is back (every
user's channel subscribed again), each socket replays from its user's stream what
it missed meanwhile, so nothing published during the outage is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections import defaultdict
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.exceptions import RedisError

from common.contracts.events import user_channel
from common.contracts.realtime import CLOSE_GOING_AWAY, CLOSE_POLICY_VIOLATION
from common.metrics import REDIS_RECONNECTS, WS_EVENTS_DELIVERED
from realtime.session import Session
from realtime.settings import RealtimeSettings, Routing
from realtime.streams import parse_stream_id

_logger = logging.getLogger("realtime.hub")
_POLL_SECONDS = 1.0


class SubscriptionDown(RuntimeError):
    """Raised by the readiness check while the Redis subscription is not established."""


class Hub:
    """This process's sockets by user id, fed from one Redis subscription connection."""

    def __init__(self, redis: Redis, settings: RealtimeSettings) -> None:
        self._redis = redis
        self._settings = settings
        self._channel_prefix = user_channel(settings.redis_key_prefix, "")
        self._sessions: dict[str, set[Session]] = defaultdict(set)
        self._connected = False
        self._per_user = settings.ws_routing is Routing.PER_USER
        # per_user: the connection's own channel, so it stays subscribed (and health
        # checked) with no user here.
        self._anchor = f"{settings.redis_key_prefix}realtime:hub:{uuid.uuid4().hex}".encode()
        self._pubsub: PubSub | None = None
        self._base_confirmed = False  # the pattern, or the anchor channel
        # per_user: users whose SUBSCRIBE is sent, with the sockets awaiting its
        # confirmation; users whose channel is subscribed; users left with no socket.
        self._pending: dict[str, list[asyncio.Future[None]]] = {}
        self._subscribed: set[str] = set()
        self._unneeded: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def is_connected(self) -> bool:
        """Whether the subscription is established and events flow."""
        return self._connected

    @property
    def socket_count(self) -> int:
        return sum(len(sessions) for sessions in self._sessions.values())

    def open_sockets(self) -> list[tuple[str, list[str]]]:
        """This process's sockets: (user id, connection ids) for each user with any."""
        return [
            (user_id, [session.id for session in sessions])
            for user_id, sessions in self._sessions.items()
        ]

    async def register(self, session: Session) -> None:
        """Route the user's live events to `session` from now on.

        Returns once they flow: under `per_user`, when Redis confirmed the user's
        subscription (or the connection was lost: the resync that follows the
        reconnect then replays what the session missed).
        """
        user_id = session.user_id
        self._sessions[user_id].add(session)
        if not self._per_user:
            return
        self._unneeded.discard(user_id)
        pubsub = self._pubsub
        if user_id in self._subscribed or pubsub is None:
            return  # flowing already, or down: the reconnect subscribes every user here
        confirmed = asyncio.get_running_loop().create_future()
        waiters = self._pending.get(user_id)
        if waiters is not None:
            waiters.append(confirmed)
        else:
            self._pending[user_id] = [confirmed]
            with contextlib.suppress(RedisError, OSError):  # the listener sees it too
                await pubsub.subscribe(self._channel(user_id))
        await confirmed

    def unregister(self, session: Session) -> None:
        sessions = self._sessions.get(session.user_id)
        if sessions is not None:
            sessions.discard(session)
            if not sessions:
                del self._sessions[session.user_id]
                if self._per_user:
                    # Batched by the listener, between two reads.
                    self._unneeded.add(session.user_id)

    def revoke(self, user_id: uuid.UUID, cutoff_ms: int) -> None:
        """Close the user's sockets opened with a token issued up to `cutoff_ms` (logout,
        password change)."""
        for session in list(self._sessions.get(str(user_id), ())):
            if session.token_issued_at_ms <= cutoff_ms:
                session.close(CLOSE_POLICY_VIOLATION, "token revoked")

    async def check(self) -> None:
        """Readiness: fail while the subscription is down."""
        if not self._connected:
            raise SubscriptionDown("the Redis subscription is down")

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="realtime-hub")
        self._sweeper = asyncio.create_task(self._sweep_idle(), name="realtime-idle-sweep")

    async def stop(self) -> None:
        for task in (self._task, self._sweeper):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _sweep_idle(self) -> None:
        """Close every socket whose client sent nothing for `WS_IDLE_TIMEOUT_SECONDS`.

        One task for the process rather than a timer per socket: it looks every
        tenth of the timeout, so a silent client is closed between 1 and 1.1
        timeouts after its last message.
        """
        limit = self._settings.ws_idle_timeout_seconds
        idle = f"idle: send a ping at least every {limit:g}s"
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(limit / 10)
            oldest = loop.time() - limit
            for session in self._all_sessions():
                if session.last_seen <= oldest:
                    session.close(CLOSE_GOING_AWAY, idle)

    async def _run(self) -> None:
        failures = 0
        while True:
            pubsub = self._redis.pubsub()
            try:
                await self._subscribe(pubsub)
                if failures:
                    REDIS_RECONNECTS.inc()
                    _logger.info("subscription restored; replaying what sockets missed")
                    for session in self._all_sessions():
                        session.schedule_resync()
                else:
                    _logger.info("subscription up")
                failures = 0
                await self._listen(pubsub)
            except (RedisError, OSError) as exc:
                if self._connected or not failures:
                    _logger.warning("subscription lost: %s", type(exc).__name__)
                self._lose()
                failures += 1
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]  # untyped in redis-py
            await asyncio.sleep(self._backoff(failures))

    async def _subscribe(self, pubsub: PubSub) -> None:
        self._base_confirmed = False
        if self._per_user:
            await self._subscribe_users(pubsub)
        else:
            await pubsub.psubscribe(f"{self._channel_prefix}*")
        async with asyncio.timeout(self._settings.redis_socket_timeout):
            while not self._base_confirmed or self._pending:
                message = await pubsub.get_message(timeout=_POLL_SECONDS)
                if message is not None:
                    self._handle(message)
        # From here on every event is received: sockets may go live again.
        self._connected = True

    async def _subscribe_users(self, pubsub: PubSub) -> None:
        users = list(self._sessions)
        for user_id in users:
            self._pending.setdefault(user_id, [])
        await pubsub.subscribe(self._anchor, *(self._channel(user_id) for user_id in users))
        # Sockets registered from here on subscribe their user themselves.
        self._pubsub = pubsub
        late = [user_id for user_id in self._sessions if user_id not in self._pending]
        for user_id in late:
            self._pending[user_id] = []
        if late:
            await pubsub.subscribe(*(self._channel(user_id) for user_id in late))

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(timeout=_POLL_SECONDS)
            if message is not None:
                self._handle(message)
            if self._unneeded:
                await self._unsubscribe_unneeded(pubsub)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind in ("pmessage", "message"):
            self._dispatch(message["channel"], message["data"])
        elif kind == "psubscribe" or message["channel"] == self._anchor:
            self._base_confirmed = True
        elif kind == "subscribe":
            user_id = message["channel"].decode().removeprefix(self._channel_prefix)
            waiters = self._pending.pop(user_id, None)
            if waiters is not None:
                self._subscribed.add(user_id)
                _release(waiters)

    async def _unsubscribe_unneeded(self, pubsub: PubSub) -> None:
        # A user whose SUBSCRIBE is unconfirmed waits for the next round, so a later
        # confirmation always answers a later SUBSCRIBE.
        gone = [
            user_id
            for user_id in self._unneeded
            if user_id not in self._sessions and user_id not in self._pending
        ]
        self._unneeded = {
            user_id
            for user_id in self._unneeded
            if user_id in self._pending and user_id not in self._sessions
        }
        channels = [self._channel(user_id) for user_id in gone if user_id in self._subscribed]
        self._subscribed.difference_update(gone)
        if channels:
            await pubsub.unsubscribe(*channels)

    def _channel(self, user_id: str) -> str:
        return f"{self._channel_prefix}{user_id}"

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        user_id = channel.decode().removeprefix(self._channel_prefix)
        sessions = self._sessions.get(user_id)
        if not sessions:
            return
        frame = data.decode()
        try:
            event = json.loads(frame)
            entry_id = parse_stream_id(str(event["id"]))
            owner = str(event["user_id"])
        except (ValueError, KeyError, TypeError):
            _logger.warning("malformed event on %s dropped", channel.decode())
            return
        if entry_id is None or owner != user_id:
            _logger.warning("event on %s for another user or without an id dropped", user_id)
            return
        for session in list(sessions):
            session.deliver((entry_id, frame))
        WS_EVENTS_DELIVERED.inc(len(sessions))

    def _lose(self) -> None:
        self._connected = False
        self._pubsub = None
        for waiters in self._pending.values():
            _release(waiters)
        self._pending.clear()
        self._subscribed.clear()
        self._unneeded.clear()
        # Nothing arrives now; hold live delivery so the resync can replay first.
        for session in self._all_sessions():
            session.hold(for_resync=True)

    def _all_sessions(self) -> list[Session]:
        return [session for sessions in self._sessions.values() for session in sessions]

    def _backoff(self, failures: int) -> float:
        if failures == 0:
            return 0.0
        ceiling = min(
            self._settings.pubsub_backoff_max_seconds,
            self._settings.pubsub_backoff_seconds * 2 ** (failures - 1),
        )
        return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not security)


def _release(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)

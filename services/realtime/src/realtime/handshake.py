"""Who is connecting: the checks a WebSocket handshake must pass before it is served.

HandshakeRejected      the socket is closed with 1008 and the reason; never served
├── OriginNotAllowed   an `Origin` header that is not in CORS_ORIGINS
├── MissingCredentials neither a bearer token nor a ticket
├── BadCredentials     an invalid or expired token, an unknown or used ticket
├── BadResumePoint     a `last_event_id` that is not a stream id
└── TooManyConnections the client IP or user opened too many sockets in the window
"""

from __future__ import annotations

import time
import uuid

from redis.asyncio import Redis
from starlette.websockets import WebSocket

from common.auth import InvalidToken, Principal, bearer_token, verify_access_token
from common.contracts.realtime import is_ticket_shaped, parse_ticket_value, ticket_key
from common.ratelimit import RateLimiter
from realtime.settings import RealtimeSettings
from realtime.streams import StreamId, parse_stream_id


class HandshakeRejected(Exception):
    """Raised when a handshake fails a check; `reason` is told to the client."""

    reason = "handshake rejected"

    def __init__(self, reason: str | None = None) -> None:
        self.reason = reason or self.reason
        super().__init__(self.reason)


class OriginNotAllowed(HandshakeRejected):
    """Raised when a browser's `Origin` is not on the allow-list."""

    reason = "origin not allowed"


class MissingCredentials(HandshakeRejected):
    """Raised when the handshake carries neither a bearer token nor a ticket."""

    reason = "credentials required: Authorization: Bearer <token> or ?ticket="


class BadCredentials(HandshakeRejected):
    """Raised when the token does not verify or the ticket is unknown, expired or used."""

    reason = "invalid credentials"


class BadResumePoint(HandshakeRejected):
    """Raised when `last_event_id` is not a stream id (`<ms>-<seq>`)."""

    reason = "last_event_id must be a stream id such as 1700000000000-0"


class TooManyConnections(HandshakeRejected):
    """Raised when a connect limit (per client IP or per user) is exhausted."""

    reason = "too many connections"


async def check_connect_limit(limiter: RateLimiter, policy: str, key: str) -> None:
    """Count this handshake under `policy`; `TooManyConnections` beyond it."""
    decision = await limiter.hit(policy, key)
    if decision is not None and not decision.allowed:
        raise TooManyConnections(f"too many connections; retry in {decision.reset_after}s")


def check_origin(websocket: WebSocket, settings: RealtimeSettings) -> None:
    """Browsers send `Origin`; it must be allowed. Other clients send none."""
    origin = websocket.headers.get("origin")
    if origin is None or "*" in settings.cors_origins:
        return
    if origin.rstrip("/") not in {allowed.rstrip("/") for allowed in settings.cors_origins}:
        raise OriginNotAllowed(f"origin not allowed: {origin[:64]}")


async def authenticate(websocket: WebSocket, settings: RealtimeSettings, redis: Redis) -> Principal:
    """Who the handshake's bearer token or ticket speaks for, with the token's times."""
    token = bearer_token(websocket)
    ticket = websocket.query_params.get("ticket")
    if token is not None:
        try:
            return verify_access_token(settings, token)
        except InvalidToken:
            raise BadCredentials("invalid or expired token") from None
    if ticket is None:
        raise MissingCredentials
    if not is_ticket_shaped(ticket):
        raise BadCredentials("unknown, expired or already used ticket")
    # GETDEL: consumed in the same step it is read, so two handshakes racing
    # with one ticket cannot both win.
    stored = await redis.getdel(ticket_key(settings.redis_key_prefix, ticket))
    if stored is None:
        raise BadCredentials("unknown, expired or already used ticket")
    user_id, expires_at, issued_at_ms = parse_ticket_value(
        stored.decode() if isinstance(stored, bytes) else str(stored)
    )
    try:
        user = uuid.UUID(user_id)
    except ValueError:
        raise BadCredentials("unknown, expired or already used ticket") from None
    if expires_at is None:  # a ticket stored before tickets carried the token's times
        expires_at = int(time.time()) + settings.access_token_ttl_seconds
    return Principal(user, "ticket", expires_at, issued_at_ms)


def resume_point(websocket: WebSocket) -> StreamId | None:
    """The `last_event_id` query parameter, if given."""
    text = websocket.query_params.get("last_event_id")
    if text is None or text == "":
        return None
    point = parse_stream_id(text)
    if point is None:
        raise BadResumePoint
    return point

"""What the API, the realtime service and clients agree on: tickets, close codes, messages.

A ticket is a random single-use secret the API stores in Redis for a few
seconds, keyed by the ticket itself, holding the user id. A browser puts it in
the WebSocket URL instead of its access token, so no long-lived credential
ever lands in a URL or an access log; the realtime service consumes it with
GETDEL, so it opens one socket at most.
"""

from __future__ import annotations

import re
import secrets

TICKET_TTL_SECONDS = 30
TICKET_BYTES = 32
# token_urlsafe(32) gives 43 characters of [A-Za-z0-9_-]; anything else is refused
# before it reaches Redis.
_TICKET_SHAPE = re.compile(r"^[A-Za-z0-9_-]{32,128}$")

# WebSocket close codes the realtime service uses (RFC 6455 section 7.4 and the IANA registry).
CLOSE_GOING_AWAY = 1001
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009
CLOSE_SERVICE_RESTART = 1012
CLOSE_TRY_AGAIN_LATER = 1013

# The `type` of the control messages on the socket (events carry their own, from
# `common.contracts.events`): the server says hello on connect, answers ping with
# pong, sends reset when it no longer holds a resuming client's position, and
# error for a message it cannot act on.
MESSAGE_HELLO = "hello"
MESSAGE_PING = "ping"
MESSAGE_PONG = "pong"
MESSAGE_RESET = "reset"
MESSAGE_ERROR = "error"


def new_ticket() -> str:
    """A fresh random ticket."""
    return secrets.token_urlsafe(TICKET_BYTES)


def is_ticket_shaped(ticket: str) -> bool:
    """Whether `ticket` could have come from `new_ticket` (checked before any lookup)."""
    return bool(_TICKET_SHAPE.fullmatch(ticket))


def ticket_key(prefix: str, ticket: str) -> str:
    """The Redis key holding the user id a ticket was issued to."""
    return f"{prefix}ws-ticket:{ticket}"


def ticket_value(user_id: str, *, expires_at: int, issued_at_ms: int) -> str:
    """What a ticket's key holds: the user and the times of the token it was issued for,
    so a socket opened with it ends when that token would, and with its revocation."""
    return f"{user_id} {expires_at} {issued_at_ms}"


def parse_ticket_value(value: str) -> tuple[str, int | None, int]:
    """(user id, token expiry or None, token issue time in ms) of a stored ticket."""
    user_id, _, times = value.partition(" ")
    expires, _, issued = times.partition(" ")
    try:
        return user_id, int(expires), int(issued)
    except ValueError:
        return user_id, None, 0

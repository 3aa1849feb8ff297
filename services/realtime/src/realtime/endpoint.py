"""`GET /ws`: authenticate the handshake, then serve one socket until either side ends it."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.types import Receive, Scope, Send
from starlette.websockets import WebSocket

from common.auth import InvalidToken, Principal
from common.contracts.events import user_stream
from common.contracts.realtime import (
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_POLICY_VIOLATION,
    CLOSE_SERVICE_RESTART,
    CLOSE_TRY_AGAIN_LATER,
)
from common.metrics import WS_CONNECTIONS
from common.ratelimit import RateLimitUnavailable, client_ip
from realtime.handshake import (
    BadCredentials,
    HandshakeRejected,
    authenticate,
    check_connect_limit,
    check_origin,
    resume_point,
)
from realtime.hub import Hub
from realtime.message_rate import MessageRate
from realtime.serving import CLOSE_NOWAIT_EXTENSION, SEND_NOWAIT_EXTENSION
from realtime.session import Session
from realtime.settings import RealtimeSettings
from realtime.state import realtime_state
from realtime.streams import StreamId, parse_stream_id

_logger = logging.getLogger("realtime.socket")
_START_ATTEMPTS = 3
PATH = "/ws"


async def events_socket(scope: Scope, receive: Receive, send: Send) -> None:
    """The `/ws` ASGI endpoint (a plain route: no FastAPI dependency machinery per socket)."""
    websocket = WebSocket(scope, receive, send)
    state = realtime_state(scope)
    settings = state["settings"]
    hub = state["hub"]
    redis = state["redis"]
    lifecycle = state["lifecycle"]
    limiter = state["rate_limiter"]
    user_sockets = state["user_sockets"]
    revocations = state["revocations"]
    try:
        check_origin(websocket, settings)
        # Per address before any credential work, per user after it.
        await check_connect_limit(limiter, "ws_connect_ip", f"ip:{client_ip(websocket)}")
        principal = await authenticate(websocket, settings, redis)
        try:
            await revocations.check(principal)
        except InvalidToken:
            raise BadCredentials("invalid or expired token") from None
        user_id = str(principal.user_id)
        await check_connect_limit(limiter, "ws_connect_user", f"user:{user_id}")
        start_from = resume_point(websocket)
    except HandshakeRejected as exc:
        _logger.info("websocket refused: %s", exc.reason)
        await _refuse(websocket, CLOSE_POLICY_VIOLATION, exc.reason)
        return
    except (RedisError, RateLimitUnavailable):
        await _refuse(websocket, CLOSE_TRY_AGAIN_LATER, "events unavailable; try again later")
        return
    if lifecycle.draining:
        await _refuse(websocket, CLOSE_SERVICE_RESTART, "service restarting; reconnect")
        return
    if not hub.is_connected:
        await _refuse(websocket, CLOSE_TRY_AGAIN_LATER, "events unavailable; try again later")
        return
    connection_id = uuid.uuid4().hex
    try:
        admitted = await user_sockets.acquire(user_id, connection_id)
    except RedisError:
        await _refuse(websocket, CLOSE_TRY_AGAIN_LATER, "events unavailable; try again later")
        return
    if not admitted:
        reason = f"too many open connections: at most {user_sockets.cap} per user"
        _logger.info("websocket refused: %s", reason)
        await _refuse(websocket, CLOSE_POLICY_VIOLATION, reason)
        return
    try:
        await websocket.accept()
        del websocket
        await _open(
            scope, receive, send, settings, hub, redis, principal, connection_id, start_from
        )
    finally:
        await user_sockets.release(user_id, connection_id)


async def _open(
    scope: Scope,
    receive: Receive,
    send: Send,
    settings: RealtimeSettings,
    hub: Hub,
    redis: Redis,
    principal: Principal,
    connection_id: str,
    start_from: StreamId | None,
) -> None:
    user_id = str(principal.user_id)
    extensions = scope.get("extensions") or {}
    _forget_handshake(scope)
    session = Session(
        connection_id=connection_id,
        user_id=user_id,
        stream=user_stream(settings.redis_key_prefix, user_id),
        redis=redis,
        queue_size=settings.ws_send_queue_size,
        replay_batch=settings.ws_replay_batch,
        send=functools.partial(_send_text, send),
        send_nowait=extensions.get(SEND_NOWAIT_EXTENSION),
        on_close=_closer(extensions.get(CLOSE_NOWAIT_EXTENSION), send, settings),
        token_issued_at_ms=principal.issued_at_ms,
    )
    await _serve(
        receive,
        session,
        hub=hub,
        settings=settings,
        start_from=start_from,
        expires_at=principal.expires_at,
    )


def _forget_handshake(scope: Scope) -> None:
    # The socket lives for hours; what only the handshake needed (its headers, the
    # query string with its ticket, the app state copy) need not live with it.
    scope["headers"] = []
    scope["query_string"] = b""
    scope["subprotocols"] = []
    scope["state"] = {}


async def _send_text(send: Send, text: str) -> None:
    await send({"type": "websocket.send", "text": text})


def _closer(
    close_nowait: Callable[[int, str, float], None] | None, send: Send, settings: RealtimeSettings
) -> Callable[[int, str], None]:
    """How a session closes its socket: at once through the server when it offers that."""
    timeout = settings.ws_close_timeout_seconds
    if close_nowait is not None:
        return lambda code, reason: close_nowait(code, reason[:120], timeout)

    def close_later(code: int, reason: str) -> None:
        # The stock protocol: its close waits for the socket to be writable.
        message = {"type": "websocket.close", "code": code, "reason": reason[:120]}
        task = asyncio.create_task(_close_within(send, message, timeout))
        _closing.add(task)
        task.add_done_callback(_closing.discard)

    return close_later


_closing: set[asyncio.Task[None]] = set()


async def _close_within(send: Send, message: dict[str, Any], seconds: float) -> None:
    # A client that stopped reading may never let the close frame out.
    with contextlib.suppress(Exception):
        async with asyncio.timeout(seconds):
            await send(message)


async def _refuse(websocket: WebSocket, code: int, reason: str) -> None:
    # Accepted, then closed: a client (a browser too) sees the code and the
    # reason, where a refused upgrade would only show an HTTP 403.
    await websocket.accept()
    await websocket.close(code, reason[:120])


def _hello(session: Session, settings: RealtimeSettings) -> dict[str, Any]:
    return {
        "type": "hello",
        "connection_id": session.id,
        "user_id": session.user_id,
        "limits": {
            "max_message_bytes": settings.ws_max_message_bytes,
            "send_queue_size": settings.ws_send_queue_size,
            "heartbeat_seconds": settings.ws_heartbeat_seconds,
            "heartbeat_timeout_seconds": settings.ws_heartbeat_timeout_seconds,
            "idle_timeout_seconds": settings.ws_idle_timeout_seconds,
        },
    }


async def _serve(
    receive: Receive,
    session: Session,
    *,
    hub: Hub,
    settings: RealtimeSettings,
    start_from: StreamId | None,
    expires_at: int,
) -> None:
    # One task per socket, this one: it starts delivery, then reads the client's
    # messages. Frames go out from the fan-out synchronously (or through a pump task
    # while a backlog lasts); the idle sweep and the heartbeat are per process.
    opened = time.monotonic()
    session.last_seen = asyncio.get_running_loop().time()
    _logger.info(
        "websocket open",
        extra={
            "connection_id": session.id,
            "user_id": session.user_id,
            "pid": os.getpid(),
            "last_event_id": str(start_from) if start_from else None,
        },
    )
    # The socket ends with its token (a ticket's: the token it was issued for); a
    # timer, not a task, so an open socket still costs one task.
    expiry = asyncio.get_running_loop().call_later(
        max(0.0, expires_at - time.time()), session.close, CLOSE_POLICY_VIOLATION, "token expired"
    )
    WS_CONNECTIONS.inc()
    try:
        # Before the stream is read: what is published from here on arrives live.
        await hub.register(session)
        # The hello tells the client it is live: an event published after it reaches it.
        session.send_message(_hello(session, settings))
        await _start(session, start_from)
        await _receive(receive, session, settings)
    finally:
        expiry.cancel()
        WS_CONNECTIONS.dec()
        hub.unregister(session)
        session.cancel_tasks()
    _logger.info(
        "websocket closed",
        extra={
            "connection_id": session.id,
            "user_id": session.user_id,
            "code": session.close_code,
            "reason": session.close_reason or None,
            "seconds": round(time.monotonic() - opened, 3),
        },
    )


async def _start(session: Session, start_from: StreamId | None) -> None:
    for attempt in range(_START_ATTEMPTS):
        if session.closed:
            return
        try:
            await session.start(start_from)
            return
        except RedisError as exc:
            # The first command on a pooled connection from before a Redis
            # restart fails once; a second try gets a fresh connection.
            _logger.info("start of %s failed: %s", session.id, type(exc).__name__)
            await asyncio.sleep(0.05 * 2**attempt)
    session.close(CLOSE_TRY_AGAIN_LATER, "events unavailable; try again later")


async def _receive(receive: Receive, session: Session, settings: RealtimeSettings) -> None:
    loop = asyncio.get_running_loop()
    rate: MessageRate | None = None  # made at the first message: most sockets never send one
    while not session.closed:
        message = await receive()
        if message["type"] == "websocket.disconnect" or session.closed:
            return
        session.last_seen = loop.time()
        rate = rate or MessageRate(settings.rate_limit_ws_messages)
        if not rate.allow():
            allowed = f"{rate.amount} per {rate.window:g}s"
            session.close(CLOSE_POLICY_VIOLATION, f"too many messages: at most {allowed}")
            return
        text: str | None = message.get("text")
        data: bytes | None = message.get("bytes")
        size = len(text.encode()) if text is not None else len(data or b"")
        if size > settings.ws_max_message_bytes:
            limit = settings.ws_max_message_bytes
            session.close(CLOSE_MESSAGE_TOO_BIG, f"messages are limited to {limit} bytes")
            return
        if text is None:
            _error(session, "unsupported", "send JSON text frames")
            continue
        await _handle(session, text)


async def _handle(session: Session, text: str) -> None:
    try:
        message = json.loads(text)
    except ValueError:
        _error(session, "bad_message", "not JSON")
        return
    kind = message.get("type") if isinstance(message, dict) else None
    if kind == "ping":
        session.send_message({"type": "pong"})
    elif kind == "resume":
        point = parse_stream_id(str(message.get("last_event_id", "")))
        if point is None:
            _error(session, "bad_message", "resume needs last_event_id, a stream id")
            return
        try:
            await session.resume(point)
        except RedisError:
            session.close(CLOSE_TRY_AGAIN_LATER, "events unavailable; try again later")
    else:
        _error(session, "bad_message", "type must be ping or resume")


def _error(session: Session, code: str, detail: str) -> None:
    session.send_message({"type": "error", "code": code, "detail": detail})

"""The fan-out baseline: the smallest honest WebSocket event server.

One Redis pattern subscription per process, as ours, and a plain Starlette
WebSocket endpoint that checks the same bearer token, then the naive loop:
for each event, for each of its user's sockets, serialize it and
`await ws.send_text(...)` in turn. No send queues, no replay, no limits, no
middleware. Served by the realtime service's gunicorn config with
`StockUvicornWorker`: the same uvicorn settings, with uvicorn's own
`websockets-sansio` protocol rather than our coalescing subclass.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections import defaultdict
from collections.abc import AsyncIterator
from typing import Any

from redis.asyncio import Redis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from common.auth import InvalidToken, bearer_token, verify_access_token
from common.contracts.events import user_channel
from common.settings import CommonSettings, load_settings
from realtime.serving import WebSocketUvicornWorker


class StockUvicornWorker(WebSocketUvicornWorker):
    """The realtime worker's uvicorn settings with uvicorn's stock WebSocket protocol."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.config.ws = "websockets-sansio"


_sockets: dict[str, set[WebSocket]] = defaultdict(set)
_subscribed = asyncio.Event()


async def _fan_out(redis: Redis, prefix: str) -> None:
    pubsub = redis.pubsub()
    await pubsub.psubscribe(f"{prefix}*")
    async for message in pubsub.listen():
        if message["type"] == "psubscribe":
            _subscribed.set()
        if message["type"] != "pmessage":
            continue
        user_id = message["channel"].decode().removeprefix(prefix)
        event = json.loads(message["data"])
        for websocket in list(_sockets.get(user_id, ())):
            try:
                await websocket.send_text(json.dumps(event))
            except Exception:
                _sockets[user_id].discard(websocket)


@contextlib.asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
    settings = load_settings(CommonSettings)
    redis = Redis.from_url(settings.redis_url)
    prefix = user_channel(os.environ.get("REDIS_KEY_PREFIX", ""), "")
    task = asyncio.create_task(_fan_out(redis, prefix))
    try:
        yield {"settings": settings}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await redis.aclose()


async def _ready(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok", status_code=200 if _subscribed.is_set() else 503)


async def _events(websocket: WebSocket) -> None:
    token = bearer_token(websocket)
    try:
        user_id = str(verify_access_token(websocket.state.settings, token or "").user_id)
    except InvalidToken:
        await websocket.close(1008)
        return
    await websocket.accept()
    await websocket.send_text(json.dumps({"type": "hello", "user_id": user_id}))
    _sockets[user_id].add(websocket)
    try:
        while True:
            await websocket.receive_text()
    except WebSocketDisconnect:
        pass
    finally:
        _sockets[user_id].discard(websocket)


app = Starlette(
    routes=[Route("/health/ready", _ready), WebSocketRoute("/ws", _events)],
    lifespan=_lifespan,
)

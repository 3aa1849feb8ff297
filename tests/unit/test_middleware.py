"""The pure-ASGI edge middleware, each around a tiny Starlette app.

`EdgeMiddleware`'s headers, access log and metrics through the API itself are
in tests/integration/test_http_edge.py and test_metrics_api.py.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.middleware import (
    LOGGED_PATH_MAX,
    BodySizeLimitMiddleware,
    EdgeMiddleware,
    HostCheckMiddleware,
    UnhandledErrorMiddleware,
)
from common.request_context import get_request_id

MAX_BYTES = 1024


async def _echo_request_id(request: Request) -> JSONResponse:
    return JSONResponse(
        {"context": get_request_id(), "state": request.state.request_id},
    )


async def _body_length(request: Request) -> JSONResponse:
    return JSONResponse({"received": len(await request.body())})


async def _respond_then_read(scope: Scope, receive: Receive, send: Send) -> None:
    # Starts the answer before reading the body, as a streaming upload handler might.
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while (await receive()).get("more_body", False):
        pass
    await send({"type": "http.response.body", "body": b"done"})


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


class _Recorder:
    """An inner ASGI app that remembers what it saw, for websocket scopes."""

    def __init__(self) -> None:
        self.calls: list[tuple[str | None, str | None]] = []

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.calls.append((scope.get("state", {}).get("request_id"), get_request_id()))


async def _call_websocket(app: ASGIApp, *, host: str = "testserver") -> list[Message]:
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "websocket.connect"}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "websocket",
        "path": "/ws",
        "headers": [(b"host", host.encode())],
        "query_string": b"",
    }
    await app(scope, receive, send)
    return sent


def _edge_options(allowed_hosts: list[str]) -> dict[str, Any]:
    return {
        "allowed_hosts": allowed_hosts,
        "content_security_policy": "default-src 'none'",
        "hsts": False,
    }


def _edge(*, allowed_hosts: list[str] | None = None) -> Middleware:
    return Middleware(EdgeMiddleware, **_edge_options(allowed_hosts or ["*"]))


def _app(*middleware: Middleware) -> Starlette:
    return Starlette(
        routes=[
            Route("/id", _echo_request_id),
            Route("/body", _body_length, methods=["POST"]),
            Route("/", _hello),
        ],
        middleware=list(middleware),
    )


def _client(app: Starlette, *, base_url: str = "http://testserver") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


class TestRequestId:
    """A well-formed X-Request-ID is kept, anything else replaced; the id reaches the handler."""

    @pytest.fixture
    def app(self) -> Starlette:
        return _app(_edge())

    async def test_well_formed_incoming_id_is_echoed(self, app: Starlette) -> None:
        async with _client(app) as client:
            response = await client.get("/id", headers={"X-Request-ID": "abc-123.DEF:456_x"})
        assert response.headers["x-request-id"] == "abc-123.DEF:456_x"
        assert response.json() == {"context": "abc-123.DEF:456_x", "state": "abc-123.DEF:456_x"}

    async def test_missing_id_is_generated(self, app: Starlette) -> None:
        async with _client(app) as client:
            first = await client.get("/id")
            second = await client.get("/id")
        assert len(first.headers["x-request-id"]) == 32
        assert first.headers["x-request-id"] != second.headers["x-request-id"]
        assert first.json()["context"] == first.headers["x-request-id"]

    @pytest.mark.parametrize(
        "incoming",
        [
            "x" * 129,
            "short",
            "has spaces in it",
            'request-0001\n{"level": "CRITICAL"}',
            'quote"id12345',
            "ü-unicode-id",
        ],
        ids=["too_long", "too_short", "spaces", "newline_log_injection", "quote", "non_ascii"],
    )
    async def test_malformed_incoming_id_is_replaced(self, app: Starlette, incoming: str) -> None:
        async with _client(app) as client:
            response = await client.get("/id", headers={b"X-Request-ID": incoming.encode("utf-8")})
        echoed = response.headers["x-request-id"]
        assert echoed != incoming
        assert len(echoed) == 32
        assert response.json()["context"] == echoed

    async def test_id_is_cleared_after_the_request(self, app: Starlette) -> None:
        async with _client(app) as client:
            await client.get("/id", headers={"X-Request-ID": "request-0001"})
        assert get_request_id() is None

    async def test_websocket_handshake_gets_an_id(self) -> None:
        inner = _Recorder()
        await _call_websocket(EdgeMiddleware(inner, **_edge_options(["*"])))
        [(state_id, context_id)] = inner.calls
        assert state_id is not None
        assert context_id == state_id


class TestAccessLog:
    """One access line per request; a path longer than the bound is cut, with its length."""

    @pytest.mark.parametrize(
        ("length", "cut"), [(LOGGED_PATH_MAX, False), (LOGGED_PATH_MAX + 1, True), (60_000, True)]
    )
    async def test_the_logged_path_is_bounded(
        self, caplog: pytest.LogCaptureFixture, length: int, cut: bool
    ) -> None:
        path = "/" + "p" * (length - 1)
        caplog.set_level(logging.INFO, logger="access")
        async with _client(_app(_edge())) as client:
            assert (await client.get(path)).status_code == 404
        [record] = [r for r in caplog.records if r.name == "access"]
        logged = record.__dict__["path"]
        if cut:
            assert logged == f"{path[:LOGGED_PATH_MAX]}... ({length:,} characters)"
        else:
            assert logged == path
        assert record.getMessage() == f"GET {logged} 404"

    async def test_an_unhandled_errors_line_bounds_the_path_too(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        async def fail(request: Request) -> JSONResponse:
            raise RuntimeError("boom")

        app = Starlette(
            routes=[Route("/{rest:path}", fail)],
            middleware=[_edge(), Middleware(UnhandledErrorMiddleware)],
        )
        path = "/" + "p" * 59_999
        caplog.set_level(logging.ERROR, logger="common.errors")
        async with _client(app) as client:
            assert (await client.get(path)).status_code == 500
        [record] = [r for r in caplog.records if r.name == "common.errors"]
        cut = f"{path[:LOGGED_PATH_MAX]}... (60,000 characters)"
        assert record.getMessage() == f"unhandled error on GET {cut}"


class TestBodySizeLimitMiddleware:
    """Bodies over the limit get 413 problem+json, whether declared or streamed."""

    @pytest.fixture
    def app(self) -> Starlette:
        return _app(_edge(), Middleware(BodySizeLimitMiddleware, max_bytes=MAX_BYTES))

    async def test_body_within_the_limit_passes(self, app: Starlette) -> None:
        async with _client(app) as client:
            response = await client.post("/body", content=b"x" * MAX_BYTES)
        assert response.status_code == 200
        assert response.json() == {"received": MAX_BYTES}

    async def test_declared_content_length_over_the_limit_is_413(self, app: Starlette) -> None:
        async with _client(app) as client:
            response = await client.post("/body", content=b"x" * (MAX_BYTES + 1))
        assert response.status_code == 413
        assert response.headers["content-type"] == "application/problem+json"
        assert response.headers["connection"] == "close"
        body = response.json()
        assert body["status"] == 413
        assert body["request_id"] == response.headers["x-request-id"]

    async def test_streamed_body_over_the_limit_is_413(self, app: Starlette) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b"x" * 400

        async with _client(app) as client:
            response = await client.post("/body", content=chunks())
        assert "content-length" not in response.request.headers
        # Raised as an HTTPException while the app reads the body, so the app's
        # own handler renders it (problem+json in ours: tests/integration/test_errors.py).
        assert response.status_code == 413
        assert response.headers["connection"] == "close"
        assert response.text == f"The request body exceeds {MAX_BYTES} bytes."

    async def test_overflow_after_the_response_started_is_not_answered_twice(self) -> None:
        middleware = BodySizeLimitMiddleware(_respond_then_read, max_bytes=MAX_BYTES)
        incoming = [
            {"type": "http.request", "body": b"x" * 800, "more_body": True},
            {"type": "http.request", "body": b"x" * 800, "more_body": False},
        ]
        sent: list[Message] = []

        async def receive() -> Message:
            return incoming.pop(0)

        async def send(message: Message) -> None:
            sent.append(message)

        scope: Scope = {"type": "http", "method": "POST", "path": "/", "headers": []}
        # The 200 is already on the wire: the error propagates to the server,
        # which drops the connection, rather than a second answer being sent.
        with pytest.raises(Exception):  # noqa: B017, PT011
            await middleware(scope, receive, send)
        assert [m["type"] for m in sent] == ["http.response.start"]
        assert sent[0]["status"] == 200


class TestHostCheck:
    """Only allowed Host headers pass; others get 400 problem+json."""

    @pytest.fixture
    def app(self) -> Starlette:
        return _app(_edge(allowed_hosts=["api.example.com", "*.example.org"]))

    @pytest.mark.parametrize(
        "base_url",
        ["http://api.example.com", "http://API.Example.com:8080", "http://eu.example.org"],
    )
    async def test_allowed_host_passes(self, app: Starlette, base_url: str) -> None:
        async with _client(app, base_url=base_url) as client:
            response = await client.get("/")
        assert response.status_code == 200

    @pytest.mark.parametrize(
        "base_url",
        [
            "http://evil.com",
            "http://api.example.com.evil.com",
            "http://example.org",
            "http://xexample.org",
        ],
    )
    async def test_other_host_is_400_problem(self, app: Starlette, base_url: str) -> None:
        async with _client(app, base_url=base_url) as client:
            response = await client.get("/")
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        body = response.json()
        assert body["title"] == "Invalid host header"
        assert body["request_id"] == response.headers["x-request-id"]

    async def test_wildcard_allows_any_host(self) -> None:
        app = _app(Middleware(HostCheckMiddleware, allowed_hosts=["*"]))
        async with _client(app, base_url="http://anything.test") as client:
            response = await client.get("/")
        assert response.status_code == 200

    async def test_websocket_to_other_host_is_closed_with_1008(self) -> None:
        inner = _Recorder()
        middleware = HostCheckMiddleware(inner, allowed_hosts=["api.example.com"])
        sent = await _call_websocket(middleware, host="evil.com")
        assert inner.calls == []
        assert sent == [{"type": "websocket.close", "code": 1008, "reason": "Invalid host header"}]

    async def test_edge_closes_a_websocket_to_other_host_with_1008(self) -> None:
        inner = _Recorder()
        edge = EdgeMiddleware(inner, **_edge_options(["api.example.com"]))
        sent = await _call_websocket(edge, host="evil.com")
        assert inner.calls == []
        assert sent == [{"type": "websocket.close", "code": 1008, "reason": "Invalid host header"}]

    async def test_websocket_to_allowed_host_passes(self) -> None:
        inner = _Recorder()
        middleware = HostCheckMiddleware(inner, allowed_hosts=["api.example.com"])
        await _call_websocket(middleware, host="api.example.com")
        assert len(inner.calls) == 1

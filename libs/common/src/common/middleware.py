"""Pure ASGI middleware for the HTTP edge: request id, host check, security
headers, timing and access log (one layer: `EdgeMiddleware`), CORS, body size
limit, and the last-resort 500.

Each class follows Starlette's own middleware: `__init__(app, ...)` and
`async __call__(scope, receive, send)`, passing through scope types it does
not handle. None of them holds business logic.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterable

from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from common.errors import problem
from common.metrics import HttpMetrics
from common.request_context import reset_request_id, set_request_id, valid_request_id
from common.settings import CommonSettings

REQUEST_ID_HEADER = "X-Request-ID"
# Where a request's scope keeps the headers decided after its handler returned.
_LATE_HEADERS = "common.late_headers"
_VARY_ORIGIN = (b"vary", b"Origin")
# Set by `EdgeMiddleware` in a request's scope: whether its response has started.
_RESPONSE_STARTED = "common.response_started"
_access_logger = logging.getLogger("access")
# The most characters of a request's path a log line writes (`logged_path`).
LOGGED_PATH_MAX = 1024
_LENGTH_FRAMED = frozenset({"1.0", "1.1"})
_error_logger = logging.getLogger("common.errors")


def logged_path(path: str) -> str:
    """A request's path as a log line carries it: cut after `LOGGED_PATH_MAX` characters,
    with its length noted. uvicorn takes paths of tens of KiB (60,000 characters pass)."""
    if len(path) <= LOGGED_PATH_MAX:
        return path
    return f"{path[:LOGGED_PATH_MAX]}... ({len(path):,} characters)"


def add_late_headers(scope: Scope, headers: dict[str, str]) -> None:
    """Have this request's response carry `headers`, though its handler already built it.

    For what is known only once the handler returned (a rate limit counted
    alongside it); `EdgeMiddleware` adds them as the response starts.
    """
    late = scope.setdefault(_LATE_HEADERS, [])
    late.extend((name.lower().encode(), value.encode()) for name, value in headers.items())


def header_value(scope: Scope, name: bytes) -> str | None:
    """The first request header `name` (lower-case bytes), without building a Headers object."""
    for key, value in scope["headers"]:
        if key == name:
            return str(value.decode("latin-1"))
    return None


class HostCheckMiddleware:
    """Reject requests whose Host header is not allowed (400, problem+json).

    Starlette's TrustedHostMiddleware, answering in our error format; `*.x.com`
    allows subdomains, `*` allows everything. `EdgeMiddleware` checks with it
    (`allows`); realtime's socket route, which bypasses the HTTP stack, wraps it.
    """

    def __init__(self, app: ASGIApp, *, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        hosts = list(allowed_hosts)
        self.allow_any = "*" in hosts
        self.exact = frozenset(h.lower() for h in hosts if not h.startswith("*."))
        self.suffixes = tuple(h[1:].lower() for h in hosts if h.startswith("*."))

    def allows(self, scope: Scope) -> bool:
        """Whether the request's Host (without the port) is one of the allowed."""
        if self.allow_any:
            return True
        host = (header_value(scope, b"host") or "").split(":")[0].lower()
        return host in self.exact or bool(self.suffixes and host.endswith(self.suffixes))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket") or self.allows(scope):
            await self.app(scope, receive, send)
            return
        await self.refuse(scope, receive, send)

    @staticmethod
    async def refuse(scope: Scope, receive: Receive, send: Send) -> None:
        """Answer a request to a host not allowed: 400 problem+json, or close a socket (1008)."""
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": "Invalid host header"})
            return
        response = problem(
            400, title="Invalid host header", detail="The Host header is not allowed."
        )
        await response(scope, receive, send)


class EdgeMiddleware:
    """The HTTP edge in one layer, with one `send` wrapper.

    In order, for each request:

    - **request id**: a well-formed incoming `X-Request-ID` is kept, anything
      else replaced by a new one; it is in `scope["state"]`, in the logging
      context while the request runs, and echoed in the response;
    - **host check** (`HostCheckMiddleware.allows`): another Host gets a 400
      problem+json (a WebSocket is closed with 1008), which carries the headers
      below and is logged like any answer;
    - **response headers**, added as the response starts: the security headers
      (HSTS only when `hsts`: production, behind HTTPS; on an HTML page also
      Referrer-Policy, Cross-Origin-Opener-Policy and Permissions-Policy),
      except one the response set itself (the docs' CSP);
      `Server-Timing: app;dur=<ms>`; `X-Request-ID`; and those decided after
      the handler returned (`add_late_headers`);
    - **access log**: one JSON line per request with status and duration (a
      path longer than `LOGGED_PATH_MAX` cut, its length noted)
      (`skip_paths` only when they succeed), and with `metrics` the HTTP metrics
      from the same timing.

    One layer rather than four (request id, access log, security headers, host
    check): each layer wrapped `send` in a coroutine of its own, a call per
    ASGI message.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        allowed_hosts: Iterable[str],
        content_security_policy: str,
        hsts: bool,
        skip_paths: Iterable[str] = (),
        metrics: HttpMetrics | None = None,
    ) -> None:
        self.app = app
        self.hosts = HostCheckMiddleware(app, allowed_hosts=allowed_hosts)
        headers = {
            "X-Content-Type-Options": "nosniff",
            "X-Frame-Options": "DENY",
            "Content-Security-Policy": content_security_policy,
        }
        if hsts:
            headers["Strict-Transport-Security"] = "max-age=63072000; includeSubDomains"
        # Only a document a browser renders (an HTML page: the docs) acts on these;
        # on a JSON answer they were three more header lines to write and parse.
        document = {
            "Referrer-Policy": "strict-origin-when-cross-origin",
            "Cross-Origin-Opener-Policy": "same-origin",
            "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
        }
        # Encoded once; a response that sets one itself (the docs' CSP) keeps its own.
        self.security_headers = [
            (name.lower().encode(), value.encode()) for name, value in headers.items()
        ]
        self.document_headers = self.security_headers + [
            (name.lower().encode(), value.encode()) for name, value in document.items()
        ]
        self.skip_paths = frozenset(skip_paths)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind not in ("http", "websocket"):
            if kind == "lifespan" and self.metrics is not None:
                send = self._flushing_at_shutdown(send, self.metrics)
            await self.app(scope, receive, send)
            return
        request_id = valid_request_id(header_value(scope, b"x-request-id")) or os.urandom(16).hex()
        scope.setdefault("state", {})["request_id"] = request_id
        token = set_request_id(request_id)
        try:
            if kind == "websocket":
                if self.hosts.allows(scope):
                    await self.app(scope, receive, send)
                else:
                    await self.hosts.refuse(scope, receive, send)
                return
            await self._http(scope, receive, send, request_id)
        finally:
            reset_request_id(token)

    @staticmethod
    def _flushing_at_shutdown(send: Send, metrics: HttpMetrics) -> Send:
        # The requests counted since the last flush, written before the process ends.
        async def send_flushing(message: Message) -> None:
            if message["type"].startswith("lifespan.shutdown."):
                metrics.flush()
            await send(message)

        return send_flushing

    async def _http(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        started = time.perf_counter()
        status = 500
        security_headers, document_headers = self.security_headers, self.document_headers
        id_header = (b"x-request-id", request_id.encode())

        async def send_from_edge(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                scope[_RESPONSE_STARTED] = True
                status = message["status"]
                elapsed = (time.perf_counter() - started) * 1000
                own = message.get("headers", ())
                present = set()
                added = security_headers
                for name, value in own:
                    name = name.lower()
                    present.add(name)
                    if name == b"content-type" and value.startswith(b"text/html"):
                        added = document_headers
                message["headers"] = [
                    *own,
                    *(header for header in added if header[0] not in present),
                    (b"server-timing", f"app;dur={elapsed:.1f}".encode()),
                    id_header,
                    *scope.get(_LATE_HEADERS, ()),
                ]
            await send(message)

        scope[_RESPONSE_STARTED] = False
        if self.metrics is not None:
            self.metrics.started()
        try:
            if self.hosts.allows(scope):
                await self.app(scope, receive, send_from_edge)
            else:
                await self.hosts.refuse(scope, receive, send_from_edge)
        finally:
            seconds = time.perf_counter() - started
            if self.metrics is not None:
                self.metrics.finished(scope, status, seconds)
            if scope["path"] not in self.skip_paths or status >= 400:
                client = scope.get("client")
                path = logged_path(scope["path"])
                _access_logger.info(
                    "%s %s %d",
                    scope["method"],
                    path,
                    status,
                    extra={
                        "method": scope["method"],
                        "path": path,
                        "status": status,
                        "duration_ms": round(seconds * 1000, 2),
                        "client": client[0] if client else None,
                        "http_version": scope.get("http_version"),
                    },
                )


class _TrackingSend:
    """`send`, noting whether the response has started: after that, an error can only be raised."""

    __slots__ = ("_send", "response_started")

    def __init__(self, send: Send) -> None:
        self._send = send
        self.response_started = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.response_started = True
        await self._send(message)


class _BodyTooLarge(HTTPException):
    # An HTTPException, as Starlette's own body limit raises: FastAPI turns any
    # other error raised while reading the body into "400 error parsing the
    # body", but re-raises this to the app's handler, which renders the 413.
    def __init__(self, max_bytes: int) -> None:
        super().__init__(
            413,
            detail=f"The request body exceeds {max_bytes} bytes.",
            headers={"Connection": "close"},
        )


class BodySizeLimitMiddleware:
    """Answer 413 when a request body exceeds `max_bytes`, declared or streamed."""

    def __init__(self, app: ASGIApp, *, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = header_value(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._reject(scope, receive, send)
            return
        if scope.get("http_version") in _LENGTH_FRAMED and not header_value(
            scope, b"transfer-encoding"
        ):
            # HTTP/1 without chunking: the server reads at most the declared
            # length (none: 0), so there is nothing left to count.
            await self.app(scope, receive, send)
            return
        received = 0
        tracked = _TrackingSend(send)

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _BodyTooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, tracked)
        except _BodyTooLarge:
            if tracked.response_started:
                raise
            await self._reject(scope, receive, send)

    async def _reject(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = problem(
            413,
            detail=f"The request body exceeds {self.max_bytes} bytes.",
            headers={"Connection": "close"},
        )
        await response(scope, receive, send)


class UnhandledErrorMiddleware:
    """Turn an exception that escaped every handler into a problem+json 500.

    It sits inside the request-id middleware so the 500 carries the id and the
    security headers; the traceback goes to the log, never into the response.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Behind `EdgeMiddleware`, which notes in the scope whether the response
        # started, `send` needs no wrapper of its own here.
        tracked = None if _RESPONSE_STARTED in scope else _TrackingSend(send)
        try:
            await self.app(scope, receive, tracked or send)
        except Exception:
            _error_logger.exception(
                "unhandled error on %s %s", scope["method"], logged_path(scope["path"])
            )
            started = tracked.response_started if tracked else scope[_RESPONSE_STARTED]
            if started:
                raise
            response = problem(
                500,
                detail="An unexpected error occurred; quote the request id when reporting it.",
            )
            await response(scope, receive, send)


class ProblemCORSMiddleware(CORSMiddleware):
    """Starlette's CORS middleware, answering a rejected preflight as problem+json.

    A request without `Origin` (not a CORS request) only gets `Vary: Origin`,
    as Starlette would add, without Starlette's per-request header parsing.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or header_value(scope, b"origin") is not None:
            await super().__call__(scope, receive, send)
            return
        # Through the edge's own `send` wrapper, not one of ours: a field line
        # of its own, which HTTP joins with any other `Vary` (RFC 9110, 5.3).
        scope.setdefault(_LATE_HEADERS, []).append(_VARY_ORIGIN)
        await self.app(scope, receive, send)

    def preflight_response(self, request_headers: Headers) -> Response:
        response = super().preflight_response(request_headers)
        if response.status_code < 400:
            return response
        reason = bytes(response.body).decode(errors="replace")
        return problem(response.status_code, title="CORS preflight rejected", detail=reason)


def add_edge_middleware(app: Starlette, settings: CommonSettings, *, csp: str) -> None:
    """The outer layer every web service shares, added after the service's own.

    `EdgeMiddleware`: request id, host check, security headers, timing, access
    log and HTTP metrics. Starlette wraps the last added outermost, so a
    service adds its inner layers first.

    The real client address is the server's work, not a layer here: uvicorn
    (under gunicorn, `common.gunicorn` gives it `FORWARDED_ALLOW_IPS`; its CLI
    reads the same variable) believes `X-Forwarded-For` and
    `X-Forwarded-Proto` only from those addresses, before the app sees the
    request. A second pass in the app read the headers again on every request.
    """
    app.add_middleware(
        EdgeMiddleware,
        allowed_hosts=settings.allowed_hosts,
        content_security_policy=csp,
        hsts=settings.is_production,
        skip_paths={"/health/live", "/health/ready", "/metrics"},
        metrics=HttpMetrics(),
    )

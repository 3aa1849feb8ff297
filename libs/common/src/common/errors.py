"""Errors the services raise, and the one handler that renders them as problem+json.

Every error answer is `application/problem+json` (RFC 9457) with `type`,
`title`, `status`, `detail` and `request_id`; validation errors add `errors`.

    AppError                 base: carries status, title and type
    ├── NotFound             404
    ├── Conflict             409
    ├── Unauthorized         401, with WWW-Authenticate: Bearer
    ├── Forbidden            403
    ├── TooManyRequests      429, with Retry-After
    └── ServiceUnavailable   503

Domains subclass these in their own `errors.py`. Services raise; handlers render.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from common.request_context import get_request_id

PROBLEM_JSON = "application/problem+json"


class AppError(Exception):
    """A failure the client can act on; subclasses set the status and title.

    A subclass declares them as class keywords, in one line:
    `class JobNotFound(NotFound, title="Job not found"):`.
    """

    status: int = 400
    title: str = "Bad request"
    type: str = "about:blank"
    headers: Mapping[str, str] | None = None
    # Seconds for a Retry-After header on every instance; `None`: no header.
    retry_after: int | None = None

    def __init_subclass__(
        cls,
        *,
        status: int | None = None,
        title: str | None = None,
        retry_after: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init_subclass__(**kwargs)
        if status is not None:
            cls.status = status
        if title is not None:
            cls.title = title
        if retry_after is not None:
            cls.retry_after = retry_after

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
        retry_after: int | None = None,
    ):
        self.detail = detail or self.title
        if headers is not None:
            self.headers = headers
        if retry_after is not None:
            self.retry_after = retry_after
        if self.retry_after is not None:
            retry = {"Retry-After": str(max(1, self.retry_after))}
            self.headers = {**(self.headers or {}), **retry}
        # Further problem members, such as `errors` for a validation failure.
        self.extra = extra
        super().__init__(self.detail)


class NotFound(AppError, status=404, title="Not found"):
    """Raised when a resource does not exist or is not the caller's to see."""


class Conflict(AppError, status=409, title="Conflict"):
    """Raised when a request conflicts with the resource's current state."""


class Unauthorized(AppError, status=401, title="Not authenticated"):
    """Raised when credentials are missing, invalid or expired."""

    headers: Mapping[str, str] | None = {"WWW-Authenticate": "Bearer"}


class Forbidden(AppError, status=403, title="Forbidden"):
    """Raised when the caller is known but not allowed."""


class TooManyRequests(AppError, status=429, title="Too many requests", retry_after=1):
    """Raised when a limit is exceeded; `retry_after` seconds go into Retry-After."""


class ServiceUnavailable(AppError, status=503, title="Service unavailable"):
    """Raised when a dependency (Redis, the hashing process) cannot serve the request now."""


def problem(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    headers: Mapping[str, str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> JSONResponse:
    """Build a problem+json response carrying the current request id."""
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": type_,
        "title": title or phrase,
        "status": status,
        "detail": detail or title or phrase,
        "request_id": get_request_id(),
    }
    if extra:
        body.update(extra)
    return JSONResponse(
        body, status_code=status, headers=dict(headers or {}), media_type=PROBLEM_JSON
    )


async def _app_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, AppError)
    return problem(
        exc.status,
        title=exc.title,
        detail=exc.detail,
        type_=exc.type,
        headers=exc.headers,
        extra=exc.extra,
    )


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400 and isinstance(exc.__cause__, ValueError):
        # FastAPI answers 400 for a JSON body that is not UTF-8 but 422 for one
        # that is not JSON; both are the same client mistake, documented as 422.
        errors = [{"loc": ["body"], "msg": "Body is not valid UTF-8 JSON", "type": "json_invalid"}]
        return problem(
            422, title="Validation failed", detail="Invalid request: body", extra={"errors": errors}
        )
    detail = exc.detail if isinstance(exc.detail, str) else None
    return problem(exc.status_code, detail=detail, headers=exc.headers)


def field_errors(errors: Any) -> list[dict[str, Any]]:
    """Pydantic errors as `{loc, msg, type}`, without the rejected input (it may be a secret)."""
    return [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in errors
    ]


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = field_errors(exc.errors())
    fields = ", ".join(".".join(str(p) for p in e["loc"]) for e in errors)
    return problem(
        422,
        title="Validation failed",
        detail=f"Invalid request: {fields}" if fields else "Invalid request",
        extra={"errors": errors},
    )


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of `app` as problem+json."""
    app.add_exception_handler(AppError, _app_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    # Unhandled exceptions are rendered by `common.middleware.UnhandledErrorMiddleware`,
    # inside the request-id middleware, so a 500 still carries the id and headers.

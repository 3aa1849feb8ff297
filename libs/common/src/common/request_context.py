"""The current request's id, kept in a ContextVar so logs and errors can name it."""

from __future__ import annotations

import re
from contextvars import ContextVar

_request_id: ContextVar[str | None] = ContextVar("request_id", default=None)
# Accept an id from outside only when it cannot smuggle anything into our logs.
_VALID_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{8,128}")


def valid_request_id(value: object) -> str | None:
    """`value` if it is a well-formed request id (from a header or a message), else None."""
    if isinstance(value, str) and _VALID_REQUEST_ID.fullmatch(value):
        return value
    return None


def get_request_id() -> str | None:
    """The id of the request being handled, or None outside a request."""
    return _request_id.get()


def set_request_id(value: str | None) -> object:
    """Set the id for the current context; returns a token for `reset_request_id`."""
    return _request_id.set(value)


def reset_request_id(token: object) -> None:
    """Restore the id that was current before `set_request_id`."""
    _request_id.reset(token)  # type: ignore[arg-type]

"""No credential in the realtime service's logs: query strings and credential headers.

uvicorn names a WebSocket handshake with its query string (`"WebSocket
/ws?ticket=..." [accepted]` or `403`), and so do its access line and, at
DEBUG, the websockets library's request line. A refused handshake never
consumes its ticket, so such a line would hold a ticket that still works.
At DEBUG websockets also logs every handshake header, the bearer token's
`Authorization` among them. `CredentialFilter` cuts every logged path
argument at its `?` and replaces the value of those header lines.
"""

from __future__ import annotations

import logging

# The loggers whose records name request paths (the websockets library logs through
# uvicorn.error; gunicorn's access log is only used by its sync workers, never here).
PATH_LOGGERS = ("uvicorn.error", "uvicorn.access", "gunicorn.access")


# websockets' DEBUG lines for a request or response header: "< name: value", "> name: value".
_HEADER_LINES = frozenset({"< %s: %s", "> %s: %s"})
_SECRET_HEADERS = frozenset({"authorization", "cookie", "proxy-authorization", "set-cookie"})
REDACTED = "[redacted]"


class CredentialFilter(logging.Filter):
    """Drop the query string from every path (`/...?...`) among a record's arguments,
    and the value of a credential header line."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if (
            record.msg in _HEADER_LINES
            and isinstance(args, tuple)
            and len(args) == 2
            and str(args[0]).lower() in _SECRET_HEADERS
        ):
            record.args = (args[0], REDACTED)
        elif isinstance(args, tuple) and any(_has_query(arg) for arg in args):
            record.args = tuple(_without_query(arg) for arg in args)
        if isinstance(record.msg, str) and "?" in record.msg and not record.args:
            record.msg = " ".join(_cut(word) for word in record.msg.split(" "))
        return True


def _has_query(value: object) -> bool:
    return isinstance(value, str) and value.startswith("/") and "?" in value


def _without_query(value: object) -> object:
    return _cut(value) if isinstance(value, str) else value


def _cut(text: str) -> str:
    if text.startswith(("/", '"/')) and "?" in text:
        path, _, _ = text.partition("?")
        return path + '"' * (text.startswith('"') and text.endswith('"'))
    return text


def strip_credentials() -> None:
    """Install `CredentialFilter` on the loggers that name request paths (idempotent)."""
    for name in PATH_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, CredentialFilter) for existing in logger.filters):
            logger.addFilter(CredentialFilter())

"""No query string in the realtime service's logs: a `/ws?ticket=` URL carries a credential.

uvicorn names a WebSocket handshake with its query string (`"WebSocket
/ws?ticket=..." [accepted]` or `403`), and so do its access line and, at
DEBUG, the websockets library's request line. A refused handshake never
consumes its ticket, so such a line would hold a ticket that still works.
`QueryStringFilter` cuts every logged path argument at its `?`.
"""

from __future__ import annotations

import logging

# The loggers whose records name request paths (the websockets library logs through
# uvicorn.error; gunicorn's access log is only used by its sync workers, never here).
PATH_LOGGERS = ("uvicorn.error", "uvicorn.access", "gunicorn.access")


class QueryStringFilter(logging.Filter):
    """Drop the query string from every path (`/...?...`) among a record's arguments."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and any(_has_query(arg) for arg in record.args):
            record.args = tuple(_without_query(arg) for arg in record.args)
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


def strip_query_strings() -> None:
    """Install `QueryStringFilter` on the loggers that name request paths (idempotent)."""
    for name in PATH_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(existing, QueryStringFilter) for existing in logger.filters):
            logger.addFilter(QueryStringFilter())

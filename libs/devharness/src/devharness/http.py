"""Keep-alive limits for an httpx client of a server this repository runs.

HTTP/1.1 cannot rule out one race (RFC 9112, 9.3.1 and 9.6): a server that
closes a connection idle for its keep-alive timeout (uvicorn's, set by
`GUNICORN_KEEPALIVE`, 5 s) may do so just as the client sends its next request
on it. The request is lost unread (the client sees a reset or an empty reply),
and a request that is not idempotent may not be sent again. A client avoids it
as a load balancer does: it drops a connection idle for less than the
server's timeout itself. httpx's default expiry, 5 s, is the server's own,
so a client whose event loop sees a response late (a loaded machine, a
test's loop busy with hundreds of requests) can reuse a connection the
server is closing at that moment.
"""

from __future__ import annotations

from typing import Any

import httpx

# Well under the servers' 5 s keep-alive timeout, even when the client's loop is late.
KEEPALIVE_EXPIRY = 2.0


def client_limits(**limits: Any) -> httpx.Limits:
    """httpx.Limits with `limits` and a keep-alive expiry under the server's timeout."""
    return httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY, **limits)

"""The gunicorn worker class: uvicorn's, minus resetting requests when a worker stops.

uvicorn's `Server.shutdown()` stops listening and, in the same event-loop
iteration, closes every connection that has not parsed a request yet. A
connection accepted a moment earlier, whose request is still in the socket
buffer or on the wire, is closed unread and its client sees a reset
(Kludex/uvicorn discussion 2315, PR 3124, unfixed in 0.54). Gunicorn stops
workers on every SIGHUP reload and every `max_requests` recycle, so under load
each of those dropped requests. This worker stops accepting first, gives
just-accepted connections a moment to deliver their request, and then shuts
down as uvicorn does, which lets every started request finish.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import uvicorn
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]

# How long a just-accepted connection may take to send its request once the
# worker is stopping; a client sends right after connecting, so this is ample.
FRESH_CONNECTION_GRACE = 0.5
_STEP = 0.005
_WORKER_BOOT_ERROR = 3  # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR


class _Server(uvicorn.Server):
    def _has_fresh_connections(self) -> bool:
        # An HTTP protocol's `cycle` stays None until its first request is parsed.
        return any(
            getattr(connection, "cycle", False) is None
            for connection in self.server_state.connections
        )

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()  # no new connections; uvicorn's own close() below is a no-op then
        # Nothing signals "request parsed", so look every few milliseconds.
        for _ in range(round(FRESH_CONNECTION_GRACE / _STEP)):
            if not self._has_fresh_connections():
                break
            await asyncio.sleep(_STEP)
        await super().shutdown(sockets)


class UvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """`uvicorn_worker.UvicornWorker` serving with `_Server`."""

    async def _serve(self) -> None:
        # As uvicorn_worker 0.4's `_serve`, with our server class.
        self.config.app = self.wsgi
        server = _Server(config=self.config)
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(_WORKER_BOOT_ERROR)

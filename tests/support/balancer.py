"""A TCP load balancer for tests, behaving like a platform's proxy during a rolling deploy.

It health-checks each backend's `/health/ready` every `check_interval` seconds
on a fresh connection and sends each NEW client connection to the next ready
backend (round robin). A connection is spliced to one backend for its whole
life, HTTP keep-alive and WebSocket alike: when the backend closes it, the
client's closes too, as with any TCP-level proxy. A backend that refuses the
connection is marked down and the next ready one is tried; nothing has been
forwarded yet, so that is always safe. A client connection that finds no
ready backend is closed without a byte (`unrouted` counts them).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from dataclasses import dataclass

import httpx

_CHUNK = 65536
CHECK_TIMEOUT = 1.0


@dataclass(eq=False)
class Backend:
    """One upstream server: its port, its last health check, the connections it was given."""

    port: int
    is_ready: bool = False
    connections: int = 0


class Balancer:
    """Listens on 127.0.0.1:`port` and spreads new connections over ready backends."""

    def __init__(self, *, check_interval: float = 0.1) -> None:
        self.check_interval = check_interval
        self.backends: list[Backend] = []
        self.unrouted = 0
        self.refused: Counter[int] = Counter()  # backend port -> connects it refused
        self._changed = asyncio.Condition()
        self._checkers: dict[Backend, asyncio.Task[None]] = {}
        self._pipes: set[asyncio.Task[None]] = set()
        self._next = 0
        self._server: asyncio.Server | None = None
        self._probe = httpx.AsyncClient(
            timeout=CHECK_TIMEOUT, limits=httpx.Limits(max_keepalive_connections=0)
        )

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        port: int = self._server.sockets[0].getsockname()[1]
        return port

    async def start(self) -> Balancer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    def add(self, port: int) -> Backend:
        """Start health-checking `port`; it gets connections once a check passes."""
        backend = Backend(port)
        self.backends.append(backend)
        self._checkers[backend] = asyncio.create_task(self._check_loop(backend))
        return backend

    async def remove(self, backend: Backend) -> None:
        """Stop checking `backend` and routing to it (its open connections stay)."""
        self.backends.remove(backend)
        checker = self._checkers.pop(backend)
        checker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await checker
        backend.is_ready = False

    async def wait_until(self, backend: Backend, *, is_ready: bool, within: float) -> None:
        """Return once the health checks have judged `backend` ready (or not ready)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: backend.is_ready is is_ready)

    async def close(self) -> None:
        """Stop listening and checking, and cut every spliced connection."""
        if self._server is not None:
            self._server.close()
        for backend in list(self.backends):
            await self.remove(backend)
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)
        await self._probe.aclose()

    async def _check_loop(self, backend: Backend) -> None:
        url = f"http://127.0.0.1:{backend.port}/health/ready"
        while True:
            try:
                is_ready = (await self._probe.get(url)).status_code == 200
            except httpx.TransportError:
                is_ready = False
            if is_ready is not backend.is_ready:
                backend.is_ready = is_ready
                async with self._changed:
                    self._changed.notify_all()
            await asyncio.sleep(self.check_interval)  # the check period, as a real LB's

    def _ready(self) -> list[Backend]:
        """The ready backends, starting one further along each time (round robin)."""
        ready = [backend for backend in self.backends if backend.is_ready]
        if not ready:
            return []
        self._next = (self._next + 1) % len(ready)
        return ready[self._next :] + ready[: self._next]

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for backend in self._ready():
            try:
                streams = await asyncio.open_connection("127.0.0.1", backend.port)
            except OSError:
                # Gone between two checks: take it out now, not at the next check.
                self.refused[backend.port] += 1
                backend.is_ready = False
                continue
            backend.connections += 1
            return streams
        return None

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._pipes.add(task)
        try:
            upstream = await self._connect()
            if upstream is None:
                self.unrouted += 1
                return
            backend_reader, backend_writer = upstream
            try:
                await asyncio.gather(_pipe(reader, backend_writer), _pipe(backend_reader, writer))
            finally:
                backend_writer.transport.abort()
        finally:
            writer.transport.abort()
            self._pipes.discard(task)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until EOF, then pass the EOF on (a half-close, so a last frame still gets out).

    A reset on either side aborts the other side too, so the peer sees a
    broken connection rather than a clean end it could take for a response.
    """
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except OSError:
        writer.transport.abort()

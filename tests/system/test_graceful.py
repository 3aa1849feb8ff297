"""Reloads and shutdowns of the real server lose no accepted request."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlencode

import httpx
import pytest

from devharness.polling import eventually
from tests.fixtures.servers import Credentials, RegisterUser, Server, ServerFactory

pytestmark = pytest.mark.system

CLIENTS = 6
MAX_REQUESTS_PER_CLIENT = 400
GRACEFUL_TIMEOUT = 10
DEADLINE = 20.0


@dataclass(frozen=True)
class Outcome:
    """One request of the load: its status, or the transport error instead."""

    path: str
    started: float
    finished: float
    status: int | None = None
    error: str | None = None

    @property
    def is_ok(self) -> bool:
        return self.status == 200


async def _client_loop(
    server: Server, credentials: Credentials, *, stop: asyncio.Event, outcomes: list[Outcome]
) -> None:
    # No keep-alive: every request opens its own connection. A pooled idle
    # connection that a retiring worker closes (uvicorn shuts idle ones at
    # once) makes the next request on it fail before the server ever saw it;
    # that is the client's race, not a lost request. New connections always
    # reach the listening socket, which the master and new workers keep open
    # across the reload, so no retry is needed.
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=10.0) as client:
        for number in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set():
                return
            path = "/v1/auth/token" if number % 4 == 3 else "/health/live"
            started = time.monotonic()
            try:
                if path == "/health/live":
                    response = await client.get(path)
                else:
                    response = await client.post(path, data=credentials.form)
            except httpx.TransportError as exc:
                outcomes.append(Outcome(path, started, time.monotonic(), error=repr(exc)))
            else:
                outcomes.append(
                    Outcome(path, started, time.monotonic(), status=response.status_code)
                )


def _tcp_queues(local_port: int, remote_port: int) -> tuple[int, int] | None:
    """(tx_queue, rx_queue) of the IPv4 socket local_port -> remote_port, from /proc/net/tcp."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote, queues = fields[1], fields[2], fields[4]
        if int(local.rsplit(":", 1)[1], 16) == local_port and (
            int(remote.rsplit(":", 1)[1], 16) == remote_port
        ):
            tx_queue, rx_queue = (int(value, 16) for value in queues.split(":"))
            return tx_queue, rx_queue
    return None


@dataclass
class _SlowRequest:
    """A POST /v1/auth/token written on its own connection (Argon2 makes it take a while)."""

    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    port: int
    client_port: int

    @classmethod
    async def send(cls, port: int, credentials: Credentials) -> _SlowRequest:
        body = urlencode(credentials.form).encode()
        head = (
            "POST /v1/auth/token HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\n"
            "Content-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + body)
        await writer.drain()
        return cls(reader, writer, port, writer.get_extra_info("sockname")[1])

    def is_read_by_server(self) -> bool:
        """Whether the server process has read the whole request off its socket.

        Our side has no unacknowledged bytes, and the server's side has none
        waiting (or is gone): the worker took the request, so it is in flight.
        """
        ours = _tcp_queues(self.client_port, self.port)
        theirs = _tcp_queues(self.port, self.client_port)
        return ours is not None and ours[0] == 0 and (theirs is None or theirs[1] == 0)

    async def response(self) -> tuple[int, float]:
        """The status code, and when the answer arrived (time.monotonic())."""
        try:
            raw = await asyncio.wait_for(self.reader.read(), timeout=DEADLINE)
        finally:
            self.writer.close()
        arrived = time.monotonic()
        status_line = raw.split(b"\r\n", 1)[0].decode()
        assert status_line.startswith("HTTP/1.1 "), raw
        return int(status_line.split()[1]), arrived


class TestReloadAndShutdownUnderLoad:
    """SIGHUP swaps the workers and SIGTERM stops the server without failing a request."""

    async def test_no_request_fails_across_reload_and_shutdown(
        self, server_factory: ServerFactory, register_user: RegisterUser
    ) -> None:
        server = await server_factory(GUNICORN_GRACEFUL_TIMEOUT=str(GRACEFUL_TIMEOUT))
        credentials = await register_user(server)
        stop = asyncio.Event()
        outcomes: list[Outcome] = []
        clients = [
            asyncio.create_task(_client_loop(server, credentials, stop=stop, outcomes=outcomes))
            for _ in range(CLIENTS)
        ]
        try:
            await eventually(lambda: len(outcomes) >= 30, within=DEADLINE, interval=0.002)
            old_workers = server.worker_pids()
            assert len(old_workers) == 2, old_workers

            sighup_at = time.monotonic()
            server.process.send_signal(signal.SIGHUP)

            def is_replaced() -> bool:
                workers = server.worker_pids()
                return len(workers) == 2 and not workers & old_workers

            await eventually(is_replaced, within=DEADLINE, interval=0.002)
            # Only the new workers are left, so whatever completes from now on they served.
            after_reload = len(outcomes)
            await eventually(
                lambda: sum(o.is_ok for o in outcomes[after_reload:]) >= 30,
                within=DEADLINE,
                interval=0.002,
            )

            # No new requests from now on: after SIGTERM the listening socket
            # closes, and a connection it never accepted is refused by design.
            stop.set()
            slow = [await _SlowRequest.send(server.port, credentials) for _ in range(3)]
            # Polled every few milliseconds: SIGTERM must come while they are in flight.
            await eventually(
                lambda: all(request.is_read_by_server() for request in slow),
                within=DEADLINE,
                interval=0.002,
            )
            sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            answers = await asyncio.gather(*(request.response() for request in slow))
            await asyncio.wait_for(asyncio.gather(*clients), timeout=DEADLINE)
        finally:
            stop.set()
            for task in clients:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*clients)

        assert [status for status, _ in answers] == [200, 200, 200]
        assert any(arrived > sigterm_at for _, arrived in answers), "none was in flight"
        failures = [outcome for outcome in outcomes if not outcome.is_ok]
        assert failures == [], f"SIGHUP at {sighup_at:.3f}, SIGTERM at {sigterm_at:.3f}"
        assert len(outcomes) >= 60
        assert {o.path for o in outcomes} == {"/health/live", "/v1/auth/token"}
        assert await server.wait_exit(GRACEFUL_TIMEOUT) == 0


class TestDrain:
    """With SHUTDOWN_DRAIN_SECONDS, SIGTERM first fails readiness while the worker serves."""

    async def test_ready_fails_and_live_answers_until_the_drain_ends(
        self, server_factory: ServerFactory
    ) -> None:
        drain_seconds = 3
        server = await server_factory(
            WEB_CONCURRENCY="1", SHUTDOWN_DRAIN_SECONDS=str(drain_seconds)
        )
        async with httpx.AsyncClient(base_url=server.base_url, timeout=5.0) as client:
            before = await client.get("/health/ready")
            assert before.status_code == 200, before.text
            sigterm_at = time.monotonic()
            server.process.send_signal(signal.SIGTERM)

            ready = before
            deadline = sigterm_at + drain_seconds
            while ready.status_code == 200 and time.monotonic() < deadline:
                ready = await client.get("/health/ready")
            assert ready.status_code == 503, ready.text
            assert "draining" in ready.json()["failing"]
            live = await client.get("/health/live")
            assert live.status_code == 200
            # Same keep-alive connection throughout.
            addresses = {
                response.extensions["network_stream"].get_extra_info("client_addr")
                for response in (before, ready, live)
            }
            assert len(addresses) == 1, addresses

        async with httpx.AsyncClient(base_url=server.base_url, timeout=5.0) as fresh:
            ready = await fresh.get("/health/ready")
            assert ready.status_code == 503, ready.text
            assert "draining" in ready.json()["failing"]
            assert (await fresh.get("/health/live")).status_code == 200
        assert time.monotonic() - sigterm_at < drain_seconds, "checked after the drain"

        assert await server.wait_exit(drain_seconds + GRACEFUL_TIMEOUT) == 0
        assert time.monotonic() - sigterm_at >= drain_seconds

"""A load-generating WebSocket client process for the fan-out benchmark.

Run as `python -m bench.fanout_client`; it takes one JSON command per stdin
line and answers each with one JSON line on stdout:

- `{"cmd": "connect", "port": p, "source_ip": ip, "tokens": [...], "host": h}` opens one
  socket per token (each waits for its first frame, the server's hello);
- `{"cmd": "reset"}` zeroes the counters; `{"cmd": "report"}` returns the
  frames counted since, a latency histogram and how many sockets were closed;
- `{"cmd": "close"}` closes every socket and exits.

The sockets are a minimal RFC 6455 client on a raw asyncio `Protocol`: no
per-frame task, no UTF-8 decode, no JSON parse; an event's latency is read
from the `"sent":<unix time>` the publisher put in its data. Each frame costs
the client a few microseconds, so thousands of sockets in one process keep up
with the server under test.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any, cast

import uvloop

# Latency histogram: 0.1 ms buckets up to 10 s (the last bucket holds anything slower).
BUCKETS_PER_SECOND = 10_000
_LAST_BUCKET = 10 * BUCKETS_PER_SECOND
_SENT = b'"sent":'
# Handshakes in flight per process: a server worker's Redis pool holds 100 connections.
_CONNECT_CONCURRENCY = 20
_CONNECT_TIMEOUT = 30.0


class _Stats:
    """Counters shared by every socket of this process."""

    def __init__(self) -> None:
        self.reset()
        self.closed = 0

    def reset(self) -> None:
        self.delivered = 0
        self.histogram = [0] * (_LAST_BUCKET + 1)
        self.closed_since = 0

    def report(self) -> dict[str, Any]:
        hist = {str(i): n for i, n in enumerate(self.histogram) if n}
        return {
            "delivered": self.delivered,
            "hist": hist,
            "closed": self.closed_since,
            "closed_total": self.closed,
        }


class _Socket(asyncio.Protocol):
    """One WebSocket: handshake, then count event frames and answer pings."""

    def __init__(self, stats: _Stats, request: bytes, ready: asyncio.Future[None]) -> None:
        self._stats = stats
        self._request = request
        self._ready = ready
        self._buffer = b""
        self._upgraded = False
        self.transport: asyncio.Transport | None = None
        self.close_code: int | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast("asyncio.Transport", transport)  # uvloop's is not a subclass
        self.transport.write(self._request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._ready.done():
            self._ready.set_exception(ConnectionError(f"closed during handshake: {exc}"))
        elif self.close_code is None:
            self.close_code = 1006
            self._count_close()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer + data if self._buffer else data
        if not self._upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                self._buffer = buffer
                return
            if not buffer.startswith(b"HTTP/1.1 101"):
                self._fail(buffer[: buffer.find(b"\r\n")].decode(errors="replace"))
                return
            self._upgraded = True
            buffer = buffer[end + 4 :]
        self._buffer = self._frames(buffer)

    def _frames(self, buffer: bytes) -> bytes:
        stats = self._stats
        size = len(buffer)
        pos = 0
        while size - pos >= 2:
            opcode = buffer[pos] & 0x0F
            length = buffer[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            if opcode == 1:
                at = buffer.find(_SENT, start, end)
                if at >= 0:
                    stop = buffer.find(b"}", at, end)
                    latency = time.time() - float(buffer[at + 7 : stop])
                    stats.delivered += 1
                    bucket = int(latency * BUCKETS_PER_SECOND)
                    stats.histogram[min(max(bucket, 0), _LAST_BUCKET)] += 1
                elif not self._ready.done():
                    self._ready.set_result(None)  # the hello
            elif opcode == 9:
                self._write_frame(0x8A, buffer[start:end])  # pong
            elif opcode == 8:
                code = int.from_bytes(buffer[start : start + 2], "big") if length >= 2 else 1005
                self._closed_by_server(code)
                return b""
            pos = end
        return buffer[pos:]

    def _write_frame(self, head: int, payload: bytes) -> None:
        # Clients must mask; an all-zero key leaves the payload as it is.
        assert self.transport is not None
        assert len(payload) < 126
        self.transport.write(bytes((head, 0x80 | len(payload), 0, 0, 0, 0)) + payload)

    def _closed_by_server(self, code: int) -> None:
        if self.close_code is None:
            self.close_code = code
            self._count_close()
        if not self._ready.done():
            self._ready.set_exception(ConnectionError(f"closed with {code} before hello"))
        assert self.transport is not None
        with contextlib.suppress(Exception):
            self._write_frame(0x88, code.to_bytes(2, "big"))
        self.transport.close()

    def _count_close(self) -> None:
        self._stats.closed += 1
        self._stats.closed_since += 1

    def _fail(self, status: str) -> None:
        if not self._ready.done():
            self._ready.set_exception(ConnectionError(f"handshake refused: {status}"))
        assert self.transport is not None
        self.transport.close()

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            with contextlib.suppress(Exception):
                self._write_frame(0x88, (1000).to_bytes(2, "big"))
            self.transport.close()


def _handshake(host: str, token: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token}\r\n\r\n"
    ).encode()


class _Client:
    def __init__(self) -> None:
        self.stats = _Stats()
        self.sockets: list[_Socket] = []

    async def connect(
        self, port: int, source_ip: str, tokens: list[str], host: str | None = None
    ) -> dict[str, Any]:
        host = host or f"127.0.0.1:{port}"
        loop = asyncio.get_running_loop()
        gate = asyncio.Semaphore(_CONNECT_CONCURRENCY)
        errors: list[str] = []

        async def one(token: str) -> None:
            async with gate:
                ready: asyncio.Future[None] = loop.create_future()
                try:
                    _, protocol = await loop.create_connection(
                        lambda: _Socket(self.stats, _handshake(host, token), ready),
                        "127.0.0.1",
                        port,
                        local_addr=(source_ip, 0),
                    )
                    self.sockets.append(protocol)
                    await asyncio.wait_for(ready, _CONNECT_TIMEOUT)
                except (OSError, TimeoutError) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one(token) for token in tokens))
        return {"connected": len(tokens) - len(errors), "failed": len(errors), "errors": errors[:3]}

    def close(self) -> None:
        for sock in self.sockets:
            sock.close()


async def _main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**26)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    client = _Client()

    def answer(message: dict[str, Any]) -> None:
        sys.stdout.write(json.dumps(message) + "\n")
        sys.stdout.flush()

    while line := await reader.readline():
        command = json.loads(line)
        name = command["cmd"]
        if name == "connect":
            answer(
                await client.connect(
                    command["port"], command["source_ip"], command["tokens"], command.get("host")
                )
            )
        elif name == "reset":
            client.stats.reset()
            answer({"ok": True})
        elif name == "report":
            answer(client.stats.report())
        elif name == "close":
            client.close()
            await asyncio.sleep(0.2)  # let the close frames out before the process ends
            answer({"ok": True})
            return


if __name__ == "__main__":
    uvloop.run(_main())

"""Connections opened together are shared out among the API's workers.

The workers share one listening socket. uvloop's own server accepts every
pending connection at once, so a burst (a proxy opening its keep-alive pool, a
load test) often landed whole on one worker, which then served those
connections alone. `api.serving.TurnAcceptor` takes one per loop turn.
"""

from __future__ import annotations

import asyncio

import psutil
import pytest

from tests.fixtures.servers import Server

pytestmark = pytest.mark.system

CONNECTIONS = 16
BURSTS = 6
# Of 16 connections, each of the two workers holds at least this many after every burst,
# and on average at least AT_LEAST_ON_AVERAGE. Before TurnAcceptor, four of six bursts left
# a worker with none (13-16 on the other). Alone, the split is 7-9 each; but a worker kept
# off the CPU for more than api.serving.MAX_DEFER (20 ms) lets the other take what it
# was slow to, and with the suite's other tests running on the same two cores one burst
# of six split 3 / 13 (the smaller shares averaged 5.8): these bounds catch the old
# behaviour, not a busy machine.
AT_LEAST = 2
AT_LEAST_ON_AVERAGE = 4


def _held_by_worker(server: Server) -> dict[int, int]:
    """How many established connections on the server's port each worker holds."""
    held = {}
    for pid in server.worker_pids():
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.NoSuchProcess:
            continue
        held[pid] = sum(
            1
            for connection in connections
            if connection.status == psutil.CONN_ESTABLISHED and connection.laddr.port == server.port
        )
    return held


async def _connect(server: Server) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection with a request sent on it as soon as it is open (as wrk does)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\n\r\n")
    return reader, writer


async def _burst(server: Server) -> tuple[list[asyncio.StreamWriter], dict[int, int], int]:
    """Open CONNECTIONS keep-alive connections at once, one request answered on each.

    Also how many the server ended after their answer (`Connection: close`): a
    worker that sees a sibling start after it shares out its connections so
    (`api.serving._State.share_with_newcomers`), which the suite's first burst
    can meet while the module's server is starting.
    """
    pairs = await asyncio.gather(*(_connect(server) for _ in range(CONNECTIONS)))
    ended = 0
    for reader, _ in pairs:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=10)
        assert head.startswith(b"HTTP/1.1 200"), head
        lines = [line.lower() for line in head.split(b"\r\n")]
        ended += b"connection: close" in lines
        length = next(
            int(line.split(b":", 1)[1]) for line in lines if line.startswith(b"content-length:")
        )
        await reader.readexactly(length)
    return [writer for _, writer in pairs], _held_by_worker(server), ended


async def test_a_burst_of_connections_is_shared_by_both_workers(api_server: Server) -> None:
    spreads, ended = [], []
    for _ in range(BURSTS):
        writers, held, closed = await _burst(api_server)
        spreads.append(sorted(held.values()))
        ended.append(closed)
        for writer in writers:
            writer.close()
        await asyncio.gather(*(writer.wait_closed() for writer in writers))

    # Every connection is held by a worker, or was ended by the server after its answer.
    assert all(
        sum(spread) + closed == CONNECTIONS and len(spread) == 2
        for spread, closed in zip(spreads, ended, strict=True)
    ), (spreads, ended)
    assert all(spread[0] >= AT_LEAST for spread in spreads), (spreads, ended)
    assert sum(spread[0] for spread in spreads) / BURSTS >= AT_LEAST_ON_AVERAGE, (spreads, ended)

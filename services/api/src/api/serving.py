"""The API's gunicorn worker class: uvicorn's, retiring without dropping a request.

A worker retires (it ends, and the master forks a fresh one) on SIGTERM and
SIGHUP, and by itself, to contain a slow leak:

- when its resident memory grew `GUNICORN_MAX_MEMORY_GROWTH_MB` (default
  `MAX_MEMORY_GROWTH_MB`; 0: never) over its warm baseline, the RSS once it
  has served `WARM_REQUESTS` requests or run `WARM_SECONDS`; read from /proc
  once a second, a few microseconds;
- after gunicorn's `max_requests` (+ jitter) requests, a backstop.

Retiring by itself, a worker waits its turn: one worker of a server at a time,
and not within `RETIRE_SPACING` seconds of the last one's end, so that the
others serve while its replacement starts, the worker due longest first (a
lock file in the master's scratch directory, which the kernel releases if the
worker dies, and a queue file beside it).

Retiring drops nothing. uvicorn's own shutdown closes every idle keep-alive
connection at once, so a request its client sends at that moment is lost
(the client sees a reset or an empty reply; a connection accepted a moment
before, whose request is still on its way, is closed unread the same way).
Here the worker stops accepting, and then:

- a request in progress finishes; its response says `Connection: close`
  unless its head went out already;
- an idle or just-accepted connection stays open: the next request on it is
  answered with `Connection: close` and the connection ends after that
  response; one that stays idle is closed by the keep-alive timeout, as at
  any other time;
- after the keep-alive timeout (and a second more) whatever is still open is
  closed as uvicorn would, in-flight requests finish, and the lifespan ends.

Each worker accepts one connection per turn of its event loop (`TurnAcceptor`)
on the listening socket the workers share. uvloop's server accepts every
pending connection at once, so a burst of new connections (a proxy opening its
pool of keep-alive connections, a load test) went to whichever worker woke
first: half the time every one of 16 connections opened together landed on one
of two workers, which then served alone at half the server's throughput, for as
long as those connections lived.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import logging
import math
import mmap
import os
import socket
import ssl
import struct
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

import uvicorn
from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.server import ServerState
from uvicorn_worker import UvicornWorker as _UvicornWorker  # type: ignore[import-untyped]

from common.prometheus_multiprocess import ENV_VAR as SCRATCH_DIR_ENV_VAR
from common.prometheus_multiprocess import is_alive

MAX_MEMORY_GROWTH_MB = 128
WARM_REQUESTS = 1000
WARM_SECONDS = 60.0
RETIRE_SPACING = 2.0
# After the keep-alive timeout, how long a retiring worker still waits for its connections.
CLOSE_GRACE = 1.0
_TICKS_PER_CHECK = 10  # uvicorn ticks every 0.1 s: check once a second
_WORKER_BOOT_ERROR = 3  # gunicorn.arbiter.Arbiter.WORKER_BOOT_ERROR
_STARTUP_FAILURE = 3  # uvicorn.server.STARTUP_FAILURE
_LOCK_FILE = "api-retiring.lock"
_QUEUE_FILE = "api-retiring.queue"
_WAITER = struct.Struct("qdd")  # pid, when it first asked for the turn, when it last did
# A due worker asks at every tick (0.1 s); one that has not for this long is no longer due.
WAITER_STALE_AFTER = 1.0
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
_STATM = Path("/proc/self/statm")
_logger = logging.getLogger("api.serving")


def resident_bytes() -> int | None:
    """This process's resident set size, or None where /proc is not there."""
    try:
        return int(_STATM.read_bytes().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return None


class _State(ServerState):
    """uvicorn's server state, plus whether the server retires, an event for its last close,
    and where the workers share their connection counts."""

    retiring = False
    closed_all: asyncio.Event | None = None
    table: ConnectionTable | None = None
    # Keep-alive connections to end after their current response (`share_with_newcomers`).
    to_shed = 0
    shed_until = 0.0
    # The other workers this one has seen (None: it has not looked yet).
    peers_seen: set[int] | None = None

    def publish_connections(self) -> None:
        """Tell the other workers how many connections this one holds now."""
        if self.table is not None:
            self.table.publish(len(self.connections))

    def share_with_newcomers(self) -> None:
        """When a new worker has started, end this one's connections beyond an even share.

        New connections go to the worker holding fewest (`TurnAcceptor`), but a
        keep-alive one stays where it is. When a worker retires, its clients
        reconnect at once, before its replacement exists, so the workers still
        accepting take them all; the replacement would then idle while they
        serve everything, for as long as those connections live (a proxy's
        pool: hours). So once, when a worker it has not seen before appears,
        each worker holding more than an even share of every worker's
        connections ends the excess, each after a response with
        `Connection: close`; their clients' next connections go to the
        newcomer. Only then: at any other time connections stay where they are
        (moving them in the steady state cost the intake a fifth of its rate).
        What is not ended within `SHED_SECONDS` (idle connections, which the
        keep-alive timeout ends anyway) is not ended later, when the counts
        may have changed.
        """
        if self.table is None:
            return
        if self.to_shed and time.monotonic() > self.shed_until:
            self.to_shed = 0
        peers = self.table.live_elsewhere()
        if self.peers_seen is None:
            self.peers_seen = set(peers)  # this worker's start: nobody is new to it
            return
        newcomers = peers.keys() - self.peers_seen
        if not newcomers:
            return
        self.peers_seen |= newcomers
        own = len(self.connections)
        share = math.ceil((own + sum(peers.values())) / (len(peers) + 1))
        self.to_shed = max(self.to_shed, own - share)
        self.shed_until = time.monotonic() + SHED_SECONDS
        if self.to_shed:
            _logger.info(
                "worker %d: ending %d of its %d connections for new worker(s) %s",
                os.getpid(), self.to_shed, own, sorted(newcomers),
            )  # fmt: skip


class RetiringHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol: once its server retires, each response ends its
    connection; before, as many as `_State.share_with_newcomers` says."""

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        state = self.server_state
        if not isinstance(state, _State) or self.cycle is None:
            return
        if state.retiring:
            self.cycle.keep_alive = False
        elif state.to_shed > 0 and self.cycle.keep_alive:
            state.to_shed -= 1
            self.cycle.keep_alive = False

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        state = self.server_state
        if not isinstance(state, _State):
            return
        state.publish_connections()
        if state.closed_all is not None and not state.connections:
            state.closed_all.set()


class Recycling:
    """When a worker should retire by itself: memory growth first, a request count as backstop."""

    def __init__(self, *, max_requests: int, max_growth_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_growth_bytes = max_growth_bytes
        self.started = time.monotonic()
        self.baseline: int | None = None

    def reason(self, requests: int, *, check_memory: bool = True) -> str | None:
        """Why the worker should retire now, or None; memory is read only if `check_memory`."""
        if requests >= self.max_requests:
            return f"served {requests} requests (max_requests {self.max_requests})"
        if not (check_memory and self.max_growth_bytes):
            return None
        rss = resident_bytes()
        if rss is None:
            return None
        if self.baseline is None:
            warm = time.monotonic() - self.started >= WARM_SECONDS
            if warm or requests >= WARM_REQUESTS:
                self.baseline = rss
            return None
        if rss - self.baseline > self.max_growth_bytes:
            return (
                f"resident memory {rss / 2**20:.0f} MiB grew over "
                f"{self.max_growth_bytes / 2**20:.0f} MiB above its warm baseline "
                f"({self.baseline / 2**20:.0f} MiB)"
            )
        return None


class RetirementTurn:
    """One retiring worker at a time per server, spaced, first due first served.

    The turn is an flock on a file in `directory`, whose mtime is when the last
    retiree finished (a worker whose lock dies with it leaves the mtime as it
    was). The workers due to retire queue beside it: a worker asks for the turn
    at every tick while it is due, and gets it only if no live worker has been
    asking longer. Without the queue, whichever due worker ticked first after
    the spacing took the turn each time (its tick's phase does not change), so
    a fresh replacement could retire again and again before a worker due since
    long before it.
    """

    def __init__(self, directory: Path | None) -> None:
        self.path = directory / _LOCK_FILE if directory is not None else None
        self.queue = directory / _QUEUE_FILE if directory is not None else None
        self._fd: int | None = None
        self._asked_at: float | None = None

    @classmethod
    def from_env(cls) -> RetirementTurn:
        """The turn kept in the master's scratch directory (none outside gunicorn)."""
        directory = os.environ.get(SCRATCH_DIR_ENV_VAR)
        return cls(Path(directory) if directory else None)

    def take(self) -> bool:
        """True, holding the turn until `give_back`, if this worker is the longest due,
        no other worker retires and none just did."""
        if self.path is None or self._fd is not None:
            return True
        now = time.time()
        if self._asked_at is None:
            self._asked_at = now
        try:
            queue = os.open(self.queue, os.O_RDWR | os.O_CREAT, 0o600)  # type: ignore[arg-type]
        except OSError:
            return True  # no scratch directory to coordinate in: retire alone
        try:
            fcntl.flock(queue, fcntl.LOCK_EX)  # held for a read and a write
            me = os.getpid()
            waiters = {
                pid: (asked, seen)
                for pid, asked, seen in _WAITER.iter_unpack(_whole(queue))
                if pid != me and now - seen < WAITER_STALE_AFTER and is_alive(pid)
            }
            first = min(waiters.items(), key=lambda item: (item[1][0], item[0]), default=None)
            first_due = first is None or (self._asked_at, me) <= (first[1][0], first[0])
            granted = first_due and self._take_lock()
            if granted:
                self._asked_at = None
            else:
                waiters[me] = (self._asked_at, now)
            records = b"".join(_WAITER.pack(pid, *times) for pid, times in waiters.items())
            os.ftruncate(queue, 0)
            os.pwrite(queue, records, 0)
        finally:
            os.close(queue)  # unlocks
        return granted

    def _take_lock(self) -> bool:
        assert self.path is not None
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
            os.utime(fd, (0, 0))  # never retired yet
        except FileExistsError:
            fd = os.open(self.path, os.O_RDWR)
        except OSError:
            return True  # the lock file cannot be made: retire alone, as without a directory
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if time.time() - os.fstat(fd).st_mtime < RETIRE_SPACING:
            os.close(fd)  # unlocks
            return False
        self._fd = fd
        return True

    def give_back(self) -> None:
        """Stamp the end of this retirement and release the turn."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.utime(self._fd)
            os.close(self._fd)
            self._fd = None


def _whole(fd: int) -> bytes:
    """The file's contents, whole records only."""
    data = os.pread(fd, os.fstat(fd).st_size, 0)
    return data[: len(data) - len(data) % _WAITER.size]


# accept() errors that a retry a moment later may get past (asyncio's own list):
# out of descriptors or memory. Accepting again at once would spin the loop.
_ACCEPT_RESOURCE_ERRORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
ACCEPT_RETRY_DELAY = 1.0
# A worker ahead of another in open connections leaves a pending one to it, looking
# again every DEFER_STEP seconds; after MAX_DEFER it takes the connection anyway
# (the other worker may be busy or stuck).
DEFER_STEP = 0.001
MAX_DEFER = 0.02
_BALANCE_FILE = "api-connections"
_SLOTS = 32
_SLOT = struct.Struct("qqq")  # pid, open connections, when written (CLOCK_MONOTONIC, ns)
# A worker writes its count at every accept and close and at each 0.1 s tick: a slot not
# written for this long is a worker that died, stopped or is too busy to take more.
STALE_AFTER_NS = 1_000_000_000
# How long after a new worker appears the others still end connections for it.
SHED_SECONDS = 5.0


class ConnectionTable:
    """Each live worker's open-connection count, in a file the workers map (one slot each).

    A worker takes a free slot (an flock guards the choice), writes its count
    there with the time, and frees it when it stops accepting. A slot not
    written for `STALE_AFTER_NS`, or whose process is gone, counts as free: a
    killed worker's, a reused pid's, a stuck worker's.
    """

    def __init__(self, path: Path) -> None:
        self._released = False
        size = _SLOTS * _SLOT.size
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                if os.fstat(fd).st_size < size:
                    os.ftruncate(fd, size)
                # The map holds a duplicate of fd, the same open file: unlock explicitly.
                self._map = mmap.mmap(fd, size)
                self._slot = self._claim()
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    @classmethod
    def from_env(cls) -> ConnectionTable | None:
        """The table in the master's scratch directory; None outside gunicorn."""
        directory = os.environ.get(SCRATCH_DIR_ENV_VAR)
        if not directory:
            return None
        try:
            return cls(Path(directory) / _BALANCE_FILE)
        except (OSError, LookupError):
            return None  # no room to coordinate: accept as uvicorn does

    def _claim(self) -> int:
        now = time.monotonic_ns()
        for slot in range(_SLOTS):
            if self._live(slot, now) is None:
                _SLOT.pack_into(self._map, slot * _SLOT.size, os.getpid(), 0, now)
                return slot
        raise LookupError("no free slot")

    def _live(self, slot: int, now: int) -> tuple[int, int] | None:
        """(pid, connections) of the worker holding `slot`, or None when it is free."""
        pid, connections, written = _SLOT.unpack_from(self._map, slot * _SLOT.size)
        if pid == 0 or now - written > STALE_AFTER_NS or not is_alive(pid):
            return None
        return pid, connections

    def publish(self, connections: int) -> None:
        """Write this worker's count (nothing once released)."""
        if not self._released:
            _SLOT.pack_into(
                self._map, self._slot * _SLOT.size, os.getpid(), connections, time.monotonic_ns()
            )

    def live_elsewhere(self) -> dict[int, int]:
        """The other live workers' open connections, by pid."""
        now = time.monotonic_ns()
        live = (self._live(slot, now) for slot in range(_SLOTS) if slot != self._slot)
        return dict(entry for entry in live if entry is not None)

    def fewest_elsewhere(self) -> int | None:
        """The lowest count of the other live workers (None: no other worker accepts)."""
        return min(self.live_elsewhere().values(), default=None)

    def release(self) -> None:
        """Free the slot: this worker accepts no more."""
        self._released = True
        _SLOT.pack_into(self._map, self._slot * _SLOT.size, 0, 0, 0)


class TurnAcceptor:
    """Serves a listening socket shared with other workers, one connection per loop turn.

    Every worker waits for the socket to be readable (level-triggered). When it
    is, a worker holding more open connections than another (`ConnectionTable`)
    leaves the connection to that one for up to `MAX_DEFER`; otherwise it takes
    one and looks again on its next turn. Closed like an `asyncio.Server`.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        protocol_factory: Callable[[], asyncio.Protocol],
        *,
        state: _State,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = protocol_factory
        self._state = state
        self._ssl = ssl_context
        self._closed = False
        self._deferred_since: float | None = None
        sock.setblocking(False)
        loop.add_reader(sock.fileno(), self._accept)

    def _should_defer(self) -> bool:
        # This worker's own count is in the table already: written at each accept,
        # close and tick.
        table = self._state.table
        if table is None:
            return False
        own = len(self._state.connections)
        fewest = table.fewest_elsewhere()
        if fewest is None or own <= fewest:
            self._deferred_since = None
            return False
        now = self._loop.time()
        if self._deferred_since is None:
            self._deferred_since = now
        if now - self._deferred_since >= MAX_DEFER:
            self._deferred_since = None
            return False
        return True

    def _accept(self) -> None:
        if self._should_defer():
            self._pause(DEFER_STEP)
            return
        try:
            conn, _ = self._sock.accept()
        except (BlockingIOError, InterruptedError, ConnectionAbortedError):
            return  # another worker took it, or the client gave up already
        except OSError as exc:
            if exc.errno not in _ACCEPT_RESOURCE_ERRORS:
                raise
            _logger.warning("accept() failed (%s); trying again in %.0f s", exc, ACCEPT_RETRY_DELAY)
            self._pause(ACCEPT_RETRY_DELAY)
            return
        conn.setblocking(False)
        if conn.family in (socket.AF_INET, socket.AF_INET6):
            # As uvloop's own server sets it: a response is not held back for an ACK.
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._loop.create_task(self._serve(conn))

    def _pause(self, seconds: float) -> None:
        self._loop.remove_reader(self._sock.fileno())
        self._loop.call_later(seconds, self._resume)

    def _resume(self) -> None:
        if not self._closed:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def _serve(self, conn: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(self._factory, conn, ssl=self._ssl)
        except OSError:
            conn.close()  # reset before the transport was made; nothing was read
        self._state.publish_connections()

    def close(self) -> None:
        """Stop accepting here (the other workers' copies of the socket stay open)."""
        if self._closed:
            return
        self._closed = True
        if self._state.table is not None:
            self._state.table.release()
        self._loop.remove_reader(self._sock.fileno())
        self._sock.close()

    async def wait_closed(self) -> None:
        return None


class _Server(uvicorn.Server):
    def __init__(self, config: Config, *, recycling: Recycling, turn: RetirementTurn) -> None:
        super().__init__(config)
        self.server_state = _State()
        self.recycling = recycling
        self.turn = turn

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """uvicorn's start-up for sockets from gunicorn, serving each with a `TurnAcceptor`."""
        if sockets is None:
            await super().startup(sockets)
            return
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(_STARTUP_FAILURE)
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )

        loop = asyncio.get_running_loop()
        assert isinstance(self.server_state, _State)
        self.server_state.table = ConnectionTable.from_env()
        self.servers = [
            TurnAcceptor(  # type: ignore[misc]
                loop,
                sock,
                create_protocol,
                state=self.server_state,
                ssl_context=config.ssl,
            )
            for sock in sockets
        ]
        self.started = True

    async def on_tick(self, counter: int) -> bool:
        # Fresh, so the others do not take this worker for a stopped one.
        assert isinstance(self.server_state, _State)
        self.server_state.publish_connections()
        self.server_state.share_with_newcomers()
        if await super().on_tick(counter):
            return True
        reason = self.recycling.reason(
            self.server_state.total_requests, check_memory=counter % _TICKS_PER_CHECK == 0
        )
        if reason is None or not self.turn.take():
            return False
        _logger.info("worker %d retiring: %s", os.getpid(), reason)
        return True

    async def shutdown(self, sockets: list[Any] | None = None) -> None:
        state = self.server_state
        assert isinstance(state, _State)
        for server in self.servers:
            server.close()  # no new connections (their sockets close with them)
        state.retiring = True
        state.closed_all = asyncio.Event()
        for connection in list(state.connections):
            cycle = getattr(connection, "cycle", None)
            if cycle is not None and not cycle.response_started:
                cycle.keep_alive = False
        if state.connections and not self.force_exit:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    state.closed_all.wait(), self.config.timeout_keep_alive + CLOSE_GRACE
                )
        try:
            # Closes what is left, waits for in-flight requests, ends the lifespan.
            await super().shutdown(sockets=None)
        finally:
            self.turn.give_back()


def max_memory_growth_bytes() -> int:
    """`GUNICORN_MAX_MEMORY_GROWTH_MB` in bytes (0: memory never retires a worker)."""
    return int(float(os.environ.get("GUNICORN_MAX_MEMORY_GROWTH_MB", MAX_MEMORY_GROWTH_MB)) * 2**20)


class RetiringUvicornWorker(_UvicornWorker):  # type: ignore[misc]
    """`uvicorn_worker.UvicornWorker` serving with `_Server` and `RetiringHttpToolsProtocol`."""

    CONFIG_KWARGS: ClassVar[dict[str, Any]] = {
        **_UvicornWorker.CONFIG_KWARGS,
        "http": RetiringHttpToolsProtocol,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The request count is checked by `Recycling`, with the memory, in turn.
        self.config.limit_max_requests = None

    def run(self) -> None:
        super().run()
        # Served and shut down: the lifespan closed every pool, client and
        # process. Python's own teardown (atexit, freeing the preloaded app's
        # heap) would now take 0.5-1 s before the master notices the exit and
        # forks the replacement, so end here (gunicorn's `worker_exit` hook,
        # which we do not set, is skipped with it).
        self.log.info("Worker exiting (pid: %s)", self.pid)
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    async def _serve(self) -> None:
        # As uvicorn_worker 0.4's `_serve`, with our server class.
        self.config.app = self.wsgi
        recycling = Recycling(
            max_requests=self.max_requests, max_growth_bytes=max_memory_growth_bytes()
        )
        server = _Server(config=self.config, recycling=recycling, turn=RetirementTurn.from_env())
        self._install_sigquit_handler()
        await server.serve(sockets=self.sockets)
        if not server.started:
            sys.exit(_WORKER_BOOT_ERROR)

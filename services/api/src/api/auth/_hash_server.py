"""The hashing server: `python -m api.auth._hash_server`, one per API worker, started by it.

A small fork server. It imports only what Argon2 needs (the argon2-cffi
binding, about 7 MiB of memory in all), lowers its CPU priority (`NICE`
steps below its worker), and then, for
each request line read on stdin, forks a child that hashes or verifies and
writes one answer line to stdout. A child is a copy-on-write copy of this
small process, so it costs the Argon2 memory of its hash and little more, and
gives all of it back when it exits; a fresh interpreter per process would
cost tens of MiB each. The worker decides how many run at once.

Protocol, one JSON object per line:

    -> {"id": 7, "op": "hash", "password": "...", "params": [19456, 2, 1]}
    <- {"id": 7, "hash": "$argon2id$v=19$m=19456,t=2,p=1$..."}
    -> {"id": 8, "op": "verify", "password": "...", "hash": "...", "params": [...]}
    <- {"id": 8, "valid": true, "rehash": null}     (a new hash when params changed)
    <- {"id": 9, "error": "..."}                    (bad request, or the child died)

A child gives its CPU away every `YIELD_EVERY` seconds while it hashes: an
interval timer's SIGALRM runs a C handler (a Python handler would run only
once Argon2 returns) that sleeps a few microseconds. A request that wakes on a
core where a hash runs then waits at most that long, on kernels whose
wake-ups do not preempt a task in user space until the next scheduler tick
(up to 4 ms at 250 Hz) as well as on those that do. A nice value, not
`SCHED_IDLE`, keeps a share of the CPU for hashes under a load that keeps
every core busy, so logins slow down there but do not starve (see
docs/performance.md, the seventeenth pass).

The handler sleeps rather than calling `sched_yield(2)`, as it did until the
twenty-first pass: on Linux 6.18 here a hash yielding every half millisecond
got almost no CPU beside a process that never sleeps on its core (10-15 s
for a hash of 0.2 s at its nice share), and little for seconds more after it
stopped yielding, as if charged for every slice it gave up; logins queued
behind such hashes for seconds in the login storm. A sleeper is charged
nothing, on any scheduler. The handler is libc's `usleep(3)` itself: the
kernel calls a handler with the signal's number, so each SIGALRM
sleeps `SIGALRM` microseconds (14 on Linux), with the timer slack lowered to
`TIMER_SLACK_NS` so that it sleeps about that long and not 50 us more.

Every answer is written with one `write` shorter than PIPE_BUF, so answers of
concurrent children never interleave. The server exits when stdin closes (its
worker is gone); children in flight finish first.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# Longer request lines are refused (the API bounds passwords far below this).
MAX_LINE = 64 * 1024
# How far below its worker a hash runs: CPU weight 335 against the worker's 1024, so a
# hash gets a quarter of a core its worker keeps busy (at SCHED_IDLE, 3: it starved).
NICE = 5
# How often a hash gives its CPU away (seconds): a hash costs 3-4% more alone
# (a timer interrupt in a VM is not free), and a waking request waits at most this.
YIELD_EVERY = 0.0005
# The sleep's timer slack (the default is 50 us, longer than the sleep itself).
TIMER_SLACK_NS = 1000
_PR_SET_TIMERSLACK = 29  # <linux/prctl.h>
_OUT = sys.stdout.fileno()
# Children in flight: pid -> request id, to answer for one that dies without answering.
_pending: dict[int, int] = {}


def _lower_priority() -> None:
    # Lowering is always allowed; children inherit it.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICE)


def _install_yield() -> bool:
    """Make SIGALRM sleep `SIGALRM` microseconds in C (children inherit it); whether it did."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        install = libc.signal
        install.restype = ctypes.c_void_p
        install.argtypes = [ctypes.c_int, ctypes.c_void_p]
        # usleep(useconds_t), called as a handler with the signal's number.
        handler = ctypes.cast(libc.usleep, ctypes.c_void_p).value
        prctl = libc.prctl
    except (OSError, AttributeError):
        return False
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl(_PR_SET_TIMERSLACK, TIMER_SLACK_NS, 0, 0, 0)  # children inherit it; best effort
    # glibc's and musl's signal(3) install with SA_RESTART: no call fails with EINTR.
    failed = ctypes.c_void_p(-1).value  # SIG_ERR
    previous: int | None = install(signal.SIGALRM, handler)
    return previous != failed


@contextlib.contextmanager
def yielding(every: float) -> Iterator[None]:
    """Within: SIGALRM every `every` seconds (0: none), so the handler gives the CPU away."""
    if every <= 0:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, every, every)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def _write(answer: dict[str, Any]) -> None:
    line = (json.dumps(answer, separators=(",", ":")) + "\n").encode()
    os.write(_OUT, line[:4000])


def answer(request: dict[str, Any]) -> dict[str, Any]:
    """The answer to one request (run in a child)."""
    memory_cost, time_cost, parallelism = request["params"]
    hasher = PasswordHasher(time_cost=time_cost, memory_cost=memory_cost, parallelism=parallelism)
    # surrogatepass: a form may carry a lone surrogate; it must not crash the child.
    password = str(request["password"]).encode("utf-8", "surrogatepass")
    if request["op"] == "hash":
        return {"id": request["id"], "hash": hasher.hash(password)}
    stored = str(request["hash"])
    try:
        hasher.verify(stored, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return {"id": request["id"], "valid": False, "rehash": None}
    rehash = hasher.hash(password) if hasher.check_needs_rehash(stored) else None
    return {"id": request["id"], "valid": True, "rehash": rehash}


def _serve_one(request: dict[str, Any], *, yield_every: float) -> None:
    try:
        with yielding(yield_every):
            result = answer(request)
    except Exception as exc:
        result = {"id": request.get("id"), "error": f"{type(exc).__name__}: {exc}"[:500]}
    _write(result)


def _reap(signum: int = 0, frame: object = None) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        request_id = _pending.pop(pid, None)
        if request_id is not None and os.waitstatus_to_exitcode(status) != 0:
            code = os.waitstatus_to_exitcode(status)
            how = f"signal {-code}" if code < 0 else f"exit code {code}"
            _write({"id": request_id, "error": f"hashing process ended by {how}"})


def main() -> None:
    """Serve requests from stdin until it closes."""
    _lower_priority()
    yield_every = YIELD_EVERY if _install_yield() else 0.0
    signal.signal(signal.SIGCHLD, _reap)
    # The worker stops us by closing stdin; its SIGINT/SIGTERM are not ours to act on.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stdin = sys.stdin.buffer
    while line := stdin.readline(MAX_LINE):
        if not line.endswith(b"\n"):  # too long: never sent by our worker; skip it whole
            while (rest := stdin.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                pass
            continue
        try:
            request = json.loads(line)
            request_id = int(request["id"])
        except (ValueError, KeyError, TypeError):
            continue  # not from our worker; nothing to answer
        # SIGCHLD held until the child is on record, so an early death is still answered.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            pid = os.fork()
            if pid == 0:
                signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                try:
                    _serve_one(request, yield_every=yield_every)
                finally:
                    os._exit(0)
            _pending[pid] = request_id
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
    while _pending:  # stdin closed: let the children in flight finish
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        _reap()
        if _pending:
            signal.sigwait({signal.SIGCHLD})
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})


if __name__ == "__main__":
    main()

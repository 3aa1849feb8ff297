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
interval timer's SIGALRM runs `sched_yield(2)` itself, as a C handler (a
Python handler would run only once Argon2 returns). A request that wakes on a
core where a hash runs then waits at most that long, on kernels whose
wake-ups do not preempt a task in user space until the next scheduler tick
(up to 4 ms at 250 Hz) as well as on those that do. A nice value, not
`SCHED_IDLE`, keeps a share of the CPU for hashes under a load that keeps
every core busy, so logins slow down there but do not starve (see
docs/performance.md, the seventeenth pass). A hash yields for `YIELD_FOR`
seconds at most, then runs on at its nice share: on the EEVDF scheduler
(Linux 6.18 here) a hash that called `sched_yield` every half millisecond
got no CPU at all beside a process that never sleeps on its core (one took
14.6 s there, against 0.2 s not yielding), which held logins behind a
starved hash for seconds in the login storm (docs/performance.md, the
twenty-first pass).

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
import threading
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
# For how long at most (wall time): a hash alone takes 20-45 ms on the machines measured,
# 75-125 ms during the bench's storm of logins; one still running after this is being
# starved, and stops giving way (10-15 s against a spinning process -> 0.55-0.8 s).
YIELD_FOR = 0.25
_OUT = sys.stdout.fileno()
# Children in flight: pid -> request id, to answer for one that dies without answering.
_pending: dict[int, int] = {}


def _lower_priority() -> None:
    # Lowering is always allowed; children inherit it.
    with contextlib.suppress(OSError, AttributeError):
        os.nice(NICE)


def _install_yield() -> bool:
    """Make SIGALRM call `sched_yield` in C (children inherit it); whether that worked."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        install = libc.signal
        install.restype = ctypes.c_void_p
        install.argtypes = [ctypes.c_int, ctypes.c_void_p]
        handler = ctypes.cast(libc.sched_yield, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return False
    # glibc's and musl's signal(3) install with SA_RESTART: no call fails with EINTR.
    failed = ctypes.c_void_p(-1).value  # SIG_ERR
    previous: int | None = install(signal.SIGALRM, handler)
    return previous != failed


@contextlib.contextmanager
def yielding(every: float, *, for_at_most: float = YIELD_FOR) -> Iterator[None]:
    """Within: SIGALRM every `every` seconds (0: none), so the handler gives the CPU away,
    for `for_at_most` seconds; then none.

    A thread disarms the timer on time: Argon2 runs in C without the interpreter
    lock, so the thread runs meanwhile, with SIGALRM blocked so that the hash's
    thread takes every one.
    """
    if every <= 0:
        yield
        return
    done = threading.Event()

    def disarm_in_time() -> None:
        if not done.wait(for_at_most):
            signal.setitimer(signal.ITIMER_REAL, 0)

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    try:
        watchdog = threading.Thread(target=disarm_in_time, name="yield-for", daemon=True)
        watchdog.start()  # inherits the blocked SIGALRM
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGALRM})
    signal.setitimer(signal.ITIMER_REAL, every, every)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        done.set()
        watchdog.join()


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

"""The hashing server's yield: SIGALRM runs `sched_yield` in C while a hash runs, up to a bound.

Each case runs in a child interpreter: the interval timer is per process, and pytest's own
timeout uses it in this one.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# Busy for 50 ms under `yielding(interval, for_at_most=...)` (at 0.2 ms, about 250 SIGALRMs);
# print the timer's interval as it was at the start and at the end inside, and the timer after.
_BUSY = """
import signal, sys, time
from api.auth._hash_server import _install_yield, yielding
handler, interval, for_at_most = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
if handler == "install":
    assert _install_yield()
with yielding(interval, for_at_most=for_at_most):
    inside = signal.getitimer(signal.ITIMER_REAL)[1]
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass
    at_the_end = signal.getitimer(signal.ITIMER_REAL)[1]
print(inside, at_the_end, signal.getitimer(signal.ITIMER_REAL))
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and timers")


def _busy(
    handler: str, interval: float, *, for_at_most: float = 10.0
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BUSY, handler, str(interval), str(for_at_most)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_sigalrm_gives_the_cpu_away_and_the_hash_goes_on() -> None:
    done = _busy("install", 0.0002)
    assert done.returncode == 0, done.stderr
    # Armed within; disarmed once the hash is done, so a child writes its answer and exits
    # with no SIGALRM to come.
    assert done.stdout.split(maxsplit=2) == ["0.0002", "0.0002", "(0.0, 0.0)\n"]


def test_a_hash_stops_giving_way_after_its_bound() -> None:
    # A hash that a busy core starves of CPU yields until the bound, then runs at its nice
    # share: the timer is disarmed within the hash, by wall time.
    done = _busy("install", 0.0002, for_at_most=0.01)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=2) == ["0.0002", "0.0", "(0.0, 0.0)\n"]


def test_without_the_handler_the_first_sigalrm_would_end_the_hash() -> None:
    done = _busy("none", 0.0002)
    assert done.returncode == -signal.SIGALRM


def test_no_interval_arms_no_timer() -> None:
    # Where the handler cannot be installed, the server hashes with an interval of 0.
    done = _busy("none", 0)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=2) == ["0.0", "0.0", "(0.0, 0.0)\n"]

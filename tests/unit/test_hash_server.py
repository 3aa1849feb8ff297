"""The hashing server's yield: SIGALRM sleeps in C while a hash runs, and only then.

Each case runs in a child interpreter: the interval timer is per process, and pytest's own
timeout uses it in this one.
"""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from api.auth._hash_server import TIMER_SLACK_NS

# Busy for 50 ms under `yielding(interval)` (at 0.2 ms, about 250 SIGALRMs); print the timer
# as it was inside and after.
_BUSY = """
import signal, sys, time
from api.auth._hash_server import _install_yield, yielding
handler, interval = sys.argv[1], float(sys.argv[2])
if handler == "install":
    assert _install_yield()
with yielding(interval):
    inside = signal.getitimer(signal.ITIMER_REAL)[1]
    end = time.monotonic() + 0.05
    while time.monotonic() < end:
        pass
print(inside, signal.getitimer(signal.ITIMER_REAL))
"""

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and timers")


def _busy(handler: str, interval: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _BUSY, handler, str(interval)],
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
    assert done.stdout.split(maxsplit=1) == ["0.0002", "(0.0, 0.0)\n"]


def test_without_the_handler_the_first_sigalrm_would_end_the_hash() -> None:
    done = _busy("none", 0.0002)
    assert done.returncode == -signal.SIGALRM


def test_no_interval_arms_no_timer() -> None:
    # Where the handler cannot be installed, the server hashes with an interval of 0.
    done = _busy("none", 0)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split(maxsplit=1) == ["0.0", "(0.0, 0.0)\n"]


def test_the_sleep_is_not_stretched_by_the_timer_slack() -> None:
    # Linux's default slack, 50 us, would stretch each 14 us sleep to about 64 us.
    script = (
        "import ctypes\n"
        "from api.auth._hash_server import _install_yield\n"
        "assert _install_yield()\n"
        "print(ctypes.CDLL(None).prctl(30, 0, 0, 0, 0))\n"  # PR_GET_TIMERSLACK
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) == TIMER_SLACK_NS

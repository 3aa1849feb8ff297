"""The two profiles: quick (CI, under 3 minutes) and full (longer runs, alternating rounds)."""

from __future__ import annotations

from dataclasses import dataclass, replace

from bench.wrk import WrkSettings


@dataclass(frozen=True)
class Profile:
    """How long and how hard each scenario runs."""

    name: str
    # Ours and its baseline get exactly these wrk settings.
    wrk: WrkSettings
    warmup_seconds: float
    # Ours and the baseline alternate this many times; the median round counts.
    rounds: int
    e2e_seconds: float
    e2e_rate: float
    # Users whose jobs make up that rate, each with its own socket, under the shipped
    # running cap (one job per user at a time): a service's traffic comes from many.
    e2e_users: int
    # Connections posting logins during the storm (each one a hash in flight).
    storm_connections: int


_QUICK = Profile(
    name="quick",
    wrk=WrkSettings(threads=1, connections=16, seconds=5),
    warmup_seconds=1,
    rounds=1,
    e2e_seconds=10,
    e2e_rate=200,
    e2e_users=32,
    storm_connections=8,
)
PROFILES = {
    "quick": _QUICK,
    # The same load, measured for longer and in alternating rounds.
    "full": replace(
        _QUICK,
        name="full",
        wrk=replace(_QUICK.wrk, seconds=20),
        warmup_seconds=3,
        rounds=3,
        e2e_seconds=60,
    ),
}

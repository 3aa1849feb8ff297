"""The client's pieces that need no server: backoff, argument checks, packaging."""

from __future__ import annotations

import tomllib

import pytest

from devharness.services import ROOT
from jobsclient import ApiClient, backoff
from jobsclient._events import MAX_BACKOFF


class TestBackoff:
    """Reconnect delays double from 0.2 s with jitter and never exceed the ceiling."""

    def test_delays_double_then_stop_at_the_ceiling(self) -> None:
        for failures, top in ((1, 0.4), (2, 0.8), (3, 1.6), (20, MAX_BACKOFF)):
            delays = [backoff(failures) for _ in range(200)]
            assert all(top / 2 <= delay <= top for delay in delays)
            assert len(set(delays)) > 1  # jittered, so clients do not reconnect in step


class TestApiClient:
    """An ApiClient needs a token, or an email and a password."""

    def test_without_credentials_is_refused(self) -> None:
        with pytest.raises(ValueError, match="token"):
            ApiClient("http://127.0.0.1:1")


class TestPackaging:
    """The client's libraries stay out of the realtime service and its image."""

    @pytest.mark.parametrize("library", ["httpx", "rich"])
    def test_realtime_neither_declares_nor_locks_it(self, library: str) -> None:
        project = tomllib.loads((ROOT / "services/realtime/pyproject.toml").read_text())
        declared = [spec.split(">")[0].split("[")[0] for spec in project["project"]["dependencies"]]
        assert library not in declared
        locked = (ROOT / "requirements/realtime.txt").read_text().splitlines()
        assert not [line for line in locked if line.startswith(f"{library}==")]

"""The API worker's recycling decisions: when a worker retires, and that only one does at once."""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api import serving
from api.serving import (
    STALE_AFTER_NS,
    ConnectionTable,
    Recycling,
    RetirementTurn,
    resident_bytes,
)


class TestRecycling:
    """Memory growth over the warm baseline retires a worker; so does the request backstop."""

    def test_request_count_backstop(self) -> None:
        recycling = Recycling(max_requests=100, max_growth_bytes=0)

        assert recycling.reason(99) is None
        assert "served 100 requests" in (recycling.reason(100) or "")

    def test_memory_growth_over_the_warm_baseline(self, monkeypatch: pytest.MonkeyPatch) -> None:
        rss = [300 * 2**20]
        monkeypatch.setattr(serving, "resident_bytes", lambda: rss[0])
        recycling = Recycling(max_requests=10**9, max_growth_bytes=64 * 2**20)

        assert recycling.reason(10) is None, "not warm yet: no baseline"
        assert recycling.baseline is None
        assert recycling.reason(serving.WARM_REQUESTS) is None
        assert recycling.baseline == 300 * 2**20
        rss[0] += 64 * 2**20
        assert recycling.reason(serving.WARM_REQUESTS + 1) is None, "growth at the limit is fine"
        rss[0] += 1
        reason = recycling.reason(serving.WARM_REQUESTS + 2)
        assert reason is not None
        assert "above its warm baseline (300 MiB)" in reason

    def test_memory_is_read_only_when_asked(self, monkeypatch: pytest.MonkeyPatch) -> None:
        reads: list[int] = []

        def read() -> int:
            reads.append(1)
            return 2**30

        monkeypatch.setattr(serving, "resident_bytes", read)
        recycling = Recycling(max_requests=10**9, max_growth_bytes=1)

        recycling.reason(5000, check_memory=False)

        assert reads == []
        recycling.reason(5000)
        assert reads == [1]

    def test_resident_bytes_reads_this_process(self) -> None:
        rss = resident_bytes()

        assert rss is not None
        assert 10 * 2**20 < rss < 4 * 2**30


class TestRetirementTurn:
    """One worker retires at a time, and the next waits until the spacing has passed."""

    def test_a_second_worker_waits_while_one_retires(self, tmp_path: Path) -> None:
        first, second = RetirementTurn(tmp_path), RetirementTurn(tmp_path)

        assert first.take()
        assert not second.take()

    def test_the_next_waits_for_the_spacing_after_the_last_end(self, tmp_path: Path) -> None:
        first, second = RetirementTurn(tmp_path), RetirementTurn(tmp_path)
        assert first.take()

        first.give_back()

        assert not second.take(), "the replacement is still starting"
        assert first.path is not None
        ended_long_ago = time.time() - serving.RETIRE_SPACING - 1
        os.utime(first.path, (ended_long_ago, ended_long_ago))
        assert second.take()

    def test_without_a_scratch_directory_a_worker_retires_alone(self) -> None:
        assert RetirementTurn(None).take()

    def test_the_worker_due_longest_goes_first(self, tmp_path: Path) -> None:
        turn = RetirementTurn(tmp_path)
        with _other_worker() as other:
            _ask(tmp_path, other, asked=time.time() - 10, seen=time.time())

            assert not turn.take(), "the other worker has been due for 10 s"
            assert other in _waiting(tmp_path)
            assert os.getpid() in _waiting(tmp_path), "this one waits in line"

    def test_a_worker_due_after_this_one_waits_for_it(self, tmp_path: Path) -> None:
        holder, turn = RetirementTurn(tmp_path), RetirementTurn(tmp_path)
        assert holder.take()
        assert not turn.take(), "one retires at a time"
        holder.give_back()
        assert holder.path is not None
        ended_long_ago = time.time() - serving.RETIRE_SPACING - 1
        os.utime(holder.path, (ended_long_ago, ended_long_ago))
        with _other_worker() as other:
            _ask(tmp_path, other, asked=time.time(), seen=time.time())

            assert turn.take()
            assert _waiting(tmp_path) == {other}

    @pytest.mark.parametrize("gone", ["stopped asking", "exited"])
    def test_a_worker_no_longer_asking_holds_nobody_up(self, tmp_path: Path, gone: str) -> None:
        turn = RetirementTurn(tmp_path)
        with _other_worker() as other:
            if gone == "exited":
                pid = other
            else:
                _ask(tmp_path, other, asked=time.time() - 10, seen=time.time() - 2)
        if gone == "exited":
            _ask(tmp_path, pid, asked=time.time() - 10, seen=time.time())

        assert turn.take()
        assert _waiting(tmp_path) == set()


@contextlib.contextmanager
def _other_worker() -> Iterator[int]:
    """The pid of a live process standing in for another worker."""
    process = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE
    )
    try:
        yield process.pid
    finally:
        assert process.stdin is not None
        process.stdin.close()
        process.wait()


def _ask(directory: Path, pid: int, *, asked: float, seen: float) -> None:
    """Record `pid` in the retirement queue as a worker waiting for the turn."""
    with (directory / serving._QUEUE_FILE).open("ab") as queue:
        queue.write(serving._WAITER.pack(pid, asked, seen))


def _waiting(directory: Path) -> set[int]:
    data = (directory / serving._QUEUE_FILE).read_bytes()
    return {pid for pid, _, _ in serving._WAITER.iter_unpack(data)}


_PUBLISHER = """
import select
import sys
from pathlib import Path
from api.serving import ConnectionTable
table = ConnectionTable(Path(sys.argv[1]))
table.publish(int(sys.argv[2]))
print("published", flush=True)
while not select.select([sys.stdin], [], [], 0.05)[0]:  # until the test closes stdin
    table.publish(int(sys.argv[2]))  # as a worker does at each tick
"""


def _publisher(path: Path, connections: int) -> subprocess.Popen[str]:
    """Another process holding a slot with `connections`, alive until its stdin closes."""
    process = subprocess.Popen(
        [sys.executable, "-c", _PUBLISHER, str(path), str(connections)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "published"
    return process


class TestConnectionTable:
    """The workers' shared connection counts: one slot each, freed on release or death."""

    def test_sees_the_other_live_workers_counts_only(self, tmp_path: Path) -> None:
        path = tmp_path / "connections"
        mine = ConnectionTable(path)
        mine.publish(5)
        assert mine.fewest_elsewhere() is None, "no other worker: nobody to leave a connection to"

        others = [_publisher(path, count) for count in (7, 3)]
        try:
            assert mine.fewest_elsewhere() == 3
        finally:
            for process in others:
                assert process.stdin is not None
                process.stdin.close()
                process.wait(timeout=10)
        # Both exited: their slots no longer count, and may be taken again.
        assert mine.fewest_elsewhere() is None

    def test_a_released_slot_is_not_published_again(self, tmp_path: Path) -> None:
        path = tmp_path / "connections"
        leaving, staying = ConnectionTable(path), ConnectionTable(path)
        # Same process, two slots: `fewest_elsewhere` skips its own pid, so read the map.
        leaving.publish(4)
        leaving.release()
        leaving.publish(9)  # a connection closing after the worker stopped accepting

        slots = Path(path).read_bytes()
        assert slots.count(os.getpid().to_bytes(8, "little")) == 1, "only `staying` holds a slot"
        staying.release()

    def test_a_slot_not_written_for_a_second_is_free(self, tmp_path: Path) -> None:
        path = tmp_path / "connections"
        mine = ConnectionTable(path)
        # A live process's slot, last written long ago: a stuck worker, or a reused pid.
        stale = struct.Struct("qqq")
        with path.open("r+b") as table:
            table.seek(stale.size * 5)
            table.write(stale.pack(os.getppid(), 0, time.monotonic_ns() - 2 * STALE_AFTER_NS))

        assert mine.fewest_elsewhere() is None
        mine.release()


class _Connections(serving._State):
    """A server state holding `n` stand-in connections."""

    def __init__(self, table: ConnectionTable, n: int) -> None:
        super().__init__()
        self.table = table
        self.connections = {object() for _ in range(n)}  # type: ignore[misc]


def _stop(process: subprocess.Popen[str]) -> None:
    assert process.stdin is not None
    process.stdin.close()
    process.wait(timeout=10)


class TestShareWithNewcomers:
    """A worker ends its connections beyond an even share once, when a new worker appears."""

    def test_a_new_worker_gets_the_excess_once(self, tmp_path: Path) -> None:
        path = tmp_path / "connections"
        state = _Connections(ConnectionTable(path), 16)
        state.share_with_newcomers()  # first look: its peers at start are nobody new
        assert state.to_shed == 0
        newcomer = _publisher(path, 0)
        try:
            state.share_with_newcomers()
            assert state.to_shed == 8, "16 of 16 held: 8 go to the newcomer"
            state.to_shed = 0  # ended by the next 8 responses
            state.share_with_newcomers()
            assert state.to_shed == 0, "a worker already seen is not new again"
        finally:
            _stop(newcomer)

    def test_at_start_and_at_an_even_share_nothing_moves(self, tmp_path: Path) -> None:
        path = tmp_path / "connections"
        peer = _publisher(path, 9)
        try:
            state = _Connections(ConnectionTable(path), 7)
            state.share_with_newcomers()
            assert state.to_shed == 0, "a peer running when this worker started is not new"
            newcomer = _publisher(path, 0)
            try:
                state.share_with_newcomers()
                assert state.to_shed == 1, "7 held of 16 over three workers: a share is 6"
            finally:
                _stop(newcomer)
        finally:
            _stop(peer)

    def test_what_is_not_ended_in_time_is_not_ended_later(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        path = tmp_path / "connections"
        state = _Connections(ConnectionTable(path), 4)
        state.share_with_newcomers()
        newcomer = _publisher(path, 0)
        try:
            state.share_with_newcomers()
            assert state.to_shed == 2
            later = time.monotonic() + serving.SHED_SECONDS + 1
            monkeypatch.setattr(time, "monotonic", lambda: later)
            state.share_with_newcomers()
            assert state.to_shed == 0, "idle connections: the keep-alive timeout ends them"
        finally:
            _stop(newcomer)

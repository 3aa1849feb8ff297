"""The bench harness: wrk's real output is read back, and a missed target is reported."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from bench import e2e, wrk
from bench.profiles import PROFILES
from bench.report import make_row, markdown, missed, write_results

needs_wrk = pytest.mark.skipif(
    shutil.which("wrk") is None, reason="wrk is not installed (apt-get install wrk)"
)
ONE_SECOND = wrk.WrkSettings(threads=1, connections=2, seconds=1)


@dataclass
class _Recorder:
    """A tiny HTTP/1.1 keep-alive server recording each request; /fail answers 500."""

    url: str = ""
    requests: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while request_line := await reader.readline():
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
            self.requests.append((request_line.decode().strip(), headers, body))
            status = b"500 Oops" if b" /fail " in request_line else b"200 OK"
            writer.write(b"HTTP/1.1 " + status + b"\r\nContent-Length: 2\r\n\r\nok")
            await writer.drain()
        writer.close()


@pytest.fixture
async def recorder() -> AsyncIterator[_Recorder]:
    recorder = _Recorder()
    server = await asyncio.start_server(recorder.handle, "127.0.0.1", 0)
    recorder.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    async with server:
        yield recorder


@needs_wrk
class TestWrkRun:
    """bench.wrk drives a real server with request.lua and parses the done() summary."""

    async def test_summary_counts_requests_and_orders_percentiles(
        self, recorder: _Recorder
    ) -> None:
        result = await wrk.run(f"{recorder.url}/live", ONE_SECOND)

        assert result.requests > 0
        assert result.error_count == 0
        assert result.rate > 0
        latency = result.latency_ms
        assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"]
        assert latency["p99"] <= latency["max"]

    async def test_post_body_type_and_rotating_tokens_reach_the_server(
        self, recorder: _Recorder
    ) -> None:
        body = json.dumps({"kind": "demo.countdown"})
        await wrk.run(
            f"{recorder.url}/v1/jobs",
            ONE_SECOND,
            method="POST",
            body=body,
            content_type="application/json",
            tokens=("alice", "bob"),
        )

        line, headers, sent = recorder.requests[0]
        assert line == "POST /v1/jobs HTTP/1.1"
        assert headers["content-type"] == "application/json"
        assert sent == body.encode()
        seen = {headers["authorization"] for _, headers, _ in recorder.requests}
        assert seen == {"Bearer alice", "Bearer bob"}

    async def test_tokens_from_a_file_are_taken_in_turn(
        self, recorder: _Recorder, tmp_path: Path
    ) -> None:
        tokens = [f"user-{index}" for index in range(3000)]
        tokens_file = tmp_path / "tokens.txt"
        tokens_file.write_text("\n".join(tokens) + "\n")

        result = await wrk.run(f"{recorder.url}/v1/jobs", ONE_SECOND, tokens_file=tokens_file)

        sent = Counter(headers["authorization"] for _, headers, _ in recorder.requests)
        assert result.requests > 0
        assert set(sent) <= {f"Bearer {token}" for token in tokens}
        # Each request takes the next user: none twice before every other had a turn.
        counts = [sent[f"Bearer {token}"] for token in tokens]
        assert max(counts) - min(counts) <= 1

    async def test_host_header_names_the_service_not_the_address(self, recorder: _Recorder) -> None:
        await wrk.run(f"{recorder.url}/live", ONE_SECOND, host="api.onrender.com")

        assert {headers["host"] for _, headers, _ in recorder.requests} == {"api.onrender.com"}

    async def test_error_statuses_are_counted(self, recorder: _Recorder) -> None:
        result = await wrk.run(f"{recorder.url}/fail", ONE_SECOND)

        assert result.errors["status"] == result.requests > 0


class TestParsing:
    """Output without the summary line is an error, never a zero result."""

    def test_missing_summary_raises(self) -> None:
        with pytest.raises(wrk.WrkError, match="BENCH_JSON"):
            wrk.parse_output("Running 1s test @ http://127.0.0.1:1/\n")


class TestReport:
    """Rows judge ratios and limits; results.md shows a miss; the files are written."""

    def test_ratio_below_target_is_a_miss(self) -> None:
        row = make_row(
            "API overhead", "GET /", ours=70, baseline=100, unit="req/s", target=0.85,
            higher_is_better=True,
        )  # fmt: skip

        assert row["ratio"] == 0.7
        assert row["target"] == ">= 0.85x"
        assert row["met"] is False

    def test_latency_limit_without_baseline(self) -> None:
        row = make_row(
            "End-to-end", "p50", ours=12.5, baseline=None, unit="ms", target=25,
            higher_is_better=False,
        )  # fmt: skip

        assert row["ratio"] is None
        assert row["target"] == "<= 25 ms"
        assert row["met"] is True

    def test_errors_make_a_row_a_miss_whatever_the_figures(self) -> None:
        row = make_row(
            "Read", "GET", ours=200, baseline=100, unit="req/s", target=0.5,
            higher_is_better=True, note="p99 1 ms", valid=False,
        )  # fmt: skip

        assert row["met"] is False
        assert row["note"].startswith("ERRORS")

    def test_end_to_end_names_why_jobs_did_not_complete(self) -> None:
        # Four of six jobs missing: one accepted and never seen to succeed, two
        # refused by the active-job limit, one exchange broken. A refusal is not a loss.
        run = e2e._Run()
        run.sent = {"a": 0.0, "b": 0.0, "c": 0.0}
        run.received = {"a": 0.010, "b": 0.020}
        run.refused[429] += 2
        run.broken = 1
        profile = PROFILES["quick"]

        rows, detail = e2e._rows(run, profile, 6, {"api": 0.02})

        assert detail["latencies_ms"] == [10.0, 20.0]
        assert all(row["met"] is False for row in rows)
        assert (
            "not completed 4 (1 accepted and not seen to succeed, 2 answered 429, "
            "1 exchanges broken); api CPU 10.00 ms/job"
        ) in rows[0]["note"]

    def test_informative_rows_are_neither_targets_nor_misses(self) -> None:
        # `--strict` exits 1 exactly when `missed` is not empty.
        informative = {
            "scenario": "fan-out", "metric": "server CPU per frame", "ours": 12.5,
            "baseline": 21.3, "unit": "us", "ratio": 1.7, "target": "-", "met": None, "note": "",
        }  # fmt: skip
        kept = make_row("A", "x", ours=90, baseline=100, unit="req/s", target=0.85,
                        higher_is_better=True)  # fmt: skip
        lost = make_row("B", "y", ours=3, baseline=1, unit="ms", target=2, higher_is_better=False)

        assert missed([informative, kept]) == []
        assert missed([informative, kept, lost]) == [lost]
        assert "1 of 2 targets met." in markdown([informative, kept, lost], {})

    def test_results_are_written_with_the_miss_visible(self, tmp_path: Path) -> None:
        rows = [
            make_row("A", "x", ours=90, baseline=100, unit="req/s", target=0.85,
                     higher_is_better=True),
            make_row("B", "y", ours=3, baseline=1, unit="ms", target=2, higher_is_better=False),
        ]  # fmt: skip
        details = {
            "e2e": {"rate": 50, "latencies_ms": [5.0, 7.5, 30.0]},
            "login_storm": {
                "idle_ms": {"p50": 1, "p90": 1, "p99": 2, "p99.9": 3},
                "loaded_ms": {"p50": 2, "p90": 3, "p99": 6, "p99.9": 9},
                "logins_per_second": 20,
            },
        }
        facts = {
            "cpu": "test",
            "profile": "quick",
            "overrides": {"RATE_LIMIT_AUTH": "100000000/minute (limits lifted)"},
        }

        write_results(rows, facts, details, tmp_path)

        text = (tmp_path / "results.md").read_text()
        assert text == markdown(rows, facts)
        assert "- `RATE_LIMIT_AUTH`: 100000000/minute (limits lifted)" in text
        assert "| B | y | 3.00 | 1.00 | ms | 3.00 | <= 2x | **no** |" in text
        assert "1 of 2 targets met." in text
        assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows
        for name in ("ratios.png", "e2e_latency.png", "login_storm.png"):
            assert (tmp_path / name).read_bytes().startswith(b"\x89PNG")

"""wrk, the HTTP load generator: run it with bench/lua/request.lua and read its JSON summary."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SCRIPT = Path(__file__).resolve().parent / "lua" / "request.lua"
MARKER = "BENCH_JSON "
INSTALL_HINT = "wrk is missing: install it (Debian/Ubuntu: apt-get install wrk)"


class WrkError(RuntimeError):
    """Raised when wrk is missing, fails, or prints no summary."""


@dataclass(frozen=True)
class WrkSettings:
    """What ours and the baseline are driven with, identically."""

    threads: int
    connections: int
    seconds: float


@dataclass(frozen=True)
class WrkResult:
    """One wrk run: completed requests, errors (4xx/5xx count as `status`) and latency in ms."""

    requests: int
    seconds: float
    errors: dict[str, int]
    latency_ms: dict[str, float]

    @property
    def rate(self) -> float:
        """Completed requests per second."""
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def describe_errors(self) -> str:
        """`0`, or the count and its kinds: `7: timeout 5, status 2`."""
        kinds = ", ".join(f"{kind} {count}" for kind, count in self.errors.items() if count)
        return f"{self.error_count}: {kinds}" if kinds else "0"


def wrk_path() -> str:
    """The wrk executable; `WrkError` with how to install it when absent."""
    path = shutil.which("wrk")
    if path is None:
        raise WrkError(INSTALL_HINT)
    return path


def parse_output(output: str) -> WrkResult:
    """The result from wrk's output: the line request.lua's done() prints."""
    for line in output.splitlines():
        if line.startswith(MARKER):
            data: dict[str, Any] = json.loads(line[len(MARKER) :])
            break
    else:
        raise WrkError(f"no {MARKER.strip()} line in wrk's output:\n{output}")
    latency = {name: value / 1000 for name, value in data["latency_us"].items()}
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6,
        errors={name: int(count) for name, count in data["errors"].items()},
        latency_ms=latency,
    )


def command(
    url: str,
    settings: WrkSettings,
    *,
    method: str = "GET",
    body: str = "",
    content_type: str = "",
    tokens: tuple[str, ...] = (),
    tokens_file: Path | None = None,
    host: str = "",
) -> list[str]:
    """The wrk command line for one run; `host` is sent as the Host header (else the URL's).

    The tokens are arguments, or with `tokens_file` read from that file (one per line).
    """
    return [
        wrk_path(),
        f"--threads={settings.threads}",
        f"--connections={settings.connections}",
        f"--duration={max(1, round(settings.seconds))}s",
        "--timeout=5s",
        f"--script={SCRIPT}",
        *([f"--header=Host: {host}"] if host else []),
        url,
        "--",
        method,
        body,
        content_type,
        *([f"@{tokens_file}"] if tokens_file is not None else tokens),
    ]


async def run(url: str, settings: WrkSettings, **request: Any) -> WrkResult:
    """Drive `url` for `settings.seconds`; the parsed summary."""
    process = await asyncio.create_subprocess_exec(
        *command(url, settings, **request),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:  # cancelled: never leave a wrk running
            process.kill()
            await process.wait()
    text = output.decode(errors="replace")
    if process.returncode != 0:
        raise WrkError(f"wrk exited with {process.returncode}:\n{text}")
    return parse_output(text)

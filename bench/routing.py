"""Routing: `WS_ROUTING=pattern` against `per_user` with many realtime processes.

For each routing it starts realtime's startCommand (render.yaml's env, as
`bench.fanout` does) with `WEB_CONCURRENCY=8` and `WS_ROUTING` set, on a Redis
of its own (embedded unless `REDIS_URL` is set, so nothing else moves its
counters), connects one socket for each of `USERS` users (the kernel spreads
them over the 8 processes), then publishes events round-robin over the users
at growing rates. Per step: Redis output bytes per event (`INFO stats`
`total_net_output_bytes`, which also counts the publisher's replies, the same
in both modes), the realtime processes' CPU per second (mean per process), and
the p99 of publish-to-receive latency.

Overrides beyond bench.fanout's: `WEB_CONCURRENCY=8` and `WS_ROUTING`.
Alone: `python -m bench.routing`; results in `bench/results/routing.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import shutil
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any

from redis.asyncio import Redis

from bench.fanout import (
    ROOT,
    Servers,
    _Audience,
    _call_all,
    _ClientProcess,
    _connect,
    _raise_fd_limit,
    _server,
    _step,
    standalone_stack,
)
from bench.stack import Stack

PROCESSES = 8
USERS = 400
RATES = (250.0, 1_000.0, 3_000.0)
STEP_SECONDS = 3.0


async def _output_bytes(redis: Redis) -> int:
    return int((await redis.info("stats"))["total_net_output_bytes"])


async def _routing(
    mode: str, *, stack: Stack, redis: Redis, tokens: dict[uuid.UUID, str], log_dir: Path
) -> list[dict[str, Any]]:
    prefix = f"{stack.prefix}routing-{secrets.token_hex(3)}:"
    servers = Servers.from_stack(stack, prefix)
    servers.env.update(WEB_CONCURRENCY=str(PROCESSES), WS_ROUTING=mode)
    rows = []
    async with _server("ours", servers=servers, log_dir=log_dir) as (port, workers):
        clients = [await _ClientProcess.start(index) for index in range(2)]
        try:
            host = servers.env.get("ALLOWED_HOSTS", "localhost").split(",")[0]
            await _connect(clients, port, host, list(tokens.values()))
            await _call_all(clients, {"cmd": "reset"})
            audience = _Audience(clients, workers, redis, prefix, list(tokens), per_user=1)
            for rate in RATES:
                before = await _output_bytes(redis)
                step = await _step(audience, rate=rate, seconds=STEP_SECONDS)
                published = step.expected
                rows.append({
                    "routing": mode,
                    "processes": PROCESSES,
                    "users": len(tokens),
                    "events_per_s": rate,
                    "delivered": f"{step.delivered}/{step.expected}",
                    "redis_out_bytes_per_event": round(
                        (await _output_bytes(redis) - before) / max(published, 1)
                    ),
                    "cpu_per_process_pct": round(
                        100 * step.server_cpu / PROCESSES / STEP_SECONDS, 1
                    ),
                    "p99_ms": round(step.p99 * 1000, 1),
                })  # fmt: skip
                print(json.dumps(rows[-1]), flush=True)
        finally:
            for client in clients:
                await client.close()
    return rows


async def run_routing(stack: Stack) -> list[dict[str, Any]]:
    """Both routings, one after the other, on the same Redis and users; the table rows."""
    _raise_fd_limit()
    users = [uuid.uuid4() for _ in range(USERS)]
    tokens = dict(zip(users, stack.tokens_for(users), strict=True))
    redis = Redis.from_url(stack.redis_url, socket_timeout=10)
    log_dir = Path(tempfile.mkdtemp(prefix="routing-logs-"))
    try:
        rows = []
        for mode in ("pattern", "per_user"):
            rows += await _routing(mode, stack=stack, redis=redis, tokens=tokens, log_dir=log_dir)
        return rows
    finally:
        await redis.aclose()
        shutil.rmtree(log_dir, ignore_errors=True)


def plot(rows: list[dict[str, Any]], out_dir: Path) -> None:
    """Redis output and p99 against the published rate, one line per routing: `routing.png`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 4))
    for mode, style in (("pattern", "--s"), ("per_user", "-o")):
        mine = [row for row in rows if row["routing"] == mode]
        rates = [int(row["delivered"].split("/")[1]) / STEP_SECONDS for row in mine]
        kib_per_s = [
            rate * row["redis_out_bytes_per_event"] / 1024
            for rate, row in zip(rates, mine, strict=True)
        ]
        left.plot(rates, kib_per_s, style, label=mode)
        right.plot(rates, [row["p99_ms"] for row in mine], style, label=mode)
    left.set_xlabel("events published per second")
    left.set_ylabel("Redis output (KiB/s)")
    right.set_xlabel("events published per second")
    right.set_ylabel("p99 publish-to-receive (ms)")
    right.set_yscale("log")
    fig.suptitle(f"Realtime routing: {PROCESSES} processes, {USERS} users with one socket each")
    left.legend()
    fig.tight_layout()
    fig.savefig(out_dir / "routing.png", dpi=110)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    with standalone_stack("routing") as stack:
        rows = asyncio.run(run_routing(stack))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "routing.json").write_text(json.dumps(rows, indent=2) + "\n")
    plot(rows, args.out)
    json.dump(rows, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()

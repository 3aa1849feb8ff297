"""`python3 scripts/stack_ready.py --api HOST:PORT --realtime HOST:PORT [--console HOST:PORT]`.

Waits until the API's and the realtime service's `/health/ready` (and the job
console's page) answer 200, then prints where everything is:

    API        http://127.0.0.1:8000
    docs       http://127.0.0.1:8000/docs
    WebSocket  ws://127.0.0.1:8001/ws
    console    http://127.0.0.1:8002

`make up` and `make dev` both print this. Standard library only, so `make up`
needs nothing but Docker and Python. Exit 0 once all answered, 1 (naming the
ones that did not) after `--timeout` seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
import urllib.error
import urllib.request


def _answers_200(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 (http URLs we print)
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def wait_until_ready(urls: list[str], *, timeout: float) -> list[str]:
    """Poll until every URL answers 200; the ones that still do not after `timeout`."""
    deadline = time.monotonic() + timeout
    pending = list(urls)
    while pending:
        pending = [url for url in pending if not _answers_200(url)]
        if pending and time.monotonic() > deadline:
            break
        if pending:
            time.sleep(0.5)  # poll interval
    return pending


def banner(*, api: str, realtime: str, console: str | None) -> str:
    """Where the stack is, one `name  URL` line each."""
    lines = [
        f"API        http://{api}",
        f"docs       http://{api}/docs",
        f"WebSocket  ws://{realtime}/ws",
    ]
    if console:
        lines.append(f"console    http://{console}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Wait for the stack, then print its URLs."""
    parser = argparse.ArgumentParser(prog="stack_ready", description=__doc__.splitlines()[0])
    parser.add_argument("--api", required=True, metavar="HOST:PORT")
    parser.add_argument("--realtime", required=True, metavar="HOST:PORT")
    parser.add_argument("--console", metavar="HOST:PORT")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    urls = [f"http://{args.api}/health/ready", f"http://{args.realtime}/health/ready"]
    if args.console:
        urls.append(f"http://{args.console}/")
    pending = wait_until_ready(urls, timeout=args.timeout)
    if pending:
        print(f"not ready after {args.timeout:g}s: {' '.join(pending)}", file=sys.stderr)
        return 1
    print(f"\n{banner(api=args.api, realtime=args.realtime, console=args.console)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

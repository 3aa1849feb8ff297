"""`python3 scripts/wait_http.py URL... [--timeout S]`: wait until every URL answers 200.

Standard library only, so `make up` needs nothing but Docker and Python.
Exit 0 when all answered 200, 1 (naming the ones that did not) on timeout.
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


def main(argv: list[str] | None = None) -> int:
    """Poll the URLs until all answer 200 or the timeout passes."""
    parser = argparse.ArgumentParser(prog="wait_http", description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="+")
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    pending = list(args.urls)
    while pending:
        pending = [url for url in pending if not _answers_200(url)]
        if pending and time.monotonic() > deadline:
            print(f"not ready after {args.timeout:g}s: {' '.join(pending)}", file=sys.stderr)
            return 1
        if pending:
            time.sleep(1)  # poll interval
    return 0


if __name__ == "__main__":
    sys.exit(main())

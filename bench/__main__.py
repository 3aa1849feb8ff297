"""`python -m bench [--profile quick|full] [--only a,b] [--out DIR] [--strict]`."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import uvloop

from bench import runner, wrk
from bench.profiles import PROFILES
from bench.report import machine_facts, markdown, missed, write_results
from bench.stack import database
from devharness.services import ROOT


def main(argv: list[str] | None = None) -> int:
    """Run the suite; 0 unless it could not run (or, with --strict, a target was missed)."""
    parser = argparse.ArgumentParser(prog="bench", description="The benchmark suite.")
    parser.add_argument("--profile", choices=sorted(PROFILES), default="quick")
    parser.add_argument(
        "--only", default=",".join(runner.SCENARIOS), help="comma-separated: %(default)s"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = parser.parse_args(argv)
    chosen = {name.strip() for name in args.only.split(",") if name.strip()}
    if unknown := chosen - set(runner.SCENARIOS):
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    try:
        wrk.wrk_path()
    except wrk.WrkError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    profile = PROFILES[args.profile]
    facts = machine_facts(profile.name)
    started = time.monotonic()
    run_dir = ROOT / ".run" / "bench" / str(os.getpid())
    run_dir.mkdir(parents=True, exist_ok=True)
    with database() as (urls, database_url):
        rows, details = uvloop.run(
            runner.run(
                urls,
                database_url,
                profile=profile,
                chosen=chosen,
                out_dir=args.out,
                run_dir=run_dir,
            )
        )
    facts["wall_seconds"] = round(time.monotonic() - started)
    facts["overrides"] = details.pop("overrides", {})
    write_results(rows, facts, details, args.out)
    print(markdown(rows, facts))
    print(f"bench: results in {args.out}")
    return 1 if args.strict and missed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())

"""`python -m jobsclient`: watch your job events live, with a progress bar per job.

    python -m jobsclient --email ada@example.com --password '...' --until-done JOB_ID
    python -m jobsclient --token "$TOKEN" --last-event-id 1700000000000-0
    python -m jobsclient --token "$TOKEN" --json | jq .   # for scripts

Logs in through the API (or takes an access token), connects to the realtime
service with a single-use ticket (or the bearer token), and draws a progress
bar for each job it hears about, with a one-line summary when a job finishes.
`--json` prints each event as one JSON line instead, and nothing else on
stdout (messages go to stderr). A dropped connection is reopened with backoff
and resumed from the last event id, so nothing is missed or shown twice.
`--last-event-id 0-0` replays everything the stream still holds. Exit status
with `--until-done`: 0 when the job succeeded, 1 when it failed or was
cancelled; 2 when the credentials are refused.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn

from common.contracts.events import (
    JOB_CANCELLED,
    JOB_FAILED,
    JOB_PROGRESS,
    JOB_REQUEUED,
    JOB_SUCCEEDED,
)
from common.contracts.jobs import FINAL_STATES, JobState
from common.contracts.realtime import MESSAGE_ERROR, MESSAGE_RESET
from jobsclient._api import ApiClient, ApiError, Refused
from jobsclient._events import EventStream

FINAL_EVENTS = {JOB_SUCCEEDED: 0, JOB_FAILED: 1, JOB_CANCELLED: 1}
EXIT_REFUSED = 2
SUMMARY_CHARS = 160


def _exit_code_of(state: str) -> int | None:
    """0 for a job that succeeded, 1 for one that failed or was cancelled, None if running."""
    if state not in FINAL_STATES:
        return None
    return 0 if state == JobState.SUCCEEDED else 1


def _summary(data: dict[str, Any]) -> str:
    """A result in a few words: `steps=5`, or compact JSON for anything deeper."""
    result = data.get("result")
    if isinstance(result, dict) and all(not isinstance(v, dict | list) for v in result.values()):
        text = " ".join(f"{key}={value}" for key, value in result.items())
    elif result is None:
        text = ""
    else:
        text = json.dumps(result, separators=(",", ":"))
    return text if len(text) <= SUMMARY_CHARS else f"{text[: SUMMARY_CHARS - 1]}…"


@dataclass
class Watch:
    """What the client has seen: the bars, and the job to wait for.

    Events are drawn as progress bars (with a line per finished job) on `out`,
    or, with `as_json`, written to stdout as JSON lines and nothing else.
    """

    out: Console
    progress: Progress | None
    until_done: str | None
    bars: dict[str, TaskID] = field(default_factory=dict)
    exit_code: int | None = None

    def show(self, event: dict[str, Any]) -> None:
        """Print one event, or move its job's bar."""
        if self.progress is None:
            sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
            sys.stdout.flush()
        else:
            self._draw(event, self.progress)
        job_id = event.get("job_id")
        if event["type"] in FINAL_EVENTS and job_id == self.until_done:
            self.exit_code = FINAL_EVENTS[event["type"]]

    def _draw(self, event: dict[str, Any], progress: Progress) -> None:
        job_id = event.get("job_id")
        if not isinstance(job_id, str):
            return
        data = event.get("data") or {}
        bar = self.bars.get(job_id)
        if bar is None:
            bar = progress.add_task(f"job {job_id[:8]}", total=100)
            self.bars[job_id] = bar
        kind = event["type"]
        line = None
        if kind == JOB_PROGRESS:
            progress.update(bar, completed=int(data.get("progress", 0)))
        elif kind == JOB_SUCCEEDED:
            progress.update(bar, completed=100)
            summary = _summary(data)
            line = f"job {job_id[:8]} succeeded{': ' + summary if summary else ''}"
        elif kind in FINAL_EVENTS:
            error = str(data.get("error") or "")[:SUMMARY_CHARS]
            state = kind.removeprefix("job.")
            line = f"job {job_id[:8]} {state}{': ' + error if error else ''}"
        elif kind == JOB_REQUEUED:
            retry = data.get("retry_in")
            line = f"job {job_id[:8]} requeued" + (f", retry in {retry} s" if retry else "")
        if line is not None:
            progress.console.print(line, markup=False, highlight=False)


async def _reset(watch: Watch, api: ApiClient) -> None:
    """The server lost our position: the watched job's state comes from the API instead."""
    watch.out.print("reset: the server no longer holds our position", style="bold")
    if watch.until_done is None:
        return
    try:
        state = (await api.get_job(watch.until_done))["state"]
    except (ApiError, httpx.HTTPError) as exc:  # the live events still tell us the end
        watch.out.print(f"cannot read job {watch.until_done}: {exc}", markup=False)
        return
    watch.exit_code = _exit_code_of(state)
    if watch.exit_code is not None:
        watch.out.print(f"job {watch.until_done} is {state}")


async def watch_events(args: argparse.Namespace, out: Console) -> int:
    """Connect, resume and show events until the watched job ends (or forever)."""
    progress = None
    if not args.json:
        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
        progress = Progress(*columns, console=out, transient=False)
    watch = Watch(out, progress, args.until_done)
    api = ApiClient(args.api, token=args.token, email=args.email, password=args.password)
    stream = EventStream(
        api,
        args.ws,
        last_event_id=args.last_event_id,
        on_status=lambda text: out.print(text, markup=False),
    )
    async with api, contextlib.aclosing(stream.events()) as messages:
        with progress if progress is not None else contextlib.nullcontext():
            try:
                async for message in messages:
                    if message["type"] == MESSAGE_RESET:
                        await _reset(watch, api)
                    elif message["type"] == MESSAGE_ERROR:
                        out.print(f"server error: {message}", markup=False)
                    else:
                        watch.show(message)
                    if watch.exit_code is not None:
                        return watch.exit_code
            except Refused as exc:
                out.print(str(exc), markup=False)
                return EXIT_REFUSED
    return EXIT_REFUSED  # the stream only ends by refusal


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m jobsclient", description="Watch your job events live."
    )
    parser.add_argument("--api", default="http://127.0.0.1:8000", help="the API's base URL")
    parser.add_argument("--ws", default="ws://127.0.0.1:8001/ws", help="the WebSocket URL")
    parser.add_argument("--token", help="an access token (else --email and --password)")
    parser.add_argument("--email")
    parser.add_argument("--password")
    parser.add_argument("--last-event-id", help="resume after this event id (0-0: all kept)")
    parser.add_argument("--until-done", metavar="JOB_ID", help="exit when this job finishes")
    parser.add_argument(
        "--json",
        action="store_true",
        help="print each event as a JSON line (nothing else on stdout) instead of progress bars",
    )
    args = parser.parse_args(argv)
    if args.token is None and not (args.email and args.password):
        parser.error("give --token, or --email and --password")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # With --json, stdout carries the events alone: every message goes to stderr.
    out = Console(soft_wrap=True, stderr=args.json)
    with contextlib.suppress(KeyboardInterrupt):
        return asyncio.run(watch_events(args, out))
    return 130


if __name__ == "__main__":
    sys.exit(main())

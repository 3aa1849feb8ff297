"""`python -m realtime.client`: watch your job events live, with a progress bar per job.

    python -m realtime.client --email ada@example.com --password '...' --until-done JOB_ID
    python -m realtime.client --token "$TOKEN" --last-event-id 1700000000000-0
    python -m realtime.client --token "$TOKEN" --json | jq .   # for scripts

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
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import httpx
import websockets
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TaskProgressColumn, TextColumn
from websockets.asyncio.client import ClientConnection

FINAL_EVENTS = {"job.succeeded": 0, "job.failed": 1, "job.cancelled": 1}
FINAL_STATES = {"succeeded": 0, "failed": 1, "cancelled": 1}
POLICY_VIOLATION = 1008
EXIT_REFUSED = 2
MAX_BACKOFF = 5.0
HTTP_TIMEOUT = 10.0


class Refused(Exception):
    """Raised when the API or the realtime service refuses our credentials."""


SUMMARY_CHARS = 160


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
    """What the client has seen: the last event id, the bars, and the job to wait for.

    Events are drawn as progress bars (with a line per finished job) on `out`,
    or, with `as_json`, written to stdout as JSON lines and nothing else.
    """

    out: Console
    progress: Progress | None
    until_done: str | None
    last_event_id: str | None
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
        if kind == "job.progress":
            progress.update(bar, completed=int(data.get("progress", 0)))
        elif kind == "job.succeeded":
            progress.update(bar, completed=100)
            summary = _summary(data)
            progress.console.print(
                f"job {job_id[:8]} succeeded{': ' + summary if summary else ''}",
                markup=False,
                highlight=False,
            )
        elif kind in FINAL_EVENTS:
            error = str(data.get("error") or "")[:SUMMARY_CHARS]
            state = kind.removeprefix("job.")
            line = f"job {job_id[:8]} {state}{': ' + error if error else ''}"
            progress.console.print(line, markup=False, highlight=False)
        elif kind == "job.requeued":
            retry = data.get("retry_in")
            line = f"job {job_id[:8]} requeued" + (f", retry in {retry} s" if retry else "")
            progress.console.print(line, markup=False, highlight=False)


@dataclass
class Credentials:
    """How we authenticate: a fixed token, or an email and password to log in with."""

    api: httpx.AsyncClient
    token: str | None
    email: str | None
    password: str | None

    async def access_token(self, *, fresh: bool = False) -> str:
        if self.token is not None and not (fresh and self.email):
            return self.token
        response = await self.api.post(
            "/v1/auth/token", data={"username": self.email, "password": self.password}
        )
        if response.status_code != 200:
            raise Refused(f"login refused ({response.status_code}): {response.text[:200]}")
        self.token = str(response.json()["access_token"])
        return self.token

    async def handshake(self, ws_url: str, last_event_id: str | None) -> tuple[str, dict[str, str]]:
        """The URL and headers of the next handshake: a ticket when we can log in."""
        query: dict[str, str] = {}
        headers: dict[str, str] = {}
        token = await self.access_token()
        if self.email is not None:
            response = await self.api.post(
                "/v1/realtime/ticket", headers={"Authorization": f"Bearer {token}"}
            )
            if response.status_code == 401:  # the access token expired: log in again
                token = await self.access_token(fresh=True)
                response = await self.api.post(
                    "/v1/realtime/ticket", headers={"Authorization": f"Bearer {token}"}
                )
            if response.status_code != 201:
                raise Refused(f"ticket refused ({response.status_code}): {response.text[:200]}")
            query["ticket"] = response.json()["ticket"]
        else:
            headers["Authorization"] = f"Bearer {token}"
        if last_event_id:
            query["last_event_id"] = last_event_id
        separator = "&" if "?" in ws_url else "?"
        return (f"{ws_url}{separator}{urlencode(query)}" if query else ws_url), headers


async def _ping_every(socket: ClientConnection, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        await socket.send(json.dumps({"type": "ping"}))


async def _job_state(credentials: Credentials, job_id: str) -> str | None:
    token = await credentials.access_token()
    response = await credentials.api.get(
        f"/v1/jobs/{job_id}", headers={"Authorization": f"Bearer {token}"}
    )
    return str(response.json()["state"]) if response.status_code == 200 else None


async def _session(socket: ClientConnection, watch: Watch, credentials: Credentials) -> None:
    pinger: asyncio.Task[None] | None = None
    try:
        async for raw in socket:
            message = json.loads(raw)
            kind = message.get("type")
            if kind == "hello":
                idle = float(message["limits"]["idle_timeout_seconds"])
                pinger = asyncio.create_task(_ping_every(socket, max(1.0, min(30.0, idle / 3))))
            elif kind == "reset":
                watch.out.print("reset: the server no longer holds our position", style="bold")
                watch.last_event_id = None
                if watch.until_done:
                    state = await _job_state(credentials, watch.until_done)
                    if state in FINAL_STATES:
                        watch.out.print(f"job {watch.until_done} is {state}")
                        watch.exit_code = FINAL_STATES[state]
            elif kind in {"pong", "error"}:
                if kind == "error":
                    watch.out.print(f"server error: {message}", markup=False)
            elif "id" in message:
                watch.last_event_id = str(message["id"])
                watch.show(message)
            if watch.exit_code is not None:
                return
    finally:
        if pinger is not None:
            pinger.cancel()


async def watch_events(args: argparse.Namespace, out: Console) -> int:
    """Connect, resume and show events until the watched job ends (or forever)."""
    progress = None
    if not args.json:
        columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn())
        progress = Progress(*columns, console=out, transient=False)
    watch = Watch(out, progress, args.until_done, args.last_event_id)
    failures = 0
    async with httpx.AsyncClient(base_url=args.api, timeout=HTTP_TIMEOUT) as api:
        credentials = Credentials(api, args.token, args.email, args.password)
        with progress if progress is not None else contextlib.nullcontext():
            while watch.exit_code is None:
                try:
                    url, headers = await credentials.handshake(args.ws, watch.last_event_id)
                    async with websockets.connect(
                        url, additional_headers=headers, open_timeout=HTTP_TIMEOUT
                    ) as socket:
                        failures = 0
                        await _session(socket, watch, credentials)
                except Refused as exc:
                    out.print(str(exc), markup=False)
                    return EXIT_REFUSED
                except websockets.ConnectionClosed as exc:
                    code = exc.rcvd.code if exc.rcvd is not None else None
                    out.print(f"disconnected ({code}); reconnecting", markup=False)
                    if code == POLICY_VIOLATION and credentials.email is None:
                        return EXIT_REFUSED
                except (OSError, httpx.TransportError, websockets.InvalidHandshake) as exc:
                    out.print(f"cannot connect ({type(exc).__name__}); retrying")
                if watch.exit_code is None:
                    failures += 1
                    ceiling = min(MAX_BACKOFF, 0.2 * 2 ** min(failures, 6))
                    await asyncio.sleep(random.uniform(ceiling / 2, ceiling))  # noqa: S311
    return watch.exit_code


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m realtime.client", description="Watch your job events live."
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

"""The HTTP scenarios, each measured with wrk against ours and a baseline in the same run.

1. API overhead: `GET /health/live`, full production app vs bare FastAPI.
2. Authenticated read: `GET /v1/jobs/{id}` with a JWT vs a raw asyncpg lookup.
3. Job intake: `POST /v1/jobs` vs a bare script's Celery send rate.
5. Login storm: `GET /health/live` p99 alone vs while Argon2 logins run flat out.
"""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import uuid
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode

import httpx

from api.settings import ApiSettings
from bench import wrk
from bench.profiles import Profile
from bench.report import Row, make_row
from bench.stack import PASSWORD, PYTHON, Stack, Web
from common.contracts.job_kinds import DEMO_COUNTDOWN

NOOP_JOB = {"kind": DEMO_COUNTDOWN, "params": {"steps": 1, "interval": 0}}
JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# The authenticated read's tail latency is judged at this many connections (issue 14).
TAIL_CONNECTIONS = 64
# The login storm starts this long before the probe, so the probe sees it at full tilt.
STORM_LEAD_SECONDS = 1.0
# The intake rate (jobs/s) its users are sized for: several times what two cores reach.
INTAKE_SIZED_FOR = 5000


@dataclass(frozen=True)
class User:
    email: str
    token: str


@dataclass(frozen=True)
class Targets:
    """The running API, the bare baseline, and a registered user with a token."""

    api: Web
    bare: Web
    users: tuple[User, ...]


async def register(api: Web, count: int) -> tuple[User, ...]:
    """Register `count` fresh users through the API and log each in (concurrently)."""

    async def post(client: httpx.AsyncClient, path: str, **request: Any) -> httpx.Response:
        # A 503 with Retry-After (no room to hash yet on a busy machine) is retried, as a
        # well-behaved client would.
        for _ in range(10):
            answer = await client.post(path, **request)
            if answer.status_code != 503 or "retry-after" not in answer.headers:
                break
            await asyncio.sleep(float(answer.headers["retry-after"]))
        answer.raise_for_status()
        return answer

    async def one(client: httpx.AsyncClient) -> User:
        email = f"bench-{uuid.uuid4().hex[:10]}@example.com"
        await post(client, "/v1/auth/register", json={"email": email, "password": PASSWORD})
        token = await post(client, "/v1/auth/token", data={"username": email, "password": PASSWORD})
        return User(email, token.json()["access_token"])

    async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=60) as client:
        return tuple(await asyncio.gather(*(one(client) for _ in range(count))))


async def _median_pair(
    ours: str, baseline: str, profile: Profile, **request: Any
) -> tuple[wrk.WrkResult, wrk.WrkResult]:
    """Warm both up, then alternate ours and the baseline; the median round of each.

    Both get the same requests, the Host header included.
    """
    warmup = replace(profile.wrk, seconds=profile.warmup_seconds)
    await wrk.run(ours, warmup, **request)
    await wrk.run(baseline, warmup, **request)
    ours_runs, baseline_runs = [], []
    for _ in range(profile.rounds):
        ours_runs.append(await wrk.run(ours, profile.wrk, **request))
        baseline_runs.append(await wrk.run(baseline, profile.wrk, **request))
    return _median(ours_runs), _median(baseline_runs)


def _median_p99(runs: list[wrk.WrkResult]) -> wrk.WrkResult:
    ranked = sorted(runs, key=lambda run: run.latency_ms["p99"])
    return ranked[len(ranked) // 2]


def _median(runs: list[wrk.WrkResult]) -> wrk.WrkResult:
    ranked = sorted(runs, key=lambda run: run.rate)
    return ranked[len(ranked) // 2]


def _errors(result: wrk.WrkResult) -> str:
    """The error count, and by kind when there are any (read errors are resets)."""
    kinds = ", ".join(f"{kind} {count}" for kind, count in result.errors.items() if count)
    return f"{result.error_count} ({kinds})" if kinds else "0"


def _note(ours: wrk.WrkResult, baseline: wrk.WrkResult) -> str:
    return (
        f"p99 {ours.latency_ms['p99']:.1f} ms vs {baseline.latency_ms['p99']:.1f} ms; "
        f"errors {_errors(ours)} vs {_errors(baseline)}"
    )


def _throughput_row(
    scenario: str, metric: str, ours: wrk.WrkResult, baseline: wrk.WrkResult, target: float
) -> Row:
    clean = ours.error_count == 0 and baseline.error_count == 0
    return make_row(
        scenario,
        metric,
        ours=ours.rate,
        baseline=baseline.rate,
        unit="req/s",
        target=target,
        higher_is_better=True,
        note=_note(ours, baseline),
        valid=clean,
    )


async def api_overhead(targets: Targets, profile: Profile) -> list[Row]:
    """`GET /health/live` through the production middleware stack vs the bare app."""
    ours, baseline = await _median_pair(
        f"{targets.api.url}/health/live",
        f"{targets.bare.url}/health/live",
        profile,
        host=targets.api.host,
    )
    return [_throughput_row("API overhead", "GET /health/live", ours, baseline, 0.85)]


async def authenticated_read(targets: Targets, profile: Profile) -> list[Row]:
    """`GET /v1/jobs/{id}` with a JWT (auth, rate limit, one row) vs a raw asyncpg lookup."""
    user = targets.users[0]
    api = targets.api
    async with httpx.AsyncClient(base_url=api.url, headers=api.headers, timeout=30) as client:
        answer = await client.post(
            "/v1/jobs", json=NOOP_JOB, headers={"Authorization": f"Bearer {user.token}"}
        )
        answer.raise_for_status()
    path = f"/v1/jobs/{answer.json()['id']}"
    ours, baseline = await _median_pair(
        f"{api.url}{path}", f"{targets.bare.url}{path}", profile, tokens=(user.token,),
        host=api.host,
    )  # fmt: skip
    wide = await wrk.run(
        f"{api.url}{path}", replace(profile.wrk, connections=TAIL_CONNECTIONS),
        tokens=(user.token,), host=api.host,
    )  # fmt: skip
    tail = make_row(
        "Authenticated read",
        f"GET /v1/jobs/{{id}} p99 vs p50, {TAIL_CONNECTIONS} connections",
        ours=wide.latency_ms["p99"],
        baseline=wide.latency_ms["p50"],
        unit="ms",
        target=4.0,
        higher_is_better=False,
        note=f"{wide.rate:,.0f} req/s; errors {_errors(wide)}",
        valid=wide.error_count == 0,
    )
    return [_throughput_row("Authenticated read", "GET /v1/jobs/{id}", ours, baseline, 0.5), tail]


async def _send_rate(stack: Stack, seconds: float) -> float:
    """Messages per second of bench/baselines/celery_send.py on this run's broker."""
    script = stack.start(
        "celery-send",
        [str(PYTHON), "-m", "bench.baselines.celery_send", str(seconds)],
    )
    code = await script.wait_exit(seconds + 60)
    await stack.stop(script)
    lines = script.log().strip().splitlines()
    if code != 0 or not lines:
        raise RuntimeError(f"celery_send failed ({code}):\n{script.log()}")
    result = json.loads(lines[-1])
    return float(result["sent"]) / float(result["seconds"])


def _intake_users(stack: Stack, seconds: float) -> int:
    """How many users `seconds` of intake needs for each to stay under the active-job limit.

    Sized for `INTAKE_SIZED_FOR` jobs a second under the shipped
    `JOBS_MAX_ACTIVE_PER_USER`, each request taking the next user.
    """
    shipped = ApiSettings.model_fields["jobs_max_active_per_user"].default
    limit = int(stack.resolved("api").get("JOBS_MAX_ACTIVE_PER_USER") or shipped)
    return math.ceil(INTAKE_SIZED_FOR * seconds / limit)


async def job_intake(targets: Targets, stack: Stack, profile: Profile) -> list[Row]:
    """`POST /v1/jobs` from many users vs the bare Celery send rate; no worker consumes.

    The active-job limit is the shipped one: each run (the warm-up, every round)
    spreads its jobs over users of its own, each of whom stays under it, as a
    service's traffic comes from many users. A 429 makes the row invalid. After
    each run its users, their jobs and the queue's messages are deleted.
    """
    url = f"{targets.api.url}/v1/jobs"

    async def run(settings: wrk.WrkSettings) -> tuple[wrk.WrkResult, int]:
        count = _intake_users(stack, settings.seconds)
        async with stack.minted_users(count) as users:
            tokens_file = stack.run_dir / f"intake-tokens-{uuid.uuid4().hex[:8]}.txt"
            tokens_file.write_text("\n".join(stack.tokens_for(users)) + "\n")
            result = await wrk.run(
                url,
                settings,
                method="POST",
                body=json.dumps(NOOP_JOB),
                content_type=JSON,
                tokens_file=tokens_file,
                host=targets.api.host,
            )
            tokens_file.unlink()
        await asyncio.to_thread(stack.purge_jobs_queue)
        return result, count

    await run(replace(profile.wrk, seconds=profile.warmup_seconds))
    runs, send_rates = [], []
    for _ in range(profile.rounds):
        runs.append(await run(profile.wrk))
        send_rates.append(await _send_rate(stack, profile.wrk.seconds))
        await asyncio.to_thread(stack.purge_jobs_queue)
    ours, users = sorted(runs, key=lambda run: run[0].rate)[len(runs) // 2]
    accepted = (ours.requests - ours.errors["status"]) / ours.seconds
    return [
        make_row(
            "Job intake",
            "POST /v1/jobs (2 API workers)",
            ours=accepted,
            baseline=statistics.median(send_rates),
            unit="jobs/s",
            target=0.5,
            higher_is_better=True,
            note=f"p99 {ours.latency_ms['p99']:.1f} ms; errors {_errors(ours)}; "
            f"{users:,} users, each under the shipped active-job limit; "
            "baseline: one process calling common.broker.send_job in a loop",
            valid=ours.error_count == 0,
        )
    ]


async def login_storm(targets: Targets, profile: Profile) -> tuple[list[Row], dict[str, Any]]:
    """`/health/live` latency on one connection, alone and during a storm of logins."""
    probe = replace(profile.wrk, connections=1)
    health = f"{targets.api.url}/health/live"
    host = targets.api.host
    user = targets.users[0]
    storm_request: dict[str, Any] = {
        "method": "POST",
        "body": urlencode({"username": user.email, "password": PASSWORD}),
        "content_type": FORM,
        "host": host,
    }
    storm_settings = replace(
        profile.wrk,
        connections=profile.storm_connections,
        seconds=profile.wrk.seconds + 2 * STORM_LEAD_SECONDS,
    )
    await wrk.run(health, replace(probe, seconds=profile.warmup_seconds), host=host)
    # Alone and during a storm, in turn; the median round of each (a shared machine is noisy).
    idle_runs, loaded_runs, storms = [], [], []
    for _ in range(profile.rounds):
        idle_runs.append(await wrk.run(health, probe, host=host))
        storm_task = asyncio.create_task(
            wrk.run(f"{targets.api.url}/v1/auth/token", storm_settings, **storm_request)
        )
        await asyncio.sleep(STORM_LEAD_SECONDS)
        loaded_runs.append(await wrk.run(health, probe, host=host))
        storms.append(await storm_task)
    idle, loaded = _median_p99(idle_runs), _median_p99(loaded_runs)
    storm = _median(storms)
    probe_errors = [run.describe_errors() for run in loaded_runs if run.error_count]
    note = (
        f"{storm.rate:.1f} logins/s on {profile.storm_connections} connections "
        f"(errors {storm.describe_errors()}); p50 {idle.latency_ms['p50']:.2f} -> "
        f"{loaded.latency_ms['p50']:.2f} ms"
        + (f"; probe errors {'; '.join(probe_errors)}" if probe_errors else "")
    )
    row = make_row(
        "Login storm",
        "GET /health/live p99: during logins vs idle",
        ours=loaded.latency_ms["p99"],
        baseline=idle.latency_ms["p99"],
        unit="ms",
        target=3.0,
        higher_is_better=False,
        note=note,
        valid=all(run.error_count == 0 for run in loaded_runs)
        and all(run.errors["status"] == 0 for run in storms),
    )
    detail = {
        "idle_ms": idle.latency_ms,
        "loaded_ms": loaded.latency_ms,
        "logins_per_second": storm.rate,
    }
    return [row], detail

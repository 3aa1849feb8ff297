"""The job console in a real Chromium, cross-origin against the real API and realtime service."""

from __future__ import annotations

import asyncio
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import APIResponse, Locator, Page, Route, expect
from redis.asyncio import Redis

from common.contracts.events import JOB_SUCCEEDED, make_event
from common.publisher import apublish_event
from devharness.polling import eventually
from tests.browser.conftest import PageLog, Pages
from tests.browser.stack import PASSWORD_MIN_LENGTH, BrowserStack

pytestmark = pytest.mark.system
PASSWORD = "correct horse battery staple"
# Set to a path to keep a picture of the console after the flow (`make docs-screenshots`).
SCREENSHOT = os.environ.get("CONSOLE_SCREENSHOT")


async def submit(page: Page, email: str, password: str, *, button: str) -> None:
    """Fill in the sign-in form and press `button` ("Sign up" or "Log in")."""
    await page.get_by_label("Email", exact=True).fill(email)
    await page.get_by_label("Password", exact=True).fill(password)
    await page.get_by_role("button", name=button).click()


async def sign_up(page: Page, console_url: str) -> str:
    """Open the console and sign up a new user; returns the email."""
    email = f"browser-{uuid.uuid4().hex[:8]}@example.com"
    await page.goto(console_url)
    await submit(page, email, PASSWORD, button="Sign up")
    await expect(page.get_by_role("heading", name="Start a job")).to_be_visible()
    await expect(page.locator("#connection")).to_have_attribute("data-state", "live")
    return email


async def page_token(page: Page) -> str:
    """The access token the page holds (sessionStorage)."""
    session = json.loads(await page.evaluate("sessionStorage.getItem('console.session')"))
    return str(session["token"])


async def start_countdown(page: Page, *, steps: int, interval: float) -> Locator:
    """Start a countdown from the form; returns its row once it is listed."""
    before = await page.locator("li.job").count()
    await page.get_by_label("Steps", exact=True).fill(str(steps))
    await page.get_by_label("Seconds between steps").fill(str(interval))
    await page.get_by_role("button", name="Start countdown").click()
    await expect(page.locator("li.job")).to_have_count(before + 1)
    return page.locator("li.job").first  # newest first


async def running_countdown(page: Page, *, steps: int, interval: float) -> tuple[Locator, str]:
    """Start a countdown and wait until it runs; its row and its job id."""
    job = await start_countdown(page, steps=steps, interval=interval)
    await expect(job).to_have_attribute("data-state", "running")
    return job, str(await job.get_attribute("data-job-id"))


async def cancel(job: Locator) -> None:
    """Cancel the countdown of this row; returns once the row says it is cancelled."""
    await job.get_by_role("button", name=re.compile("^Cancel demo.countdown")).click()
    await expect(job).to_have_attribute("data-state", "cancelled")


class Console(NamedTuple):
    """A console page on which a new user has signed up: the page, its log, the user's email."""

    page: Page
    log: PageLog
    email: str


@pytest.fixture
async def console(browser_stack: BrowserStack, pages: Pages) -> Console:
    page, log = await pages.new()
    return Console(page, log, await sign_up(page, browser_stack.console_url))


class TestConsoleFlow:
    """Sign up, log in, live progress to 100 %, cancel, and a report table."""

    async def test_countdown_reaches_100_then_report_shows_its_table(
        self, console: Console
    ) -> None:
        page, log, email = console

        job = await start_countdown(page, steps=5, interval=0.2)
        progress = job.get_by_role("progressbar")
        await expect(progress).to_have_accessible_name(re.compile(r"^Progress of demo\.countdown"))
        await expect(progress).to_have_attribute("value", "100")
        await expect(job).to_have_attribute("data-state", "succeeded")
        await expect(job.locator(".state")).to_have_text("succeeded")
        await expect(job.get_by_role("button", name=re.compile("^Cancel"))).to_be_hidden()
        await expect(page.locator("#announcer")).to_have_attribute("aria-live", "polite")

        # Log out and back in: the finished job is listed from the API.
        await page.get_by_role("button", name="Log out").click()
        await submit(page, email, PASSWORD, button="Log in")
        await expect(page.locator("li.job")).to_have_count(1)
        await expect(page.locator("li.job").first).to_have_attribute("data-state", "succeeded")

        await page.get_by_role("button", name="Run report").click()
        report = page.locator("li.job").first
        await expect(report.locator(".kind")).to_have_text("report.jobs_summary")
        table = report.get_by_role("table")
        await expect(table.locator("caption")).to_have_text("Jobs summary: 1 other job")
        row = table.get_by_role("row", name=re.compile("demo.countdown"))
        await expect(row.get_by_role("cell")).to_have_text(
            ["1", "1", "0", "0", re.compile(r"\d"), re.compile(r"\d")]
        )
        if SCREENSHOT:
            await page.screenshot(path=Path(SCREENSHOT))

        assert log.errors == []
        assert log.websockets, "the progress came over no WebSocket"
        token_in_url = [url for url in log.websockets if "token" in url.split("?")[-1]]
        assert token_in_url == [], "a bearer token leaked into a WebSocket URL"

    async def test_cancel_a_running_job(self, console: Console) -> None:
        page, log, _ = console
        job = await start_countdown(page, steps=200, interval=0.1)
        await expect(job).to_have_attribute("data-progress", re.compile(r"^[1-9]"))

        await cancel(job)
        assert int(await job.get_attribute("data-progress") or "0") < 100
        assert log.errors == []


class TestCrossedAnswers:
    """An HTTP answer that arrives after the socket's news never moves a job back."""

    async def test_a_late_post_answer_leaves_a_running_job_running(self, console: Console) -> None:
        page, log, _ = console
        held: asyncio.Queue[tuple[Route, APIResponse]] = asyncio.Queue()

        async def hold_the_post(route: Route) -> None:
            if route.request.method == "POST":
                await held.put((route, await route.fetch()))  # the job is committed and sent
            else:
                await route.continue_()

        await page.route(re.compile(r"/v1/jobs$"), hold_the_post)
        await page.get_by_label("Steps", exact=True).fill("40")
        await page.get_by_label("Seconds between steps").fill("0.25")
        await page.get_by_role("button", name="Start countdown").click()
        route, answer = await held.get()
        job = page.locator("li.job").first
        # The socket's job.started comes first; the page fetches the job it does not know yet.
        await expect(job).to_have_attribute("data-state", "running")

        await route.fulfill(response=answer)  # now the POST's "queued" answer lands
        await expect(page.locator("#announcer")).to_contain_text(": queued")
        assert await job.get_attribute("data-state") == "running"

        await cancel(job)
        assert log.errors == []


class TestResume:
    """A dropped socket is reopened with a fresh ticket and last_event_id, and misses nothing."""

    async def test_resumes_after_realtime_restart_and_still_reaches_100(
        self, browser_stack: BrowserStack, console: Console
    ) -> None:
        page, log, _ = console
        job, job_id = await running_countdown(page, steps=8, interval=0.25)

        await browser_stack.stop_realtime()
        try:
            await expect(page.locator("#connection-text")).to_contain_text("Reconnecting")
            # The job finishes while no socket is open: only a resume can tell the page.
            await _wait_succeeded(page, browser_stack.api_url, job_id)
            assert await job.get_attribute("data-state") == "running"
        finally:  # the module's other tests need it, whatever happened here
            await browser_stack.start_realtime()
        # The page retries with backoff (up to 8 s between tries) while realtime
        # boots, so allow for a slow restart plus one full backoff step.
        await expect(page.locator("#connection-text")).to_have_text(
            "Live (resumed)", timeout=30_000
        )
        await expect(job.get_by_role("progressbar")).to_have_attribute("value", "100")
        await expect(job).to_have_attribute("data-state", "succeeded")

        first, *later = log.websockets
        assert "last_event_id" not in first
        resumed = later[-1]
        assert re.search(r"[?&]last_event_id=\d+-\d+", resumed), resumed
        tickets = [parse_qs(urlsplit(url).query)["ticket"][0] for url in log.websockets]
        assert len(set(tickets)) == len(tickets), "a ticket was used twice"


async def _wait_succeeded(page: Page, api_url: str, job_id: str, *, within: float = 30) -> None:
    """Poll the API (with the page's own token) until the job has succeeded."""
    headers = {"Authorization": f"Bearer {await page_token(page)}"}
    async with httpx.AsyncClient(base_url=api_url, headers=headers, timeout=5) as client:

        async def succeeded() -> bool:
            response = await client.get(f"/v1/jobs/{job_id}")
            return bool(response.json()["state"] == "succeeded")

        await eventually(
            succeeded, within=within, interval=0.1, explain=lambda: f"job {job_id} not succeeded"
        )


class TestOrigins:
    """Only origins in CORS_ORIGINS may call the API or open a socket."""

    async def test_foreign_origin_gets_a_cors_failure_and_a_refused_socket(
        self, browser_stack: BrowserStack, pages: Pages
    ) -> None:
        page, log = await pages.new(browser_stack.foreign_url)
        await submit(page, "foreign@example.com", PASSWORD, button="Sign up")
        await expect(page.get_by_role("alert")).to_contain_text("CORS refused")
        assert any("blocked by CORS policy" in error for error in log.errors), log.errors

        close = await _socket_close(page, browser_stack.realtime_url)
        assert close == {"code": 1008, "reason": f"origin not allowed: {browser_stack.foreign_url}"}

        # The same socket from the allowed origin gets past the Origin check.
        allowed, _ = await pages.new(browser_stack.console_url)
        close = await _socket_close(allowed, browser_stack.realtime_url)
        assert close["code"] == 1008
        assert "ticket" in close["reason"], close


async def _socket_close(page: Page, realtime_url: str) -> dict[str, Any]:
    """Open a WebSocket from `page` with an unknown ticket; its close code and reason."""
    script = """(url) => new Promise((resolve) => {
        const socket = new WebSocket(url);
        socket.onclose = (event) => resolve({code: event.code, reason: event.reason});
    })"""
    result: dict[str, Any] = await page.evaluate(script, f"{realtime_url}?ticket=unknown")
    return result


class TestPasswordRule:
    """The sign-up hint and check come from the API's published rule, not from the page."""

    async def test_hint_and_check_follow_the_apis_setting(
        self, browser_stack: BrowserStack, pages: Pages
    ) -> None:
        page, log = await pages.new(browser_stack.console_url)
        rule = f"New accounts: at least {PASSWORD_MIN_LENGTH} characters."
        await expect(page.locator("#password-hint")).to_have_text(rule)
        password = page.get_by_label("Password", exact=True)
        await expect(password).to_have_accessible_description(rule)

        email = f"rule-{uuid.uuid4().hex[:8]}@example.com"
        await page.get_by_label("Email", exact=True).fill(email)
        short = "k7#qW2!zR9p"[: PASSWORD_MIN_LENGTH - 1]
        await password.fill(short)
        await page.get_by_role("button", name="Sign up").click()
        await expect(page.get_by_role("alert")).to_have_text(
            f"The password must be at least {PASSWORD_MIN_LENGTH} characters long."
        )
        await expect(password).to_have_attribute("aria-invalid", "true")
        assert not any(url.endswith("/v1/auth/register") for url in log.requests)

        await password.fill(short + "x")  # exactly the minimum: the API agrees
        await page.get_by_role("button", name="Sign up").click()
        await expect(page.get_by_role("heading", name="Start a job")).to_be_visible()
        assert log.errors == []


class TestLogout:
    """What was typed into the form leaves the page with the session."""

    async def test_logout_clears_email_and_password(self, console: Console) -> None:
        page, _, email = console
        # Signed in, the password is no longer in the (hidden) form.
        await expect(page.get_by_label("Password", exact=True)).to_have_value("")

        await page.get_by_role("button", name="Log out").click()
        await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
        await expect(page.get_by_label("Email", exact=True)).to_have_value("")
        await expect(page.get_by_label("Password", exact=True)).to_have_value("")
        assert email not in await page.locator("#auth").inner_text()


class TestNarrowScreen:
    """A phone-sized window (390 px) never scrolls sideways, even with the report's table."""

    async def test_report_at_390px_scrolls_in_its_box_not_the_page(
        self, browser_stack: BrowserStack, pages: Pages
    ) -> None:
        page, log = await pages.new(width=390, height=844)
        await sign_up(page, browser_stack.console_url)
        job = await start_countdown(page, steps=1, interval=0)
        await expect(job).to_have_attribute("data-state", "succeeded")
        await page.get_by_role("button", name="Run report").click()
        table = page.locator("li.job").first.get_by_role("table")
        await expect(table.locator("caption")).to_have_text("Jobs summary: 1 other job")

        widths = await page.evaluate(
            """() => ({page: document.documentElement.scrollWidth,
                       window: document.documentElement.clientWidth})"""
        )
        assert widths["page"] <= widths["window"], widths
        region = page.get_by_role("region", name="Jobs summary: 1 other job")
        await expect(region).to_be_visible()
        inner = await region.evaluate("node => [node.scrollWidth, node.clientWidth]")
        assert inner[0] > inner[1], "the table should be wider than the screen, inside its box"
        assert log.errors == []


class TestResults:
    """A job's result reads as name and value, not as JSON (JSON only for deep structures)."""

    async def test_a_countdowns_result_is_a_definition_list(self, console: Console) -> None:
        page, _, _ = console
        job = await start_countdown(page, steps=3, interval=0)
        await expect(job).to_have_attribute("data-state", "succeeded")
        result = job.locator(".result dl")
        await expect(result).to_have_attribute(
            "aria-label", re.compile(r"^Result of demo\.countdown ")
        )
        await expect(result.locator("dt")).to_have_text(["steps"])
        await expect(result.locator("dd")).to_have_text(["3"])
        assert "{" not in await job.locator(".result").inner_text()

    async def test_a_deep_result_nests_then_falls_back_to_json(
        self, browser_stack: BrowserStack, console: Console
    ) -> None:
        page, _, _ = console
        job, job_id = await running_countdown(page, steps=300, interval=0.1)
        headers = {"Authorization": f"Bearer {await page_token(page)}"}
        async with httpx.AsyncClient(base_url=browser_stack.api_url, timeout=5) as client:
            user_id = uuid.UUID((await client.get("/v1/users/me", headers=headers)).json()["id"])
            # Whatever a job kind returns reaches the page as the worker publishes it.
            result = {
                "rows": 2,
                "tags": ["a", "b"],
                "totals": {"ok": 1, "per_region": {"eu": {"ok": 1}}},
            }
            redis = Redis.from_url(browser_stack.env["REDIS_URL"])
            try:
                event = make_event(  # the shape the worker publishes (worker/app.py)
                    JOB_SUCCEEDED, user_id=user_id, job_id=uuid.UUID(job_id),
                    state="succeeded", progress=100, result=result,
                )  # fmt: skip
                await apublish_event(redis, event, prefix=browser_stack.env["REDIS_KEY_PREFIX"])
            finally:
                await redis.aclose()
            await expect(job).to_have_attribute("data-state", "succeeded")

            top = job.locator(".result > dl.kv")
            await expect(top.locator(":scope > dt")).to_have_text(["rows", "tags", "totals"])
            await expect(top.locator(":scope > dd").nth(1)).to_have_text("a, b")
            totals = top.locator(":scope > dd").nth(2).locator(":scope > dl.kv")
            await expect(totals.locator(":scope > dt")).to_have_text(["ok", "per_region"])
            deep = totals.locator(":scope > dd").nth(1).locator("pre.json")
            assert json.loads(await deep.inner_text()) == {"eu": {"ok": 1}}
            # The real countdown would run on for half a minute: free the worker.
            await client.post(f"/v1/jobs/{job_id}/cancel", headers=headers)

"""Browser tests: Debian's Chromium driven by Playwright against real processes.

The browser is `/usr/bin/chromium` (`apt-get install -y chromium`); Playwright
never downloads one. Where it is missing, every test here skips saying so.
On a failure, a screenshot of each open page goes to `test-artifacts/browser/`.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Request,
    async_playwright,
    expect,
)

from devharness.services import ROOT
from tests.browser.stack import BrowserStack, base_env, start_stack
from tests.fixtures.reports import call_failed, report_logs
from tests.fixtures.services import new_prefix

CHROMIUM = Path("/usr/bin/chromium")
# What the machines here need: no sandbox as root, and no background traffic to
# Google's hosts, which a closed network refuses (machines page, python-svc).
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = ROOT / "test-artifacts" / "browser"
expect.set_options(timeout=15_000)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if CHROMIUM.exists():
        return
    reason = f"Chromium not installed at {CHROMIUM} (apt-get install -y chromium; .ci/run does)"
    for item in items:
        if item.path.is_relative_to(Path(__file__).parent):
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(scope="session")
async def browser_stack(
    database_url: str,
    redis_url: str,
    jwt_secret: str,
    redis_key_prefix: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[BrowserStack]:
    """API (gunicorn), realtime (gunicorn), a Celery worker and the console on two origins."""
    env = base_env(
        database_url=database_url,
        redis_url=redis_url,
        jwt_secret=jwt_secret,
        prefix=new_prefix(redis_key_prefix),
    )
    stack = await start_stack(env, tmp_path_factory.mktemp("browser-stack"))
    yield stack
    await stack.stop()


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Debian's Chromium, headless, one for the session."""
    async with async_playwright() as playwright:
        chromium = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield chromium
        await chromium.close()


@dataclass
class PageLog:
    """What a page did: its console errors, uncaught exceptions and every request URL."""

    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    websockets: list[str] = field(default_factory=list)

    def on_console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)

    def on_request(self, request: Request) -> None:
        self.requests.append(request.url)


@dataclass
class Pages:
    """Opens pages in fresh contexts (own sessionStorage), each with a `PageLog`."""

    browser: Browser
    contexts: list[BrowserContext] = field(default_factory=list)
    pages: list[Page] = field(default_factory=list)

    async def new(
        self, url: str | None = None, *, width: int = 1000, height: int = 700
    ) -> tuple[Page, PageLog]:
        """A page in a fresh context, and its log; at `url` if one is given."""
        context = await self.browser.new_context(viewport={"width": width, "height": height})
        self.contexts.append(context)
        page = await context.new_page()
        self.pages.append(page)
        log = PageLog()
        page.on("console", log.on_console)
        page.on("pageerror", lambda error: log.errors.append(f"uncaught: {error}"))
        page.on("request", log.on_request)
        page.on("websocket", lambda socket: log.websockets.append(socket.url))
        if url is not None:
            await page.goto(url)
        return page, log


@pytest.fixture
async def pages(
    request: pytest.FixtureRequest, browser: Browser, browser_stack: BrowserStack
) -> AsyncIterator[Pages]:
    """Fresh browser contexts for one test; if it fails, screenshots of its pages, and every
    process's log in its report."""
    report_logs(request.node, browser_stack.processes.values())
    opened = Pages(browser)
    yield opened
    if call_failed(request.node):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        name = re.sub(r"[^\w.-]+", "_", request.node.name)
        for number, page in enumerate(opened.pages):
            if not page.is_closed():
                await page.screenshot(path=ARTIFACTS / f"{name}-{number}.png", full_page=True)
    for context in opened.contexts:
        await context.close()

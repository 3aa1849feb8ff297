"""The API's /docs and /redoc in a real Chromium, under the API's own Content-Security-Policy."""

from __future__ import annotations

import os
import re
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from playwright.async_api import expect

from api.docs import CONTENT_SECURITY_POLICY
from tests.browser.conftest import Pages
from tests.browser.stack import BrowserStack

pytestmark = pytest.mark.system
# Set to a path to keep a picture of /docs (`make docs-screenshots`: docs/images/swagger-ui.png).
SCREENSHOT = os.environ.get("DOCS_SCREENSHOT")


class TestDocsPages:
    """Swagger UI and ReDoc render from the API's own files: no error, nothing off-host."""

    @pytest.mark.parametrize(
        ("path", "title"),
        [
            ("/docs", re.compile(r"^Jobs API")),
            ("/redoc", re.compile(r"^Jobs API")),
        ],
    )
    async def test_renders_with_no_errors_and_no_request_leaving_localhost(
        self, browser_stack: BrowserStack, pages: Pages, path: str, title: re.Pattern[str]
    ) -> None:
        page, log = await pages.new()
        response = await page.goto(browser_stack.api_url + path)
        assert response is not None
        assert response.status == 200
        assert response.headers["content-security-policy"] == CONTENT_SECURITY_POLICY

        await expect(page.get_by_role("heading", name=title).first).to_be_visible()
        # The operations come from /openapi.json: the page really rendered the spec.
        await expect(page.get_by_text("/v1/realtime/ticket").first).to_be_visible()
        await page.wait_for_load_state("networkidle")

        assert log.errors == []
        off_host = [
            url
            for url in log.requests
            if urlsplit(url).scheme not in {"data", "blob"}
            and urlsplit(url).hostname not in {"127.0.0.1", "localhost"}
        ]
        assert off_host == []
        assert any(url.endswith("/openapi.json") for url in log.requests)
        if SCREENSHOT and path == "/docs":
            await page.screenshot(path=Path(SCREENSHOT))

"""The fixtures of every layer live in `tests/fixtures/`, one module per concern."""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.reports",
    "tests.fixtures.api",
    "tests.fixtures.jobs",
    "tests.fixtures.servers",
    # Before realtime, which imports it (a plugin imported earlier is not assert-rewritten).
    "tests.fixtures.workers",
    "tests.fixtures.realtime",
]


def pytest_report_header(config: pytest.Config) -> str:
    return "services: TEST_SERVICES=docker | TEST_DATABASE_URL/TEST_REDIS_URL | embedded (default)"

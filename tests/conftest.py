"""The fixtures of every layer live in `tests/fixtures/`, one module per concern."""

from __future__ import annotations

import os
from pathlib import Path

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


_TESTS = Path(__file__).parent
# Under pytest-xdist (`make test`: `-n auto --dist loadfile --no-loadscope-reorder`)
# each file goes whole to one worker, in collection order, as a worker runs low.
# Sent longest first, no long file is left running alone at the end: the compose
# walkthrough (Docker builds), then the other system and the browser tests, then
# integration, and the unit tests, which are many and short, fill the gaps.
_LONGEST_FIRST = [
    _TESTS / "system" / "test_compose.py",
    _TESTS / "system",
    _TESTS / "browser",
    _TESTS / "integration",
]


def _rank(item: pytest.Item) -> int:
    for rank, where in enumerate(_LONGEST_FIRST):
        if item.path.is_relative_to(where):  # a file is relative to itself
            return rank
    return len(_LONGEST_FIRST)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if "PYTEST_XDIST_WORKER" in os.environ:  # a serial run keeps the usual order
        items.sort(key=_rank)  # stable: a file's tests stay in order

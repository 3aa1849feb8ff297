"""The outbox backlog gauge leaves out the jobs whose `sent_at` mark may still be on its way."""

from __future__ import annotations

from api.jobs.intake import MARK_DELAY
from common.jobs_repository import BACKLOG_AFTER_SECONDS


def test_the_backlog_waits_longer_than_the_api_holds_a_mark() -> None:
    # A sent job is marked up to MARK_DELAY later; counted sooner, every job of a
    # steady trickle would show as unsent for a moment.
    assert BACKLOG_AFTER_SECONDS >= 2 * MARK_DELAY

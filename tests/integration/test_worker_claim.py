"""A claim that cannot reach Postgres asks for the job again instead of dropping its message."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery.exceptions import Retry

from worker import resources as worker_resources
from worker.app import execute
from worker.resources import Resources, build
from worker.settings import WorkerSettings


@dataclass
class _Request:
    retries: int = 0


@dataclass
class _Task:
    """Celery's part of a task that `execute` uses: its request and `retry`."""

    request: _Request = field(default_factory=_Request)
    retried: list[dict[str, Any]] = field(default_factory=list)

    def retry(self, **options: Any) -> Retry:
        self.retried.append(options)
        return Retry(when=options["countdown"])


@pytest.fixture
def unreachable_database(
    redis_url: str, redis_key_prefix: str, jwt_secret: str
) -> Iterator[Resources]:
    """This process's worker resources, with Postgres on a port where nothing listens."""
    settings = WorkerSettings(
        _env_file=None,
        environment="test",
        database_url="postgresql://nobody@127.0.0.1:1/nothing",
        redis_url=redis_url,
        redis_key_prefix=redis_key_prefix,
        jwt_secret=jwt_secret,
        job_retry_backoff_seconds=2,
        job_retry_backoff_max_seconds=30,
    )
    built = build(settings)
    saved = dict(worker_resources._current)
    worker_resources._current.clear()
    worker_resources._current[os.getpid()] = built
    try:
        yield built
    finally:
        worker_resources._current.clear()
        worker_resources._current.update(saved)
        built.engine.dispose()
        built.redis.close()


def test_a_claim_that_cannot_reach_postgres_is_retried_with_backoff(
    unreachable_database: Resources,
) -> None:
    task = _Task(request=_Request(retries=3))
    with pytest.raises(Retry):
        execute(task, str(uuid.uuid4()))  # type: ignore[arg-type]
    [options] = task.retried
    assert options["max_retries"] is None  # the relay is the backstop, not a retry budget
    assert 0 <= options["countdown"] <= 16  # the 4th try: full jitter up to 2 s * 2**3

"""The Celery app: `celery -A worker.app worker`.

One task, `jobs.run`, takes a job id. The job's row says what to run; its
state machine (guarded UPDATEs) makes every redelivery harmless.
"""

from __future__ import annotations

import logging
import random
import uuid
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import setup_logging
from kombu.exceptions import OperationalError as KombuOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError as DatabaseOperationalError

from common.broker import create_celery
from common.contracts import events
from common.contracts.jobs import JobState
from common.contracts.tasks import RUN_JOB_TASK
from common.logging import configure_logging
from worker.kinds import JOB_FUNCTIONS
from worker.resources import get_resources
from worker.runner import Heartbeat, JobCancelled, JobRun, LeaseLost, TransientJobError, claim
from worker.settings import WorkerSettings, get_settings

_logger = logging.getLogger("worker")
# Worth a retry: a dependency was briefly unreachable. Anything else fails the job.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    TransientJobError,
    ConnectionError,
    TimeoutError,
    RedisConnectionError,
    KombuOperationalError,
    DatabaseOperationalError,
)


@setup_logging.connect
def _json_logging(**_: Any) -> None:
    configure_logging(get_settings().log_level)


def backoff(attempt: int, settings: WorkerSettings) -> float:
    """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
    ceiling = min(
        settings.job_retry_backoff_max_seconds,
        settings.job_retry_backoff_seconds * 2 ** (attempt - 1),
    )
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not security)


def _fail(run: JobRun, message: str) -> None:
    if run.finish(JobState.FAILED, error=message):
        run.publish(events.JOB_FAILED, state="failed", error=message)


def execute(task: Task[Any, Any], job_id: str) -> None:
    """Run job `job_id` once, if it is queued; record and publish what happens."""
    resources = get_resources()
    settings = resources.settings
    run = claim(resources.engine, resources.redis, settings, job_id=uuid.UUID(job_id))
    if run is None:
        _logger.info("job %s is not queued; message ignored", job_id)
        return
    run.publish(events.JOB_STARTED, state="running", attempt=run.attempt)
    try:
        with Heartbeat(run):
            if run.cancel_requested:
                raise JobCancelled(job_id)
            function, params_model = JOB_FUNCTIONS[run.kind]
            result = function(run, params_model.model_validate(run.params))
    except JobCancelled:
        if run.finish(JobState.CANCELLED):
            run.publish(events.JOB_CANCELLED, state="cancelled")
    except LeaseLost:
        _logger.warning("job %s: lease lost; another run owns it now", job_id)
    except SoftTimeLimitExceeded:
        _fail(run, "timed out")
    except TRANSIENT_ERRORS as exc:
        _retry_or_fail(task, run, exc)
    except Exception as exc:
        _logger.info("job %s failed", job_id, exc_info=True)
        _fail(run, f"{type(exc).__name__}: {exc}")
    else:
        if run.finish(JobState.SUCCEEDED, result=result):
            run.publish(events.JOB_SUCCEEDED, state="succeeded", progress=100, result=result)


def _retry_or_fail(task: Task[Any, Any], run: JobRun, exc: BaseException) -> None:
    settings = run.settings
    reason = f"{type(exc).__name__}: {exc}"
    if run.attempt >= settings.job_max_attempts:
        _fail(run, f"gave up after {run.attempt} attempts: {reason}")
        return
    delay = backoff(run.attempt, settings)
    if not run.release():
        return
    _logger.info("job %s: transient failure (%s), retry in %.1fs", run.job_id, reason, delay)
    run.publish(events.JOB_REQUEUED, state="queued", attempt=run.attempt, retry_in=delay)
    # A new message with the same task id; if the broker is down too, the
    # relay's resend of stale queued jobs still picks the job up.
    task.retry(countdown=delay, max_retries=None, throw=False)


def create_worker_app(settings: WorkerSettings | None = None) -> Celery:
    """The worker's Celery app with the `jobs.run` task registered."""
    settings = settings or get_settings()
    app = create_celery(settings, main="worker")
    if settings.worker_concurrency:
        app.conf.worker_concurrency = settings.worker_concurrency

    @app.task(name=RUN_JOB_TASK, bind=True, ignore_result=True)
    def run_job(self: Task[Any, Any], job_id: str) -> None:
        execute(self, job_id)

    return app


app = create_worker_app()

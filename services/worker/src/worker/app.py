"""The Celery app: `celery -A worker.app worker`.

One task, `jobs.run`, takes a job id. The job's row says what to run; its
state machine (guarded UPDATEs) makes every redelivery harmless.
"""

from __future__ import annotations

import gc
import logging
import random
import threading
import uuid
from typing import Any

from celery import Celery, Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import (
    setup_logging,
    task_postrun,
    task_prerun,
    task_received,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
)
from celery.worker.request import Request
from kombu.exceptions import OperationalError as KombuOperationalError
from psycopg import OperationalError as DriverOperationalError
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError as DatabaseOperationalError

from common.broker import create_celery
from common.contracts import events
from common.contracts.jobs import JobState
from common.contracts.tasks import (
    KIND_HEADER,
    REQUEST_ID_HEADER,
    RUN_JOB_TASK,
    TRACEPARENT_HEADER,
)
from common.heap import freeze_startup_heap
from common.logging import configure_logging
from common.request_context import reset_request_id, set_request_id, valid_request_id
from common.tracing import (
    configure_tracing,
    instrument_celery_worker,
    shutdown_tracing,
    valid_traceparent,
)
from worker import capacity, resources
from worker import metrics as worker_metrics
from worker.job_functions import JOB_FUNCTIONS
from worker.resources import close_events, get_resources
from worker.runner import (
    Deferred,
    Heartbeat,
    JobCancelled,
    JobRun,
    LeaseLost,
    TransientJobError,
    claim,
    hand_off,
)
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
    DriverOperationalError,
)


# Celery's own line per task received and per task returned: each job's run logs
# its claim and its end (below), with the job's id, kind, attempt and duration, so
# these two say it again, at a cost (each line is 7% of a no-op job's CPU). They
# stay at DEBUG; a task that raises is still logged by Celery at ERROR.
_PER_TASK_LOGGERS = ("celery.worker.strategy", "celery.app.trace")


@setup_logging.connect
def _json_logging(**_: Any) -> None:
    configure_logging(get_settings().log_level)
    # As configured (LOG_LEVEL may be spelled in any case), not as written.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in _PER_TASK_LOGGERS:
            logging.getLogger(name).setLevel(logging.WARNING)


@worker_init.connect
def _freeze_main_heap(**_: Any) -> None:
    # The main process, its app loaded, before the pool forks: the start-up's
    # objects out of every full collection of this process and its children
    # (common.heap), whose collections then leave the shared pages alone.
    freeze_startup_heap()


@worker_ready.connect
def _freeze_consumer_heap(**_: Any) -> None:
    # What the consumer's start made since, in the main process (the serial stage).
    gc.freeze()


@worker_process_init.connect
def _freeze_pool_heap(**_: Any) -> None:
    gc.freeze()


@worker_process_init.connect
def _start_tracing(**_: Any) -> None:
    # In each pool process, after the fork: the span exporter's thread must live here.
    configure_tracing(get_settings().service_name)
    instrument_celery_worker()


@worker_process_shutdown.connect
def _flush_traces(**_: Any) -> None:
    shutdown_tracing()


@worker_process_shutdown.connect
def _flush_events(**_: Any) -> None:
    # The job events this process sent and Redis has not answered yet: read
    # before the process exits (errors logged), then the connection goes back.
    close_events()


# The request-id context of the task each thread runs, set from the message headers
# for the whole task, so Celery's own "succeeded"/"failed" lines carry it too.
_task_tokens: dict[str, object] = {}
# The consumer's token for its "received" line (one consumer thread per worker).
_received_token: list[object] = []


def _request_id_of(request: Any) -> str | None:
    return valid_request_id(getattr(request, REQUEST_ID_HEADER, None))


@task_prerun.connect
def _bind_request_id(task_id: str, task: Task[Any, Any], **_: Any) -> None:
    _task_tokens[task_id] = set_request_id(_request_id_of(task.request))


@task_postrun.connect
def _unbind_request_id(task_id: str, **_: Any) -> None:
    token = _task_tokens.pop(task_id, None)
    if token is not None:
        reset_request_id(token)


def clamp_time_limits(
    limits: tuple[float | None, float | None], ceiling: int | None
) -> tuple[float | None, float | None]:
    """(hard, soft) time limits of a message held to this deployment's `ceiling` for its kind.

    The limits come with the message, from whoever sent it; the worker's own
    ceiling (`JOB_MAX_RUN_SECONDS`) wins when it is shorter.
    """
    if ceiling is None:
        return limits
    hard, soft = limits
    hard = ceiling if hard is None else min(hard, ceiling)
    soft = max(1, hard - 5) if soft is None else min(soft, max(1, hard - 5))
    return hard, soft


class CorrelatedRequest(Request):
    """A task request whose "Task ... received" line names the job's request id.

    The consumer logs that line right after building the request and before
    any signal, so the id is set here and reset on `task_received`.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.time_limits = clamp_time_limits(
            self.time_limits,
            get_settings().job_max_run_seconds.get(str(self.request_dict.get(KIND_HEADER))),
        )
        _unbind_received()
        request_id = valid_request_id(self.request_dict.get(REQUEST_ID_HEADER))
        _received_token.append(set_request_id(request_id))


@task_received.connect
def _unbind_received(**_: Any) -> None:
    while _received_token:
        reset_request_id(_received_token.pop())


class KindDisabled(Exception):
    """Raised when a job's kind is off in this deployment (`DEMO_KINDS_ENABLED`)."""


def backoff(attempt: int, settings: WorkerSettings) -> float:
    """Exponential backoff with full jitter for retry number `attempt` (1-based)."""
    ceiling = min(
        settings.job_retry_backoff_max_seconds,
        settings.job_retry_backoff_seconds * 2 ** (attempt - 1),
    )
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 (jitter, not security)


# What a job's owner sees when it failed unexpectedly: the exception's text
# can hold internals (paths, SQL, addresses), so it goes to the log only.
GENERIC_FAILURE = "The job failed unexpectedly."
TRANSIENT_FAILURE = "A dependency was unavailable"


def _fail(run: JobRun, message: str) -> None:
    if run.finish(JobState.FAILED, error=message):
        run.publish(events.JOB_FAILED, state="failed", error=message)


def execute(task: Task[Any, Any], job_id: str) -> None:
    """Run job `job_id` once, if it is queued; record and publish what happens."""
    resources = get_resources()
    settings = resources.settings
    try:
        run = claim(
            resources.engine,
            resources.redis,
            settings,
            job_id=uuid.UUID(job_id),
            events=resources.events,
        )
    except Deferred:
        _logger.info("job %s deferred: its owner has the most jobs running already", job_id)
        return
    except TRANSIENT_ERRORS as exc:
        # The claim never reached Postgres, or its answer never came back: the job
        # is still queued and counted as sent, and nothing but the relay's resend
        # (JOB_RESEND_AFTER_SECONDS) would run it. Ask again after a backoff; the
        # claim is guarded, so a second message for the job is harmless.
        delay = backoff(task.request.retries + 1, settings)
        _logger.warning(
            "job %s: claim failed (%s); trying again in %.1fs", job_id, type(exc).__name__, delay
        )
        raise task.retry(countdown=delay, max_retries=None) from exc
    if run is None:
        _logger.info("job %s is not queued; message ignored", job_id)
        return
    try:
        _run(task, run)
    finally:
        # This owner's turn is over: a job the cap held back goes to the end of the queue.
        hand_off(resources.engine, task.app, run)


def _run(task: Task[Any, Any], run: JobRun) -> None:
    job_id = str(run.job_id)
    _logger.info(
        "job %s claimed (%s, attempt %d)",
        job_id,
        run.kind,
        run.attempt,
        extra={
            "job_id": job_id,
            "traceparent": valid_traceparent(getattr(task.request, TRACEPARENT_HEADER, None)),
        },
    )
    started = worker_metrics.run_started(run.kind)
    run.publish(events.JOB_STARTED, state="running", attempt=run.attempt)
    try:
        with Heartbeat(run):
            if run.cancel_requested:
                raise JobCancelled(job_id)
            if not run.settings.is_kind_enabled(run.kind):
                raise KindDisabled(run.kind)
            function, params_model = JOB_FUNCTIONS[run.kind]
            result = function(run, params_model.model_validate(run.params))
    except JobCancelled:
        if run.finish(JobState.CANCELLED):
            run.publish(events.JOB_CANCELLED, state="cancelled")
    except LeaseLost:
        _logger.warning("job %s: lease lost; another run owns it now", job_id)
    except SoftTimeLimitExceeded:
        _fail(run, "timed out")
    except KindDisabled:
        _fail(run, f"Jobs of kind {run.kind} are not run by this deployment.")
    except TRANSIENT_ERRORS as exc:
        _retry_or_fail(task, run, exc)
    except Exception:
        _logger.warning("job %s failed", job_id, exc_info=True)
        _fail(run, GENERIC_FAILURE)
    else:
        if run.finish(JobState.SUCCEEDED, result=result):
            run.publish(events.JOB_SUCCEEDED, state="succeeded", progress=100, result=result)
    finally:
        seconds = worker_metrics.run_ended(run.kind, run.outcome, started)
        _log_end(run, seconds)


def _log_end(run: JobRun, seconds: float) -> None:
    if run.outcome is not None:
        how = run.outcome.value
    elif run.released:
        how = "released for a retry"
    else:
        how = "ended with no outcome recorded"  # the lease was lost, or Postgres was
    _logger.info(
        "job %s %s (%s, attempt %d) in %.1f ms",
        run.job_id,
        how,
        run.kind,
        run.attempt,
        seconds * 1000,
        extra={"job_id": str(run.job_id), "duration_ms": round(seconds * 1000, 3)},
    )


def _retry_or_fail(task: Task[Any, Any], run: JobRun, exc: BaseException) -> None:
    settings = run.settings
    reason = f"{type(exc).__name__}: {exc}"
    if run.attempt >= settings.job_max_attempts:
        _logger.warning("job %s: giving up after %d attempts: %s", run.job_id, run.attempt, reason)
        _fail(run, f"{TRANSIENT_FAILURE}; gave up after {run.attempt} attempts.")
        return
    delay = backoff(run.attempt, settings)
    if not run.release():
        return
    worker_metrics.run_retried(run.kind)
    _logger.info("job %s: transient failure (%s), retry in %.1fs", run.job_id, reason, delay)
    run.publish(events.JOB_REQUEUED, state="queued", attempt=run.attempt, retry_in=delay)
    # A new message with the same task id; if the broker is down too, the
    # relay's resend of stale queued jobs still picks the job up.
    task.retry(countdown=delay, max_retries=None, throw=False)


def create_worker_app(settings: WorkerSettings | None = None) -> Celery:
    """The worker's Celery app with the `jobs.run` task registered."""
    settings = settings or get_settings()
    app = create_celery(settings, main="worker")
    # A --concurrency on the command line overrides this (and the budget with it).
    budget = capacity.memory_budget(settings)
    processes, sizing = capacity.concurrency(settings, budget)
    app.conf.worker_concurrency = processes

    @worker_ready.connect(weak=False)
    def _log_budget(sender: Any = None, **_: Any) -> None:
        # Logging is configured by now (not yet when the app is built).
        _logger.info("%s; %s", budget.describe(), sizing)
        # Once per instance, in the main process, on a thread: the consumer goes on.
        actual = getattr(getattr(sender, "controller", None), "concurrency", None) or processes
        threading.Thread(
            target=resources.check_connection_budget,
            args=(settings, int(actual)),
            name="connection-budget",
            daemon=True,
        ).start()

    @app.task(name=RUN_JOB_TASK, bind=True, ignore_result=True, Request=CorrelatedRequest)
    def run_job(self: Task[Any, Any], job_id: str) -> None:
        execute(self, job_id)

    return app


app = create_worker_app()

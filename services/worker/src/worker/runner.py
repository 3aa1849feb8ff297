"""Running one job: claim it, hold its lease, report progress, record the outcome.

Every write is a guarded UPDATE on the job's `run_id` and state, so a worker
whose lease lapsed (and whose job was requeued to someone else) can no longer
touch the job: its next write matches no row and it stops.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import psycopg
from psycopg.rows import namedtuple_row
from redis import Redis
from sqlalchemy import Connection, Engine, TextClause
from sqlalchemy.dialects.postgresql.psycopg import dialect as psycopg_dialect

from common import jobs_repository as jobs
from common import publisher
from common.broker import JobToSend, send_queued_job
from common.contracts import events
from common.contracts.jobs import JobState
from common.pipelined import PipelinedWriter
from common.tracing import is_active as is_tracing
from worker.settings import WorkerSettings

_logger = logging.getLogger("worker.runner")


class JobCancelled(Exception):
    """Raised inside a job when its owner asked to cancel it."""


class LeaseLost(Exception):
    """Raised inside a job when its lease lapsed and the job went to another run."""


class TransientJobError(Exception):
    """Raised by a job for a failure worth retrying (a dependency was briefly away)."""


_PSYCOPG = psycopg_dialect()  # type: ignore[no-untyped-call]
# Each statement as psycopg runs it (`%(name)s` parameters), compiled once.
_DRIVER_SQL = {
    statement: str(statement.compile(dialect=_PSYCOPG))
    for statement in (jobs.CLAIM, jobs.RENEW, jobs.PROGRESS, jobs.FINISH, jobs.RELEASE)
}


@contextlib.contextmanager
def _autocommit(engine: Engine) -> Iterator[Connection]:
    """A pooled connection in autocommit mode, for the writes here (when traced).

    Each is one guarded statement, atomic by itself: without BEGIN and COMMIT it
    is one round trip instead of three.
    """
    with engine.connect() as connection:
        yield connection.execution_options(isolation_level="AUTOCOMMIT")


def _execute(engine: Engine, statement: TextClause, params: dict[str, Any]) -> tuple[Any, int]:
    """Run one guarded write in autocommit; (its first row or None, rows matched).

    On the pooled connection's own psycopg connection, as a prepared statement:
    SQLAlchemy's execution layer and its autocommit switch cost more CPU than
    the statement (profiled: a third of a no-op job's run). With tracing on,
    through SQLAlchemy, whose instrumentation traces it.
    """
    if is_tracing():
        with _autocommit(engine) as connection:
            result = connection.execute(statement, params)
            return (result.first() if result.returns_rows else None), result.rowcount
    fairy = engine.raw_connection()
    driver: psycopg.Connection[Any] = fairy.driver_connection  # type: ignore[assignment]
    try:
        driver.autocommit = True
        with driver.cursor(row_factory=namedtuple_row) as cursor:
            cursor.execute(_DRIVER_SQL[statement], params, prepare=True)
            row = cursor.fetchone() if cursor.description else None
            return row, cursor.rowcount
    finally:
        if driver.closed:
            fairy.invalidate()
        else:
            driver.autocommit = False
        fairy.close()


@dataclass
class JobRun:
    """One attempt at a job, handed to the kind's function."""

    job_id: uuid.UUID
    owner_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    attempt: int
    run_id: uuid.UUID
    engine: Engine
    redis: Redis
    settings: WorkerSettings
    # Where the events go without waiting for Redis; None (or tracing on): each waits.
    events: PipelinedWriter | None = None
    cancel_requested: bool = False
    # The request that created the job (from its row), named in every event.
    request_id: str | None = None
    traceparent: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    stop_reason: type[Exception] | None = None
    # The final state this run recorded, if it recorded one (for the metrics).
    outcome: JobState | None = None
    # The owner's job the running cap held back, which the finish marked sent again:
    # to send when the run is over.
    next_job: JobToSend | None = None
    # Whether the run gave the job back for a retry (its slot is free too).
    released: bool = False

    def publish(self, type_: str, **data: Any) -> None:
        """Publish an event about this job; a Redis failure is logged, not raised."""
        event = events.make_event(
            type_, user_id=self.owner_id, job_id=self.job_id, request_id=self.request_id, **data
        )
        prefix = self.settings.redis_key_prefix
        # With tracing on, through the client, whose instrumentation traces the command.
        if self.events is not None and not is_tracing():
            publisher.send_event_quietly(self.events, event, prefix=prefix)
        else:
            publisher.publish_quietly(self.redis, event, prefix=prefix)

    def _write(self, statement: TextClause, **values: Any) -> Any:
        params = {"id": self.job_id, "run_id": self.run_id, **values}
        return _execute(self.engine, statement, params)[0]

    def _check(self, row: Any) -> None:
        if row is None:
            self._halt(LeaseLost)
        elif row.cancel_requested:
            self._halt(JobCancelled)
        if self.stop_reason is not None:
            raise self.stop_reason(f"job {self.job_id}")

    def _halt(self, reason: type[Exception]) -> None:
        self.stop_reason = self.stop_reason or reason
        self.stop.set()

    def renew(self) -> None:
        """Extend the lease (the heartbeat); notes a cancel request or a lost lease."""
        row = self._write(jobs.RENEW, lease=self.settings.job_lease_seconds)
        if row is None:
            self._halt(LeaseLost)
        elif row.cancel_requested:
            self._halt(JobCancelled)

    def progress(self, percent: int, **data: Any) -> None:
        """Record progress (0-100), renew the lease, publish; stops on cancel or lost lease."""
        percent = max(0, min(100, int(percent)))
        row = self._write(jobs.PROGRESS, progress=percent, lease=self.settings.job_lease_seconds)
        self._check(row)
        self.publish(events.JOB_PROGRESS, progress=percent, **data)

    def wait(self, seconds: float) -> None:
        """Sleep up to `seconds`, waking at once on a cancel request or a lost lease."""
        if self.stop.wait(seconds) and self.stop_reason is not None:
            raise self.stop_reason(f"job {self.job_id}")

    def finish(self, state: JobState, *, result: Any = None, error: str | None = None) -> bool:
        """Record the outcome; False if the job was no longer this run's to finish.

        The same call takes the owner's oldest job the running cap held back, if
        any, for `hand_off` to send once this run is over.
        """
        row = self._write(
            jobs.FINISH,
            state=state.value,
            final_progress=100 if state is JobState.SUCCEEDED else None,
            result=None if result is None else json.dumps(result),
            error=error,
        )
        if row is None:
            return False
        self.outcome = state
        if row.next_id is not None:
            self.next_job = JobToSend(
                row.next_id, row.next_kind, row.next_params, row.next_request_id,
                row.next_traceparent,
            )  # fmt: skip
        return True

    def release(self) -> bool:
        """Give the job back to the queue (for a retry); False if it was no longer ours."""
        _, matched = _execute(self.engine, jobs.RELEASE, {"id": self.job_id, "run_id": self.run_id})
        self.released = matched == 1
        return self.released


class Deferred(Exception):
    """Raised by `claim` when the job's owner already has as many jobs running as allowed."""


def claim(
    engine: Engine,
    redis: Redis,
    settings: WorkerSettings,
    *,
    job_id: uuid.UUID,
    events: PipelinedWriter | None = None,
) -> JobRun | None:
    """Move a queued job to running under a new lease; None if it is not queued.

    `Deferred` (the job stays queued, counted as sent) when its owner has
    `JOBS_MAX_RUNNING_PER_USER` jobs running already.
    """
    run_id = uuid.uuid4()
    params = {
        "id": job_id,
        "run_id": run_id,
        "lease": settings.job_lease_seconds,
        "cap": settings.jobs_max_running_per_user,
    }
    row, _ = _execute(engine, jobs.CLAIM, params)
    if row is None:
        return None  # not queued (any more)
    if row.deferred:
        raise Deferred(str(job_id))
    return JobRun(
        job_id=job_id,
        owner_id=row.owner_id,
        kind=row.kind,
        params=row.params,
        attempt=row.attempt,
        run_id=run_id,
        engine=engine,
        redis=redis,
        settings=settings,
        events=events,
        cancel_requested=row.cancel_requested,
        request_id=row.request_id,
        traceparent=row.traceparent,
    )


class _LeaseKeeper:
    """One thread per process renewing the lease of every run registered with it.

    A thread started and joined per job cost more CPU than a no-op job's own
    writes; this one starts with the first job and sleeps until a lease is due.
    A new run wakes it only if it is due before the thread would wake anyway:
    idle, the thread wakes once per heartbeat, so a run added meanwhile (due a
    whole heartbeat later) never needs to, and a job costs no thread switch.
    """

    def __init__(self) -> None:
        self._changed = threading.Condition()
        # run_id -> (run, when its next renewal is due, the context to renew in)
        self._runs: dict[uuid.UUID, tuple[JobRun, float, contextvars.Context]] = {}
        self._thread: threading.Thread | None = None
        self._wakes_at = 0.0  # when the thread wakes next (monotonic); 0 while it runs

    def add(self, run: JobRun) -> None:
        # A thread starts with an empty context: renew in a copy of the job's,
        # so its log lines carry the job's request id too.
        due = time.monotonic() + run.settings.job_heartbeat_seconds
        with self._changed:
            self._runs[run.run_id] = (run, due, contextvars.copy_context())
            if self._thread is None or not self._thread.is_alive():  # none yet, or forked
                self._wakes_at = 0.0
                self._thread = threading.Thread(
                    target=self._loop, args=(run.settings.job_heartbeat_seconds,),
                    name="lease-keeper", daemon=True,
                )  # fmt: skip
                self._thread.start()
            elif due < self._wakes_at:
                self._changed.notify()

    def remove(self, run: JobRun) -> None:
        with self._changed:
            self._runs.pop(run.run_id, None)

    def _loop(self, idle_seconds: float) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [(run, ctx) for run, at, ctx in self._runs.values() if at <= now]
                for run, ctx in due:
                    self._runs[run.run_id] = (run, now + run.settings.job_heartbeat_seconds, ctx)
                if not due:
                    wake = min((at for _, at, _ in self._runs.values()), default=now + idle_seconds)
                    self._wakes_at = wake
                    self._changed.wait(wake - now)
                    self._wakes_at = 0.0
                    continue
            for run, ctx in due:
                ctx.run(_renew, run)


def _renew(run: JobRun) -> None:
    try:
        run.renew()
    except Exception:
        # A missed beat is survivable: the lease outlives several beats.
        _logger.warning("lease renewal failed for job %s", run.job_id, exc_info=True)


_keeper = _LeaseKeeper()


def hand_off(engine: Engine, celery: Any, run: JobRun) -> None:
    """After a run: send the owner's job that the running cap held back, if any.

    The finish took it already (`next_job`); a run that gave its job back for a
    retry freed its slot too, and takes one here. A run that lost its lease or
    could not record its end freed nothing of its own.
    """
    if run.next_job is not None:
        _send_next(engine, celery, run.next_job)
    elif run.released:
        send_next_of_owner(engine, celery, owner_id=run.owner_id)


def send_next_of_owner(engine: Engine, celery: Any, *, owner_id: uuid.UUID) -> None:
    """Send the owner's oldest job that the running cap held back, if there is one.

    For a slot freed other than by a finish (a release, the sweep).
    """
    with _autocommit(engine) as connection:
        row = connection.execute(jobs.HAND_OFF, {"owner_id": owner_id}).first()
    if row is not None:
        _send_next(engine, celery, row)


def _send_next(engine: Engine, celery: Any, job: Any) -> None:
    """Send a handed-off job; a broker failure leaves it unsent, for the relay."""
    try:
        send_queued_job(celery, job)
    except Exception as exc:  # the relay sends what is unsent
        _logger.warning("next job of owner not sent: %s", type(exc).__name__)
        with _autocommit(engine) as connection:
            connection.execute(jobs.UNSEND, {"id": job.id})


class Heartbeat:
    """Renews a run's lease every `job_heartbeat_seconds` (the process's lease keeper thread)."""

    def __init__(self, run: JobRun) -> None:
        self._run = run

    def __enter__(self) -> Heartbeat:
        _keeper.add(self._run)
        return self

    def __exit__(self, *exc: object) -> None:
        _keeper.remove(self._run)


JobFunction = Callable[[JobRun, Any], dict[str, Any]]

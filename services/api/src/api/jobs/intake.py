"""Job intake with group commit: concurrent `POST /v1/jobs` share transactions and sends.

Each accepted job used to cost its own transaction (BEGIN, the per-user lock,
the insert, COMMIT and its WAL flush), its own event, its own broker round
trip and its own `sent_at` update. Here one task per process takes what the
requests have queued and handles it together:

1. one call of a SQL function (`job_intake`, one round trip) takes the
   per-user advisory locks (in one order, so two processes cannot deadlock),
   marks the jobs sent in the previous round and inserts the new jobs with
   their idempotency and active-job checks; its commit is one WAL flush for
   all of them;
2. the `job.queued` events and then the messages go out in one Redis
   pipeline (events first: a worker may publish `job.started` as soon as it
   has the message), on the event loop, with no thread and no kombu producer;
3. their `sent_at` is set by the next round's transaction, or by a round of
   its own when no job arrived within `MARK_DELAY`, and by `close` at shutdown.

A request gets its answer once its job is committed and its message sent:
the 202 still means the job is committed. It does not wait for the `sent_at`
mark, which only tells the relay not to send the job again; the window in
which a crash leaves a sent job unmarked (the relay then sends it a second
time, and the worker's claim runs it once) is the same whether the answer
waits or not, and waiting cost each request a whole round (the full
profile's intake alone: 0.34x the bare send loop with it, 0.49x without; the
thirteenth pass of docs/performance.md). The marks wait up to `MARK_DELAY`
for a round that inserts, so a process taking a steady trickle of jobs does
not pay a second statement per job (the twentieth pass); a crash in that
window leaves them unmarked, and the relay sends them again after its grace
(`RELAY_GRACE_SECONDS`, 5 s), which the worker's claim makes harmless.
Nothing waits for a batch to fill:
a round starts as soon as the previous one ends, so batches
grow only when requests arrive faster than a round takes. The guarantees
stay: a job is committed before its message leaves; an unsent one (broker
down) is left for the relay; an Idempotency-Key names one job; the active-job
limit is exact under concurrency, across processes (the per-user lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any

from redis.asyncio import Redis
from sqlalchemy.ext.asyncio import AsyncEngine

from api.jobs.errors import IdempotencyKeyReused, TooManyActiveJobs
from common import jobs_repository, publisher
from common.broker import job_message, queue_key
from common.contracts import events
from common.contracts.jobs import JobState
from common.db import driver_connection
from common.tracing import is_active as is_tracing

_logger = logging.getLogger("api.jobs")
MAX_BATCH = 64
# How long the `sent_at` marks of a round wait for the next round's insert to
# carry them before they get a round of their own: well inside the relay's
# grace, so a job is marked before the relay would take it for unsent. Shared
# with the worker's outbox gauge, which waits longer before it counts a job.
MARK_DELAY = jobs_repository.MARK_DELAY


@dataclass(frozen=True)
class NewJob:
    """A validated job a request asks for."""

    owner_id: uuid.UUID
    kind: str
    params: dict[str, Any]
    idempotency_key: str | None
    request_hash: str
    request_id: str | None
    traceparent: str | None


@dataclass
class JobRow:
    """A row of the jobs table as the intake read it back (attributes as on `Job`)."""

    id: uuid.UUID
    owner_id: uuid.UUID
    kind: str
    state: str
    progress: int
    params: dict[str, Any]
    result: dict[str, Any] | None
    error: str | None
    request_id: str | None
    traceparent: str | None
    request_hash: str | None
    created_at: Any
    started_at: Any
    finished_at: Any

    @classmethod
    def from_record(cls, record: Any) -> JobRow:
        return cls(**{name: record[name] for name in cls.__dataclass_fields__})


@dataclass
class _Request:
    job: NewJob
    future: asyncio.Future[tuple[JobRow, bool]] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    # The request's context: a round runs in its first request's, so its
    # spans (SQL, Redis, the send) join that request's trace.
    context: contextvars.Context = field(default_factory=contextvars.copy_context)


class JobIntake:
    """Accepts jobs for one process, committing and sending them in shared rounds."""

    def __init__(
        self,
        engine: AsyncEngine,
        redis: Redis,
        broker: Redis,
        *,
        key_prefix: str,
        max_active: int,
    ) -> None:
        self._engine = engine
        self._redis = redis
        # Celery's broker: the same client when one Redis is both (one pipeline).
        self._broker = broker
        self._queue_key = queue_key(key_prefix)
        self._key_prefix = key_prefix
        self._max_active = max_active
        self._queue: list[_Request] = []
        # Jobs sent in the last round, waiting for their `sent_at` mark.
        self._sent: list[uuid.UUID] = []
        self._wakeup = asyncio.Event()
        self._idle = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    async def submit(self, job: NewJob) -> tuple[JobRow, bool]:
        """Commit `job` (and send it); (the job, whether it was created now).

        An Idempotency-Key seen before gives that job (created False), or
        `IdempotencyKeyReused` if the body differs; `TooManyActiveJobs` when
        the owner is at the limit.
        """
        request = _Request(job)
        self._queue.append(request)
        self._idle.clear()
        self._wakeup.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="job-intake")
        return await request.future

    async def close(self) -> None:
        """Finish the rounds in progress (requests waiting get their answers, sent jobs
        their mark), then stop."""
        if self._task is None:
            return
        # Marks waiting for a round that inserts go now, in one of their own.
        self._closing = True
        self._wakeup.set()
        # Not idle: a round is in progress or due (one may already have taken the
        # last marks out of `_sent`), and `_run` sets `_idle` once none is left.
        if not self._idle.is_set() and not self._task.done():
            await self._idle.wait()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._queue or self._sent:
                if not self._queue and not self._closing:
                    await self._await_requests(MARK_DELAY)
                batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                sent, self._sent = self._sent, []
                context = batch[0].context if batch else None
                try:
                    await asyncio.create_task(self._round(batch, sent), context=context)
                except Exception as exc:
                    _logger.exception("job intake round failed")
                    # The sent jobs' requests had their answers; only their `sent_at`
                    # is missing now, and the relay sends them again (run once).
                    for request in batch:
                        if not request.future.done():
                            request.future.set_exception(exc)
            self._idle.set()

    async def _await_requests(self, seconds: float) -> None:
        """Wait up to `seconds` for a request (or `close`) to wake the intake."""
        self._wakeup.clear()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wakeup.wait()
        self._wakeup.clear()

    async def _round(self, batch: list[_Request], sent_ids: list[uuid.UUID]) -> None:
        firsts, repeats = _split_repeats(batch)
        if firsts:
            outcomes = await self._commit(firsts, sent_ids)
        else:
            outcomes = {}
            if sent_ids:
                await _statement(self._engine, jobs_repository.MARK_SENT, (sent_ids,))
        created: list[tuple[JobRow, _Request]] = []
        for index, request in enumerate(firsts):
            outcome = outcomes.get(index)
            if outcome is None:
                _reject(request, self._max_active)
            elif outcome[1]:
                _replay(request, outcome[0])
            else:
                created.append((outcome[0], request))
        for request, first in repeats:
            outcome = outcomes.get(firsts.index(first))
            if outcome is None:
                _reject(request, self._max_active)
            else:
                _replay(request, outcome[0])
        if created:
            await self._dispatch(created)

    async def _commit(
        self, requests: list[_Request], sent_ids: list[uuid.UUID]
    ) -> dict[int, tuple[JobRow, bool]]:
        """One call: lock, mark `sent_ids` sent, insert; {index: (row, existed)}."""
        jobs = [request.job for request in requests]
        owners = sorted({job.owner_id for job in jobs})
        columns = (
            [uuid.uuid4() for _ in jobs],
            [job.owner_id for job in jobs],
            [job.kind for job in jobs],
            [json.dumps(job.params) for job in jobs],
            [job.idempotency_key for job in jobs],
            [job.request_hash for job in jobs],
            [job.request_id for job in jobs],
            [job.traceparent for job in jobs],
        )
        records = await _statement(
            self._engine,
            jobs_repository.INTAKE,
            (owners, sent_ids, *columns, self._max_active, JobState.QUEUED.value),
        )
        return {
            record["ord"] - 1: (JobRow.from_record(record), record["existed"]) for record in records
        }

    async def _dispatch(self, created: list[tuple[JobRow, _Request]]) -> None:
        """`job.queued` for each job, then their messages, in one round trip.

        The messages are pushed as kombu's Redis transport stores them
        (`job_message`), on this event loop: kombu's own producer is blocking
        I/O that needs a thread hop per round, and a round trip of its own.
        """
        pipeline = self._redis.pipeline(transaction=False)
        queued = publisher.queue_publishes(
            pipeline, [_queued_event(row) for row, _ in created], prefix=self._key_prefix
        )
        messages = [job_message(row) for row, _ in created]
        if self._broker is self._redis:
            # Executed in order: the events before the messages.
            pipeline.lpush(self._queue_key, *messages)
        try:
            outcomes = await pipeline.execute(raise_on_error=False)
        except Exception as exc:
            outcomes = [exc]
        # The script's SHA, one outcome per event, then the messages' push.
        failed_events = [o for o in outcomes[:queued] if isinstance(o, Exception)]
        if failed_events:
            _logger.warning("job.queued events not published: %s", type(failed_events[0]).__name__)
        try:
            if self._broker is self._redis:
                if isinstance(outcomes[-1], Exception):
                    raise outcomes[-1]
            else:
                await self._broker.lpush(self._queue_key, *messages)
        except Exception as exc:
            _logger.warning(
                "broker unreachable, %d job(s) left for the relay: %s",
                len(created),
                type(exc).__name__,
            )
            for row, request in created:
                _resolve(request, row, created=True)
            return
        for row, request in created:
            _resolve(request, row, created=True)
        self._sent.extend(row.id for row, _ in created)


async def _statement(engine: AsyncEngine, sql: str, args: tuple[Any, ...]) -> Any:
    """Run one statement, atomic by itself (no BEGIN and COMMIT around it); its rows.

    On the driver's own connection: SQLAlchemy's execution layer costs more
    CPU than the statement's work (profiled: half of a lone request's intake).
    With tracing on, through SQLAlchemy, whose instrumentation traces it like
    every other query.
    """
    if is_tracing():
        async with engine.begin() as connection:
            result = await connection.exec_driver_sql(sql, args)
            return result.mappings().all() if result.returns_rows else []
    async with driver_connection(engine) as driver:
        return await driver.fetch(sql, *args)


def _queued_event(row: JobRow) -> events.Event:
    return events.make_event(
        events.JOB_QUEUED,
        user_id=row.owner_id,
        job_id=row.id,
        request_id=row.request_id,
        state="queued",
    )


def _split_repeats(
    batch: list[_Request],
) -> tuple[list[_Request], list[tuple[_Request, _Request]]]:
    """The requests to insert, and the later ones repeating an earlier one's key."""
    firsts: list[_Request] = []
    repeats: list[tuple[_Request, _Request]] = []
    by_key: dict[tuple[uuid.UUID, str], _Request] = {}
    for request in batch:
        job = request.job
        if job.idempotency_key is None:
            firsts.append(request)
            continue
        first = by_key.setdefault((job.owner_id, job.idempotency_key), request)
        if first is request:
            firsts.append(request)
        else:
            repeats.append((request, first))
    return firsts, repeats


def _resolve(request: _Request, row: JobRow, *, created: bool) -> None:
    if not request.future.done():
        request.future.set_result((row, created))


def _replay(request: _Request, row: JobRow) -> None:
    """The job an Idempotency-Key named already: the same one, if the body is the same."""
    if request.future.done():
        return
    if row.request_hash != request.job.request_hash:
        request.future.set_exception(
            IdempotencyKeyReused("This Idempotency-Key was used with a different kind or params.")
        )
    else:
        request.future.set_result((row, False))


def _reject(request: _Request, max_active: int) -> None:
    if not request.future.done():
        request.future.set_exception(
            TooManyActiveJobs(
                f"At most {max_active} jobs may be queued or running at once.", retry_after=5
            )
        )

"""The scheduled work: the outbox relay, the lease sweep and the purge of old jobs.

Each is one short transaction that is safe to run from several processes at
once (row locks with SKIP LOCKED, or single guarded UPDATEs).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine

from common import jobs_repository as jobs
from common import publisher
from common.broker import send_queued_job
from common.contracts import events
from worker.resources import Resources
from worker.runner import send_next_of_owner

_logger = logging.getLogger("worker.maintenance")


@dataclass
class Tally:
    """What one round of maintenance did."""

    sent: int = 0
    send_failed: int = 0
    requeued: int = 0
    failed: int = 0
    cancelled: int = 0
    purged: int = 0
    # Owners whose lapsed job freed a running slot: a job the cap held back may go.
    freed: set[uuid.UUID] = field(default_factory=set)


def relay(
    engine: Engine, celery: Celery, *, grace: float, resend_after: float, batch: int = 200
) -> tuple[int, int]:
    """Send the messages of unsent (or long-unclaimed) queued jobs; (sent, failed)."""
    with engine.begin() as connection:
        rows = connection.execute(
            jobs.TAKE_UNSENT, {"grace": grace, "resend_after": resend_after, "batch": batch}
        ).all()
    for sent, row in enumerate(rows):
        try:
            send_queued_job(celery, row)
        except Exception as exc:
            _logger.warning("relay: broker unreachable (%s); will retry", type(exc).__name__)
            unsent = [r.id for r in rows[sent:]]
            with engine.begin() as connection:
                connection.execute(jobs.UNMARK_SENT, {"ids": unsent})
            return sent, len(unsent)
    return len(rows), 0


def sweep(resources: Resources, *, batch: int = 200) -> Tally:
    """Requeue, cancel or fail running jobs whose lease lapsed; publish each change."""
    tally = Tally()
    settings = resources.settings
    with resources.engine.begin() as connection:
        rows = connection.execute(
            jobs.SWEEP, {"max_attempts": settings.job_max_attempts, "batch": batch}
        ).all()
    for row in rows:
        tally.freed.add(row.owner_id)
        if row.state == "queued":
            tally.requeued += 1
            event_type = events.JOB_REQUEUED
        elif row.state == "cancelled":
            tally.cancelled += 1
            event_type = events.JOB_CANCELLED
        else:
            tally.failed += 1
            event_type = events.JOB_FAILED
        _logger.warning("sweep: job %s lease lapsed -> %s", row.id, row.state)
        event = events.make_event(
            event_type,
            user_id=row.owner_id,
            job_id=row.id,
            request_id=row.request_id,
            state=row.state,
            attempt=row.attempt,
        )
        publisher.publish_quietly(resources.redis, event, prefix=settings.redis_key_prefix)
    return tally


def purge(engine: Engine, *, retention_seconds: float, batch: int = 1000) -> int:
    """Delete finished jobs older than the retention; returns how many."""
    with engine.begin() as connection:
        deleted = connection.execute(jobs.PURGE, {"retention": retention_seconds, "batch": batch})
        return deleted.rowcount


def run_once(resources: Resources, celery: Celery) -> Tally:
    """One round: sweep first (its requeued jobs are sent by the relay right after)."""
    settings = resources.settings
    tally = sweep(resources)
    for owner_id in tally.freed:
        send_next_of_owner(resources.engine, celery, owner_id=owner_id)
    tally.sent, tally.send_failed = relay(
        resources.engine,
        celery,
        grace=settings.relay_grace_seconds,
        resend_after=settings.job_resend_after_seconds,
    )
    tally.purged = purge(resources.engine, retention_seconds=settings.job_retention_days * 86400)
    return tally

"""The scheduled work: the outbox relay, the lease sweep and the purge of old jobs.

Each is one short transaction that is safe to run from several processes at
once (row locks with SKIP LOCKED, or single guarded UPDATEs).
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field

from celery import Celery
from sqlalchemy import Engine, text

from common import publisher
from common.broker import send_queued_job
from common.contracts import events
from worker.resources import Resources
from worker.runner import send_next_of_owner

_logger = logging.getLogger("worker.maintenance")

# Queued jobs whose message was never sent (the API could not reach the
# broker), or was sent long ago and never claimed (the broker lost it, e.g. a
# Redis restart without persistence). A duplicate message is harmless.
# Marked sent in the same statement that picks them (and committed before
# sending), so no row lock is held while talking to the broker and a worker's
# claim never waits on the relay; a failed send puts sent_at back to NULL.
_TAKE_UNSENT = text(
    """
    UPDATE jobs SET sent_at = now()
     WHERE id IN (SELECT id FROM jobs
                   WHERE state = 'queued'
                     AND ((sent_at IS NULL
                           AND created_at < now() - make_interval(secs => :grace))
                          OR sent_at < now() - make_interval(secs => :resend_after))
                   ORDER BY created_at
                   LIMIT :batch
                     FOR UPDATE SKIP LOCKED)
    RETURNING id, kind, params, request_id, traceparent
    """
)
_UNMARK_SENT = text("UPDATE jobs SET sent_at = NULL WHERE id = ANY(:ids) AND state = 'queued'")

# Running jobs whose lease lapsed: their worker is gone. Requeue (the relay
# sends them at once), cancel if a cancel was asked, fail after max attempts.
_SWEEP = text(
    """
    UPDATE jobs
       SET state = CASE WHEN cancel_requested THEN 'cancelled'
                        WHEN attempt >= :max_attempts THEN 'failed'
                        ELSE 'queued' END,
           error = CASE WHEN NOT cancel_requested AND attempt >= :max_attempts
                        THEN 'worker lost ' || attempt || ' times' END,
           finished_at = CASE WHEN cancel_requested OR attempt >= :max_attempts
                              THEN now() END,
           run_id = NULL, lease_expires_at = NULL, sent_at = NULL
     WHERE id IN (SELECT id FROM jobs
                   WHERE state = 'running' AND lease_expires_at < now()
                   ORDER BY lease_expires_at LIMIT :batch FOR UPDATE SKIP LOCKED)
    RETURNING id, owner_id, state, attempt, request_id
    """
)
_PURGE = text(
    """
    DELETE FROM jobs WHERE id IN (
        SELECT id FROM jobs
         WHERE state IN ('succeeded', 'failed', 'cancelled')
           AND finished_at < now() - make_interval(days => 0, secs => :retention)
         LIMIT :batch)
    """
)


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
            _TAKE_UNSENT, {"grace": grace, "resend_after": resend_after, "batch": batch}
        ).all()
    for sent, row in enumerate(rows):
        try:
            send_queued_job(celery, row)
        except Exception as exc:
            _logger.warning("relay: broker unreachable (%s); will retry", type(exc).__name__)
            unsent = [r.id for r in rows[sent:]]
            with engine.begin() as connection:
                connection.execute(_UNMARK_SENT, {"ids": unsent})
            return sent, len(unsent)
    return len(rows), 0


def sweep(resources: Resources, *, batch: int = 200) -> Tally:
    """Requeue, cancel or fail running jobs whose lease lapsed; publish each change."""
    tally = Tally()
    settings = resources.settings
    with resources.engine.begin() as connection:
        rows = connection.execute(
            _SWEEP, {"max_attempts": settings.job_max_attempts, "batch": batch}
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
        try:
            publisher.publish_event(resources.redis, event, prefix=settings.redis_key_prefix)
        except Exception as exc:
            _logger.warning("event %s not published: %s", event_type, type(exc).__name__)
    return tally


def purge(engine: Engine, *, retention_seconds: float, batch: int = 1000) -> int:
    """Delete finished jobs older than the retention; returns how many."""
    with engine.begin() as connection:
        deleted = connection.execute(_PURGE, {"retention": retention_seconds, "batch": batch})
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

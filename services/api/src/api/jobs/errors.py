"""Jobs errors.

AppError
├── JobNotFound (404)              no such job, or not the caller's
├── JobNotCancellable (409)        the job has finished
├── InvalidJob (422)               unknown kind or bad params, with field errors
├── IdempotencyKeyReused (422)     same Idempotency-Key, different body
└── TooManyActiveJobs (429)        the per-user limit of queued + running jobs
"""

from __future__ import annotations

from common.errors import AppError, Conflict, NotFound, TooManyRequests


class JobNotFound(NotFound, title="Job not found"):
    """Raised for a job that does not exist or belongs to someone else."""


class JobNotCancellable(Conflict, title="Job not cancellable"):
    """Raised when cancelling a job that already finished."""


class InvalidJob(AppError, status=422, title="Invalid job"):
    """Raised for an unknown kind or parameters its model rejects."""


class IdempotencyKeyReused(
    AppError, status=422, title="Idempotency-Key reused with a different request"
):
    """Raised when an Idempotency-Key comes back with a different body."""


class TooManyActiveJobs(TooManyRequests, title="Too many active jobs"):
    """Raised when the user already has the maximum of queued and running jobs."""

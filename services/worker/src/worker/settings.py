"""The worker's and the scheduler's settings: `CommonSettings` plus job execution fields."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from common.settings import CommonSettings, load_settings


class WorkerSettings(CommonSettings):
    """Settings of the Celery worker and of the scheduled work."""

    needs_jwt_secret = False  # jobs never see a token

    service_name: str = "worker"
    worker_concurrency: int | None = Field(default=None, ge=1)
    """Celery worker processes; the CPU count when unset."""
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    """Port of the worker's `/metrics`, served by the Celery main process; `0` turns it off.
    It answers only `Authorization: Bearer <METRICS_TOKEN>` when `METRICS_TOKEN` is set."""
    # All interfaces, like the web processes: Prometheus scrapes from another host.
    worker_metrics_host: str = "0.0.0.0"
    """Interface of the worker's `/metrics` (guarded by `METRICS_TOKEN` when set)."""
    job_lease_seconds: float = Field(default=30, gt=0)
    """A running job's lease, renewed every heartbeat and at every progress step. A job whose
    lease lapses (its worker died) is requeued by the sweep."""
    job_heartbeat_seconds: float = Field(default=5, gt=0)
    """Lease renewal interval; keep it well under `JOB_LEASE_SECONDS`."""
    jobs_max_running_per_user: int = Field(default=1, ge=1)
    """Jobs of one user running at once across all workers. A job claimed beyond it goes back
    to the end of the queue and is sent again when one of the user's jobs ends, so one
    user's backlog waits behind other users' jobs. Keep it under the total worker slots."""
    job_max_attempts: int = Field(default=5, ge=1)
    """Runs of one job (lost workers and transient errors) before it fails."""
    job_retry_backoff_seconds: float = Field(default=2, ge=0)
    """First delay of a transient-error retry, seconds; it doubles per attempt, with jitter."""
    job_retry_backoff_max_seconds: float = Field(default=120, ge=0)
    """Longest delay of a transient-error retry, seconds."""
    scheduler_interval_seconds: float = Field(default=5, gt=0)
    """How often the scheduler loop (`python -m worker.scheduler`) runs a round, seconds; the
    cron form (`--once`) runs one round and exits."""
    relay_grace_seconds: float = Field(default=5, ge=0)
    """A queued job unsent for this long is sent by the relay, seconds."""
    job_resend_after_seconds: float = Field(default=300, gt=0)
    """A queued job sent this long ago but never claimed (a lost message) is sent again,
    seconds."""
    job_retention_days: float = Field(default=30, gt=0)
    """Finished jobs older than this are deleted by the purge, days."""
    # A prefork process runs one job at a time: a small pool per process.
    db_pool_size: int = Field(default=2, ge=1)
    db_max_overflow: int = Field(default=2, ge=0)


@lru_cache
def get_settings() -> WorkerSettings:
    """The process's settings, read from the environment once."""
    return load_settings(WorkerSettings)

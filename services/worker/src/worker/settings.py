"""The worker's and the scheduler's settings: `CommonSettings` plus job execution fields."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field

from common.settings import CommonSettings, load_settings


class WorkerSettings(CommonSettings):
    """Settings of the Celery worker and of the scheduled work."""

    service_name: str = "worker"
    worker_concurrency: int | None = Field(default=None, ge=1)
    # Prometheus metrics of the worker and its pool processes (0: none).
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    # All interfaces, like the web processes: Prometheus scrapes from another host.
    worker_metrics_host: str = "0.0.0.0"
    # A running job's lease: renewed every heartbeat and at every progress step.
    # A job whose lease lapses (its worker died) is requeued by the sweep.
    job_lease_seconds: float = Field(default=30, gt=0)
    job_heartbeat_seconds: float = Field(default=5, gt=0)
    job_max_attempts: int = Field(default=5, ge=1)
    job_retry_backoff_seconds: float = Field(default=2, ge=0)
    job_retry_backoff_max_seconds: float = Field(default=120, ge=0)
    # Scheduled work: how often, and what counts as stuck or old.
    scheduler_interval_seconds: float = Field(default=5, gt=0)
    relay_grace_seconds: float = Field(default=5, ge=0)
    job_resend_after_seconds: float = Field(default=300, gt=0)
    job_retention_days: float = Field(default=30, gt=0)
    db_pool_size: int = Field(default=2, ge=1)
    db_max_overflow: int = Field(default=2, ge=0)


@lru_cache
def get_settings() -> WorkerSettings:
    """The process's settings, read from the environment once."""
    return load_settings(WorkerSettings)

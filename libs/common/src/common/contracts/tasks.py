"""Celery task names and queues: the API sends by name and never imports worker code."""

from __future__ import annotations

RUN_JOB_TASK = "jobs.run"
JOBS_QUEUE = "jobs"

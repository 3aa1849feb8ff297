"""Celery task names and queues: the API sends by name and never imports worker code."""

from __future__ import annotations

RUN_JOB_TASK = "jobs.run"
JOBS_QUEUE = "jobs"
# Message headers naming the request that created the job (W3C Trace Context's
# name for the second, so OpenTelemetry's Celery instrumentation reads it too).
REQUEST_ID_HEADER = "request_id"
TRACEPARENT_HEADER = "traceparent"
# The job's kind, so a worker can hold the run to its own ceiling for that kind
# (`JOB_MAX_RUN_SECONDS`) before the job's row is read.
KIND_HEADER = "job_kind"

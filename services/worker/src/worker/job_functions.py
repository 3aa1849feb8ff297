"""The functions that run each job kind, by the names registered in `common.contracts.job_kinds`."""

from __future__ import annotations

from typing import Any

from common import jobs_repository as jobs
from common.contracts.job_kinds import (
    DEMO_COUNTDOWN,
    DEMO_FLAKY,
    REPORT_JOBS_SUMMARY,
    CountdownParams,
    FlakyParams,
    JobsSummaryParams,
)
from worker.runner import JobFunction, JobRun, TransientJobError


def countdown(run: JobRun, params: CountdownParams) -> dict[str, Any]:
    """`steps` steps `interval` seconds apart, progress after each."""
    for step in range(1, params.steps + 1):
        run.wait(params.interval)
        if params.fail_at_step == step:
            raise RuntimeError(f"failed at step {step} as asked")
        run.progress(step * 100 // params.steps, step=step, steps=params.steps)
    return {"steps": params.steps}


def flaky(run: JobRun, params: FlakyParams) -> dict[str, Any]:
    """Fail transiently on the first `failures` attempts, then succeed."""
    if run.attempt <= params.failures:
        raise TransientJobError(f"simulated transient failure on attempt {run.attempt}")
    run.progress(100)
    return {"attempts": run.attempt}


def _seconds(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


def jobs_summary(run: JobRun, params: JobsSummaryParams) -> dict[str, Any]:
    """Per-kind and per-state counts and duration percentiles of the owner's other jobs."""
    with run.engine.connect() as connection:
        rows = connection.execute(
            jobs.SUMMARY, {"owner_id": run.owner_id, "job_id": run.job_id}
        ).all()
    kinds: dict[str, dict[str, Any]] = {}
    total = 0
    for row in rows:
        durations = {"p50": _seconds(row.p50), "p95": _seconds(row.p95), "max": _seconds(row.max)}
        if row.kind is None:
            total = row.jobs
        elif row.state is None:
            kinds.setdefault(row.kind, {"by_state": {}})
            kinds[row.kind].update(total=row.jobs, duration_seconds=durations)
        else:
            kinds.setdefault(row.kind, {"by_state": {}})["by_state"][row.state] = row.jobs
    run.progress(100)
    return {"total": total, "kinds": kinds}


JOB_FUNCTIONS: dict[str, tuple[JobFunction, type[Any]]] = {
    DEMO_COUNTDOWN: (countdown, CountdownParams),
    DEMO_FLAKY: (flaky, FlakyParams),
    REPORT_JOBS_SUMMARY: (jobs_summary, JobsSummaryParams),
}

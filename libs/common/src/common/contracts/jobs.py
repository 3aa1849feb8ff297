"""The job state machine, shared by the API and the worker (the table is `common.models.Job`).

    queued ──▶ running ──▶ succeeded | failed | cancelled
      │          │
      │          └──▶ queued   (lease expired: the sweep requeues, attempt + 1)
      └──▶ cancelled

Every transition is one guarded statement of `common.jobs_repository`, so a
redelivered message cannot run a finished job again or move it back;
`tests/integration/test_job_transitions.py` holds those statements to
`TRANSITIONS`, every move they make and none they must not.
"""

from __future__ import annotations

from enum import StrEnum


class JobState(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATES = frozenset({JobState.QUEUED, JobState.RUNNING})
# The active states as SQL literals, as `ix_jobs_owner_active`'s predicate names
# them: a query must spell them so (not `= ANY($1)`) for the planner to use it.
ACTIVE_STATES_SQL = ", ".join(f"'{state.value}'" for state in sorted(ACTIVE_STATES))
FINAL_STATES = frozenset({JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED})
TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.QUEUED: frozenset({JobState.RUNNING, JobState.CANCELLED}),
    JobState.RUNNING: frozenset(
        {JobState.QUEUED, JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED}
    ),
    JobState.SUCCEEDED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}


def sources_of(target: JobState) -> list[str]:
    """The states a job may move to `target` from, for an `UPDATE ... WHERE state IN`."""
    return sorted(state.value for state, targets in TRANSITIONS.items() if target in targets)

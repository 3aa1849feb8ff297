"""The registry of job kinds: each name with its typed parameters and time limits.

The API validates `params` against the kind's model before it accepts a job;
the worker maps the same names to the functions that run them
(`worker.job_functions`). Adding a kind means adding it here and there.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

DEMO_COUNTDOWN = "demo.countdown"
DEMO_FLAKY = "demo.flaky"
REPORT_JOBS_SUMMARY = "report.jobs_summary"
# Kinds that exist to show the system working: off in production unless enabled
# (`DEMO_KINDS_ENABLED`), since they let any account hold a worker for a long time.
DEMO_KINDS = frozenset({DEMO_COUNTDOWN, DEMO_FLAKY})


class CountdownParams(BaseModel):
    """`steps` steps `interval` seconds apart, progress after each; may fail on purpose."""

    model_config = ConfigDict(extra="forbid")

    steps: int = Field(ge=1, le=1000, description="Number of steps")
    interval: float = Field(ge=0, le=60, description="Seconds between steps")
    fail_at_step: int | None = Field(
        default=None, ge=1, le=1000, description="Raise an error at this step (for demos)"
    )

    @model_validator(mode="after")
    def _fail_within_steps(self) -> CountdownParams:
        if self.fail_at_step is not None and self.fail_at_step > self.steps:
            raise ValueError("fail_at_step must not exceed steps")
        return self


class FlakyParams(BaseModel):
    """Fails with a transient connection error on its first `failures` attempts."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(ge=0, le=5, description="Attempts that fail before one succeeds")


class JobsSummaryParams(BaseModel):
    """No parameters: the summary covers all of the owner's jobs."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class JobKind:
    """A registered kind: its parameter model and how long one run may take."""

    name: str
    params_model: type[BaseModel]
    description: str
    # Hard time limit of one run in seconds, from its validated parameters.
    time_limit: Callable[[Any], int]

    def limits(self, params: dict[str, Any]) -> tuple[int, int]:
        """(soft, hard) time limits in seconds for a run with `params`."""
        hard = self.time_limit(self.params_model.model_validate(params))
        return max(1, hard - 5), hard


def _countdown_limit(params: CountdownParams) -> int:
    return int(params.steps * params.interval) + 60


JOB_KINDS: dict[str, JobKind] = {
    kind.name: kind
    for kind in (
        JobKind(
            DEMO_COUNTDOWN,
            CountdownParams,
            "Counts down, reporting progress after every step.",
            _countdown_limit,
        ),
        JobKind(
            DEMO_FLAKY,
            FlakyParams,
            "Fails with a transient error a few times, then succeeds (retry demo).",
            lambda _: 60,
        ),
        JobKind(
            REPORT_JOBS_SUMMARY,
            JobsSummaryParams,
            "Counts the owner's jobs per kind and state, with duration percentiles.",
            lambda _: 300,
        ),
    )
}

# Longest possible run of any kind: the broker's visibility timeout must exceed it.
MAX_TIME_LIMIT = _countdown_limit(CountdownParams(steps=1000, interval=60))

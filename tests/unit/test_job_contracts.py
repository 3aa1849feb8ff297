"""The job contracts shared by the API and the worker: states, kinds, limits, broker, URLs."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from api.settings import ApiSettings
from common.broker import VISIBILITY_TIMEOUT, celery_config
from common.contracts.job_kinds import (
    DEMO_COUNTDOWN,
    DEMO_FLAKY,
    JOB_KINDS,
    MAX_TIME_LIMIT,
    REPORT_JOBS_SUMMARY,
    CountdownParams,
)
from common.contracts.jobs import ACTIVE_STATES, FINAL_STATES, TRANSITIONS, JobState, sources_of
from common.settings import normalize_database_url, to_sync_database_url
from worker.job_functions import JOB_FUNCTIONS


class TestStateMachine:
    """Transitions never leave a final state, and the guards list exactly the allowed sources."""

    def test_every_state_has_its_transitions(self) -> None:
        assert set(TRANSITIONS) == set(JobState)

    def test_states_are_active_or_final(self) -> None:
        assert set(JobState) == ACTIVE_STATES | FINAL_STATES
        assert not ACTIVE_STATES & FINAL_STATES

    @pytest.mark.parametrize("state", sorted(FINAL_STATES))
    def test_no_transition_out_of_a_final_state(self, state: JobState) -> None:
        assert TRANSITIONS[state] == frozenset()
        assert all(state.value not in sources_of(target) for target in JobState)

    @pytest.mark.parametrize(
        ("target", "sources"),
        [
            (JobState.QUEUED, ["running"]),
            (JobState.RUNNING, ["queued"]),
            (JobState.SUCCEEDED, ["running"]),
            (JobState.FAILED, ["running"]),
            (JobState.CANCELLED, ["queued", "running"]),
        ],
    )
    def test_sources_of_lists_the_allowed_sources_sorted(
        self, target: JobState, sources: list[str]
    ) -> None:
        assert sources_of(target) == sources

    def test_no_state_moves_to_itself(self) -> None:
        assert all(state not in targets for state, targets in TRANSITIONS.items())


class TestKindLimits:
    """Each run gets a soft limit before its hard one, and the hard one covers the work."""

    @pytest.mark.parametrize(
        ("kind", "params"),
        [
            (DEMO_COUNTDOWN, {"steps": 1, "interval": 0}),
            (DEMO_COUNTDOWN, {"steps": 1000, "interval": 60}),
            (DEMO_FLAKY, {"failures": 2}),
            (REPORT_JOBS_SUMMARY, {}),
        ],
    )
    def test_soft_limit_is_positive_and_below_the_hard_one(
        self, kind: str, params: dict[str, Any]
    ) -> None:
        soft, hard = JOB_KINDS[kind].limits(params)
        assert 1 <= soft < hard

    @pytest.mark.parametrize(
        ("steps", "interval"), [(1, 0), (3, 0.5), (10, 59.9), (999, 0.1), (1000, 60)]
    )
    def test_countdown_hard_limit_covers_all_its_sleeping(
        self, steps: int, interval: float
    ) -> None:
        _, hard = JOB_KINDS[DEMO_COUNTDOWN].limits({"steps": steps, "interval": interval})
        assert hard >= steps * interval

    def test_limits_validate_the_params(self) -> None:
        with pytest.raises(ValidationError, match="steps"):
            JOB_KINDS[DEMO_COUNTDOWN].limits({"steps": 0, "interval": 1})

    def test_countdown_rejects_failing_past_its_last_step(self) -> None:
        with pytest.raises(ValueError, match="fail_at_step"):
            CountdownParams(steps=3, interval=0, fail_at_step=4)


class TestKindRegistry:
    """Every kind the API accepts has a worker function that takes the same parameters."""

    # --8<-- [start:kind-registry]
    def test_every_kind_has_a_worker_function(self) -> None:
        assert set(JOB_FUNCTIONS) == set(JOB_KINDS)

    @pytest.mark.parametrize("kind", sorted(JOB_KINDS))
    def test_worker_function_takes_the_kinds_params_model(self, kind: str) -> None:
        _, params_model = JOB_FUNCTIONS[kind]
        assert params_model is JOB_KINDS[kind].params_model

    # --8<-- [end:kind-registry]


class TestBrokerTimeouts:
    """The broker never redelivers a live job: its visibility timeout outlasts any run."""

    @pytest.mark.parametrize(
        ("kind", "largest"),
        [
            (DEMO_COUNTDOWN, {"steps": 1000, "interval": 60}),
            (DEMO_FLAKY, {"failures": 5}),
            (REPORT_JOBS_SUMMARY, {}),
        ],
    )
    def test_no_run_may_outlast_max_time_limit(self, kind: str, largest: dict[str, Any]) -> None:
        assert JOB_KINDS[kind].limits(largest)[1] <= MAX_TIME_LIMIT

    def test_visibility_timeout_exceeds_the_longest_run(self) -> None:
        assert MAX_TIME_LIMIT < VISIBILITY_TIMEOUT

    def test_celery_config_uses_the_visibility_timeout_and_key_prefix(self) -> None:
        settings = ApiSettings(_env_file=None, redis_key_prefix="p:")
        options = celery_config(settings)["broker_transport_options"]
        assert options["visibility_timeout"] == VISIBILITY_TIMEOUT
        assert options["global_keyprefix"] == "p:"


class TestSyncDatabaseUrl:
    """The worker's psycopg URL is the API's asyncpg URL with libpq's spelling back."""

    def test_ssl_require_becomes_sslmode_require(self) -> None:
        url = normalize_database_url("postgres://u:p@db.example.com:5432/app?sslmode=require")
        assert url == "postgresql+asyncpg://u:p@db.example.com:5432/app?ssl=require"
        assert to_sync_database_url(url) == (
            "postgresql+psycopg://u:p@db.example.com:5432/app?sslmode=require"
        )

    def test_url_without_query_keeps_everything_else(self) -> None:
        assert (
            to_sync_database_url("postgresql+asyncpg://u@h/app") == "postgresql+psycopg://u@h/app"
        )

    def test_settings_give_the_sync_url(self) -> None:
        settings = ApiSettings(
            _env_file=None, database_url="postgresql://u:p@h:5432/app?sslmode=verify-full"
        )
        assert (
            settings.sync_database_url == "postgresql+psycopg://u:p@h:5432/app?sslmode=verify-full"
        )

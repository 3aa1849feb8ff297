"""The Blueprint's Postgres connection budget (scripts/connection_budget.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from common.connection_budget import ServerLimits, Share, budget_problem, share_of
from common.settings import CommonSettings
from scripts import blueprint, connection_budget


@pytest.fixture
def spec() -> dict[str, Any]:
    return blueprint.load()


def _api(spec: dict[str, Any]) -> dict[str, Any]:
    return next(service for service in spec["services"] if service["name"] == "api")


class TestConnectionBudget:
    def test_every_instance_at_its_most_fits_postgres_default_max_connections(
        self, spec: dict[str, Any]
    ) -> None:
        budget = connection_budget.rows(spec)
        assert {row.service for row in budget} == {"api", "worker", "scheduler"}
        total = sum(row.connections for row in budget)
        assert total <= connection_budget.usable(connection_budget.POSTGRES_DEFAULT_MAX_CONNECTIONS)
        assert connection_budget.main([]) == 0

    def test_autoscaling_counts_its_maximum_and_an_overdrawn_budget_fails(
        self, spec: dict[str, Any]
    ) -> None:
        scaled = copy.deepcopy(spec)
        api = _api(scaled)
        api.pop("numInstances", None)
        api["scaling"] = {"minInstances": 2, "maxInstances": 6, "targetCPUPercent": 70}
        row = next(row for row in connection_budget.rows(scaled) if row.service == "api")
        assert row.instances == 6
        assert row.connections == 6 * row.processes * (row.pool + row.overflow)
        total = sum(row.connections for row in connection_budget.rows(scaled))
        assert total > connection_budget.usable(connection_budget.POSTGRES_DEFAULT_MAX_CONNECTIONS)

    def test_unset_pool_settings_count_the_services_defaults(self, spec: dict[str, Any]) -> None:
        bare = copy.deepcopy(spec)
        api = _api(bare)
        api["envVars"] = [var for var in api["envVars"] if var.get("key") != "DB_MAX_OVERFLOW"]
        row = next(row for row in connection_budget.rows(bare) if row.service == "api")
        assert row.overflow == CommonSettings.model_fields["db_max_overflow"].default


class TestBudgetArithmetic:
    """common.connection_budget: a share warns only when it can exceed what the server leaves."""

    def test_share_is_instances_times_processes_times_pool_and_overflow(self) -> None:
        share = Share(instances=3, processes=2, pool=10, overflow=5)
        assert share.connections == 90

    def test_others_and_reserved_slots_shrink_what_is_free(self) -> None:
        limits = ServerLimits(max_connections=100, reserved=3, held_by_others=17)
        assert limits.usable == 97
        assert limits.free == 80

    def test_a_share_that_fits_exactly_is_no_problem_and_one_more_is(self) -> None:
        limits = ServerLimits(max_connections=100, reserved=3, held_by_others=17)
        fits = Share(instances=2, processes=2, pool=15, overflow=5)
        assert budget_problem("api", fits, limits) is None
        over = Share(instances=3, processes=1, pool=20, overflow=7)
        problem = budget_problem("api", over, limits)
        assert problem is not None
        assert "api may open 81 Postgres connections" in problem
        assert "others hold 17, leaving 80" in problem

    def test_share_of_settings_reads_instance_count_and_pool(self) -> None:
        settings = CommonSettings(
            _env_file=None, instance_count=4, db_pool_size=3, db_max_overflow=1
        )
        assert share_of(settings, processes=2) == Share(
            instances=4, processes=2, pool=3, overflow=1
        )


def test_blueprint_instance_count_matches_the_instances_counted(spec: dict[str, Any]) -> None:
    """Render does not tell a process its instance count: INSTANCE_COUNT must say it."""
    for row in connection_budget.rows(spec):
        service = next(s for s in spec["services"] if s["name"] == row.service)
        env = {var["key"]: var.get("value") for var in service["envVars"] if "key" in var}
        if service["type"] == "cron":
            assert "INSTANCE_COUNT" not in env  # one run at a time; it does not check
            continue
        assert int(env["INSTANCE_COUNT"]) == row.instances, row.service

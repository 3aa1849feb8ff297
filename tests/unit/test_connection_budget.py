"""The Blueprint's Postgres connection budget (scripts/connection_budget.py)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

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

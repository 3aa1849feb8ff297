"""What a deployment lets one job do: kinds it runs, and a ceiling per kind (#15 §4)."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.fixtures.api import AppClient, RegisteredUser, SettingsFactory
from tests.fixtures.jobs import post_job
from tests.fixtures.problems import assert_problem
from worker.app import clamp_time_limits

LONG_COUNTDOWN = {"kind": "demo.countdown", "params": {"steps": 1000, "interval": 60}}


class TestDemoKinds:
    """Demo kinds are off in production unless `DEMO_KINDS_ENABLED`."""

    async def test_production_refuses_and_hides_them(
        self, app_client: AppClient, user: RegisteredUser
    ) -> None:
        client = await app_client(environment="production")
        assert_problem(await post_job(client, user, {"kind": "demo.countdown", "params": {}}), 422)
        kinds = (await client.get("/v1/jobs/kinds")).json()
        assert [kind["name"] for kind in kinds] == ["report.jobs_summary"]
        accepted = await post_job(client, user, {"kind": "report.jobs_summary", "params": {}})
        assert accepted.status_code == 202

    async def test_production_runs_them_when_enabled(
        self, app_client: AppClient, user: RegisteredUser
    ) -> None:
        client = await app_client(environment="production", demo_kinds_enabled=True)
        body = {"kind": "demo.countdown", "params": {"steps": 1, "interval": 0}}
        assert (await post_job(client, user, body)).status_code == 202

    async def test_on_by_default_outside_production(self, client: httpx.AsyncClient) -> None:
        names = {kind["name"] for kind in (await client.get("/v1/jobs/kinds")).json()}
        assert {"demo.countdown", "demo.flaky"} <= names


class TestRunCeiling:
    """`JOB_MAX_RUN_SECONDS` refuses longer jobs at the API and cuts runs at the worker."""

    async def test_job_longer_than_the_ceiling_gets_422(
        self, app_client: AppClient, user: RegisteredUser
    ) -> None:
        client = await app_client(job_max_run_seconds={"demo.countdown": 600})
        body = assert_problem(await post_job(client, user, LONG_COUNTDOWN), 422)
        assert "600s" in body["detail"]
        short = {"kind": "demo.countdown", "params": {"steps": 10, "interval": 1}}
        assert (await post_job(client, user, short)).status_code == 202

    async def test_without_a_ceiling_the_kinds_own_limit_applies(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        assert (await post_job(client, user, LONG_COUNTDOWN)).status_code == 202

    @pytest.mark.parametrize(
        ("limits", "ceiling", "expected"),
        [
            ((60060, 60055), 600, (600, 595)),
            ((65, 60), 600, (65, 60)),
            ((None, None), 600, (600, 595)),
            ((60060, 60055), None, (60060, 60055)),
        ],
    )
    def test_worker_holds_a_message_to_its_ceiling(
        self, limits: Any, ceiling: int | None, expected: tuple[int, int]
    ) -> None:
        assert clamp_time_limits(limits, ceiling) == expected

    def test_a_ceiling_must_be_positive(self, settings_factory: SettingsFactory) -> None:
        with pytest.raises(ValueError, match="JOB_MAX_RUN_SECONDS"):
            settings_factory(job_max_run_seconds={"demo.countdown": 0})

"""GET /v1/jobs and /v1/jobs/{id}: a user reads only their own jobs, a page at a time;
every jobs endpoint needs a token.

No worker runs here, so a job stays queued unless a test moves it in SQL.
"""

from __future__ import annotations

import base64
import json
import uuid
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from common.contracts.job_kinds import DEMO_COUNTDOWN, REPORT_JOBS_SUMMARY
from tests.fixtures.api import MakeUser
from tests.fixtures.jobs import (
    COUNTDOWN,
    SUMMARY,
    create_job,
    error_locations,
    set_job_state,
)
from tests.fixtures.problems import assert_problem


def _cursor(payload: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(payload).encode()).decode().rstrip("=")


class TestOwnership:
    """A user sees only their own jobs; someone else's is indistinguishable from none."""

    async def test_another_users_job_is_404_like_a_missing_one(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        owner, stranger = await make_user(), await make_user()
        job = await create_job(client, owner)
        missing_id = str(uuid.uuid4())
        theirs = assert_problem(
            await client.get(f"/v1/jobs/{job['id']}", headers=stranger.headers), 404
        )
        missing = assert_problem(
            await client.get(f"/v1/jobs/{missing_id}", headers=stranger.headers), 404
        )
        for body in (theirs, missing):
            body.pop("request_id")
        assert json.dumps(theirs).replace(job["id"], "ID") == json.dumps(missing).replace(
            missing_id, "ID"
        )

    async def test_list_never_shows_another_users_jobs(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        owner, stranger = await make_user(), await make_user()
        await create_job(client, owner)
        mine = await create_job(client, stranger)
        page = await client.get("/v1/jobs", headers=stranger.headers)
        assert page.status_code == 200
        assert [item["id"] for item in page.json()["items"]] == [mine["id"]]

    async def test_malformed_job_id_is_422(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        problem = assert_problem(await client.get("/v1/jobs/not-a-uuid", headers=user.headers), 422)
        assert ["path", "job_id"] in error_locations(problem)


class TestList:
    """GET /v1/jobs pages the caller's jobs newest first, filtered by state and kind."""

    async def test_pages_walk_every_job_newest_first_once(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        created = [(await create_job(client, user))["id"] for _ in range(7)]
        seen: list[str] = []
        sizes: list[int] = []
        cursor: str | None = None
        for _ in range(10):
            params: dict[str, Any] = {"limit": 3} | ({"cursor": cursor} if cursor else {})
            response = await client.get("/v1/jobs", params=params, headers=user.headers)
            assert response.status_code == 200, response.text
            page = response.json()
            assert set(page) == {"items", "next_cursor"}
            sizes.append(len(page["items"]))
            seen += [item["id"] for item in page["items"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert sizes == [3, 3, 1]
        assert seen == list(reversed(created))

    async def test_exactly_full_last_page_has_no_next_cursor(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        for _ in range(3):
            await create_job(client, user)
        page = (await client.get("/v1/jobs", params={"limit": 3}, headers=user.headers)).json()
        assert len(page["items"]) == 3
        assert page["next_cursor"] is None

    async def test_filter_by_state(
        self, client: httpx.AsyncClient, make_user: MakeUser, db_engine: AsyncEngine
    ) -> None:
        user = await make_user()
        done, waiting = await create_job(client, user), await create_job(client, user)
        await set_job_state(db_engine, done["id"], "succeeded")
        succeeded = await client.get(
            "/v1/jobs", params={"state": "succeeded"}, headers=user.headers
        )
        queued = await client.get("/v1/jobs", params={"state": "queued"}, headers=user.headers)
        assert [j["id"] for j in succeeded.json()["items"]] == [done["id"]]
        assert succeeded.json()["items"][0]["state"] == "succeeded"
        assert [j["id"] for j in queued.json()["items"]] == [waiting["id"]]

    async def test_filter_by_kind(self, client: httpx.AsyncClient, make_user: MakeUser) -> None:
        user = await make_user()
        countdown = await create_job(client, user)
        summary = await create_job(client, user, SUMMARY)
        for kind, expected in ((REPORT_JOBS_SUMMARY, summary), (DEMO_COUNTDOWN, countdown)):
            page = await client.get("/v1/jobs", params={"kind": kind}, headers=user.headers)
            assert [j["id"] for j in page.json()["items"]] == [expected["id"]]

    @pytest.mark.parametrize(
        "params",
        [
            {"limit": 0},
            {"limit": 101},
            {"state": "sleeping"},
            {"cursor": "not-a-cursor"},
            {"cursor": _cursor({"created": "2024-01-01"})},
            {"cursor": _cursor(["yesterday", str(uuid.uuid4())])},
            {"cursor": _cursor(["2024-01-01T00:00:00+00:00", "not-a-uuid"])},
            {"cursor": _cursor([1, 2])},
            # From issue 15: a list where the id goes raised AttributeError (500).
            {"cursor": "WyIyMDI0LTAxLTAxVDAwOjAwOjAwKzAwOjAwIiwgWyJ4Il1d"},
            {"cursor": _cursor(["2024-01-01T00:00:00", str(uuid.uuid4())])},
            {"cursor": _cursor(["2024-01-01T00:00:00+00:00", 12345678])},
            {"kind": "demo\x00countdown"},
        ],
        ids=[
            "limit-0",
            "limit-101",
            "unknown-state",
            "cursor-not-base64-json",
            "cursor-an-object",
            "cursor-bad-time",
            "cursor-bad-id",
            "cursor-numbers",
            "cursor-list-id",
            "cursor-naive-time",
            "cursor-numeric-id",
            "kind-with-nul",
        ],
    )
    async def test_bad_query_is_422(
        self, client: httpx.AsyncClient, make_user: MakeUser, params: dict[str, Any]
    ) -> None:
        user = await make_user()
        problem = assert_problem(
            await client.get("/v1/jobs", params=params, headers=user.headers), 422
        )
        assert ["query", next(iter(params))] in error_locations(problem)


class TestAuthentication:
    """Every jobs endpoint that touches jobs needs a bearer token."""

    @pytest.mark.parametrize(
        ("method", "path"),
        [
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs"),
            ("GET", f"/v1/jobs/{uuid.uuid4()}"),
            ("POST", f"/v1/jobs/{uuid.uuid4()}/cancel"),
        ],
        # Ids without the random part: every pytest-xdist worker collects the same.
        ids=["POST-jobs", "GET-jobs", "GET-a-job", "POST-cancel"],
    )
    async def test_without_a_token_is_401(
        self, client: httpx.AsyncClient, method: str, path: str
    ) -> None:
        response = await client.request(method, path, json=COUNTDOWN if method == "POST" else None)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"

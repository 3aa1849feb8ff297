"""Rate limits and login protection of the API in process, against real Redis and Postgres."""

from __future__ import annotations

import re
import statistics
import time
import uuid
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from common.ratelimit import build_policies
from devservices import free_port
from tests.fixtures.api import (
    PASSWORD,
    AppClient,
    MakeUser,
    RegisteredUser,
    SettingsFactory,
)
from tests.fixtures.metrics import local_sample
from tests.fixtures.problems import assert_problem
from tests.fixtures.services import new_prefix

# The integration client's socket peer (see `client_factory`).
PEER = "203.0.113.7"
_RATELIMIT = re.compile(r'^"(?P<name>\w+)";r=(?P<r>\d+);t=(?P<t>\d+)$')


async def _statuses(client: httpx.AsyncClient, count: int, **kwargs: Any) -> list[int]:
    return [(await client.get("/v1/jobs/kinds", **kwargs)).status_code for _ in range(count)]


class TestPolicies:
    """A route group's limit answers 429 beyond it, with draft RateLimit headers."""

    async def test_limited_route_reports_policy_and_remaining(
        self, limited_client: AppClient
    ) -> None:
        client = await limited_client(rate_limit_reads="3/minute")
        first = await client.get("/v1/jobs/kinds")
        assert first.status_code == 200
        assert first.headers["ratelimit-policy"] == '"reads";q=3;w=60'
        match = _RATELIMIT.match(first.headers["ratelimit"])
        assert match is not None, first.headers["ratelimit"]
        assert (match["name"], match["r"]) == ("reads", "2")
        assert 1 <= int(match["t"]) <= 60

    async def test_request_beyond_the_limit_gets_429_problem_with_retry_after(
        self, limited_client: AppClient
    ) -> None:
        client = await limited_client(rate_limit_reads="3/minute")
        assert await _statuses(client, 3) == [200, 200, 200]
        denied = await client.get("/v1/jobs/kinds")
        body = assert_problem(denied, 429)
        assert body["title"] == "Too many requests"
        assert 1 <= int(denied.headers["retry-after"]) <= 60
        assert denied.headers["ratelimit"].startswith('"reads";r=0;')

    async def test_a_redis_that_lost_the_script_goes_on_counting(
        self,
        limited_client: AppClient,
        redis_url: str,
    ) -> None:
        client = await limited_client(rate_limit_reads="3/minute")
        assert await _statuses(client, 1) == [200]
        redis = Redis.from_url(redis_url)
        try:
            await redis.script_flush()  # as after a restart without persistence
        finally:
            await redis.aclose()
        assert await _statuses(client, 3) == [200, 200, 429]

    async def test_health_is_never_limited(self, limited_client: AppClient) -> None:
        client = await limited_client(rate_limit_reads="1/minute")
        for _ in range(5):
            response = await client.get("/health/live")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers

    async def test_groups_are_counted_separately(self, limited_client: AppClient) -> None:
        client = await limited_client(rate_limit_reads="1/minute", rate_limit_auth="1/minute")
        assert await _statuses(client, 2) == [200, 429]
        registered = await client.post(
            "/v1/auth/register",
            json={"email": f"u-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD},
        )
        assert registered.status_code == 201
        assert registered.headers["ratelimit-policy"] == '"auth";q=1;w=60'

    async def test_logout_answer_keeps_its_rate_limit_headers(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        user: RegisteredUser = await make_user()
        client = await limited_client()
        response = await client.post(
            "/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers
        )
        assert response.status_code == 204
        assert response.content == b""
        assert response.headers["cache-control"] == "no-store"
        assert response.headers["ratelimit-policy"].startswith('"auth";')


class TestKeys:
    """Authenticated callers are counted per user, anonymous ones per client address."""

    async def test_two_users_from_one_address_are_limited_independently(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        alice: RegisteredUser = await make_user()
        bob: RegisteredUser = await make_user()
        client = await limited_client(rate_limit_reads="2/minute")
        assert await _statuses(client, 3, headers=alice.headers) == [200, 200, 429]
        assert await _statuses(client, 2, headers=bob.headers) == [200, 200]
        # Anonymous requests from the same address have a count of their own.
        assert await _statuses(client, 1) == [200]

    async def test_invalid_token_is_counted_by_address(self, limited_client: AppClient) -> None:
        client = await limited_client(rate_limit_reads="2/minute")
        forged = {"Authorization": "Bearer not-a-token"}
        assert await _statuses(client, 1, headers=forged) == [200]
        assert await _statuses(client, 2) == [200, 429]

    async def test_two_addresses_behind_a_trusted_proxy_are_limited_independently(
        self, limited_client: AppClient
    ) -> None:
        client = await limited_client(rate_limit_reads="2/minute", forwarded_allow_ips=[PEER])
        first = {"X-Forwarded-For": "198.51.100.1"}
        second = {"X-Forwarded-For": "198.51.100.2"}
        assert await _statuses(client, 3, headers=first) == [200, 200, 429]
        assert await _statuses(client, 2, headers=second) == [200, 200]
        # A client-written left-most entry does not pick the key: the proxy's entry does.
        spoofed = {"X-Forwarded-For": "6.6.6.6, 198.51.100.1"}
        assert await _statuses(client, 1, headers=spoofed) == [429]

    async def test_forwarded_header_from_an_untrusted_peer_changes_nothing(
        self, limited_client: AppClient
    ) -> None:
        client = await limited_client(
            rate_limit_reads="2/minute", forwarded_allow_ips=["127.0.0.1"]
        )
        statuses = [
            (
                await client.get("/v1/jobs/kinds", headers={"X-Forwarded-For": f"198.51.100.{n}"})
            ).status_code
            for n in range(4)
        ]
        assert statuses == [200, 200, 429, 429]


class TestAnonymousRoutes:
    """Register, login and refresh count per client address whatever token is sent (#15 §3)."""

    async def test_bearer_tokens_do_not_give_one_address_more_budgets(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        client = await limited_client(rate_limit_auth="2/minute")
        alice, bob = await make_user(), await make_user()
        statuses = [
            (
                await client.post(
                    "/v1/auth/refresh", json={"refresh_token": "x" * 40}, headers=user.headers
                )
            ).status_code
            for user in (alice, bob, alice, bob)
        ]
        assert statuses == [401, 401, 429, 429]
        login = await client.post(
            "/v1/auth/token",
            data={"username": alice.email, "password": alice.password},
            headers=bob.headers,
        )
        assert_problem(login, 429)
        register = await client.post(
            "/v1/auth/register",
            json={"email": f"n-{uuid.uuid4().hex[:8]}@example.com", "password": PASSWORD},
            headers=alice.headers,
        )
        assert_problem(register, 429)


@dataclass
class _PrefixedApp:
    """A client of an app whose limiter keys all start with `prefix`."""

    client: httpx.AsyncClient
    redis_url: str
    prefix: str

    async def longest_key(self) -> int:
        redis = Redis.from_url(self.redis_url)
        try:
            keys = [key async for key in redis.scan_iter(match=f"{self.prefix}*", count=1000)]
        finally:
            await redis.aclose()
        assert keys, "the limiter stored nothing under this test's prefix"
        return max(len(key) for key in keys)


class TestBoundedInput:
    """Oversized fields are refused at the edge, and no limiter key grows with input (#15 §1)."""

    @pytest.fixture
    async def keyed(
        self, app_client: AppClient, redis_url: str, redis_key_prefix: str
    ) -> _PrefixedApp:
        prefix = new_prefix(redis_key_prefix)
        return _PrefixedApp(await app_client(redis_key_prefix=prefix), redis_url, prefix)

    async def test_huge_username_gets_422_and_leaves_no_long_key(self, keyed: _PrefixedApp) -> None:
        huge = "a" * 400_000 + "@example.com"
        response = await keyed.client.post(
            "/v1/auth/token", data={"username": huge, "password": "x"}
        )
        body = assert_problem(response, 422)
        assert "username" in str(body["errors"])
        assert len(response.content) < 4096, "the answer must not echo the input"
        assert await keyed.longest_key() <= 200

    async def test_limiter_keys_are_digests_whatever_the_identity(
        self, keyed: _PrefixedApp
    ) -> None:
        # The longest username the form accepts is counted under a digest of it.
        longest = "a" * 308 + "@example.com"
        response = await keyed.client.post(
            "/v1/auth/token", data={"username": longest, "password": "wrong password!"}
        )
        assert_problem(response, 401)
        assert await keyed.longest_key() <= 120

    @pytest.mark.parametrize(
        ("path", "body"),
        [
            ("/v1/auth/register", {"email": "a" * 400 + "@example.com", "password": PASSWORD}),
            ("/v1/auth/register", {"email": "ok@example.com", "password": "p" * 1025}),
            ("/v1/auth/refresh", {"refresh_token": "r" * 513}),
        ],
    )
    async def test_oversized_json_fields_get_422(
        self, client: httpx.AsyncClient, path: str, body: dict[str, str]
    ) -> None:
        assert_problem(await client.post(path, json=body), 422)

    async def test_nul_in_the_username_gets_422_not_500(self, client: httpx.AsyncClient) -> None:
        """Found by `make fuzz`: PostgreSQL text cannot hold NUL, so it failed the query."""
        response = await client.post(
            "/v1/auth/token", data={"username": "c\x00@example.com", "password": "whatever1"}
        )
        assert_problem(response, 422)

    async def test_oversized_login_password_gets_422(self, client: httpx.AsyncClient) -> None:
        response = await client.post(
            "/v1/auth/token", data={"username": "a@example.com", "password": "p" * 1025}
        )
        assert_problem(response, 422)


class TestRedisDown:
    """With Redis unreachable, reads fail open and auth fails closed (503); never a 500."""

    @pytest.fixture
    async def broken(self, app_client: AppClient) -> httpx.AsyncClient:
        # Nothing listens on a fresh free port: every Redis call is refused at once.
        return await app_client(
            redis_url=f"redis://127.0.0.1:{free_port()}/0", redis_socket_timeout=1.0
        )

    async def test_reads_are_served(
        self, broken: httpx.AsyncClient, make_user: MakeUser, caplog: pytest.LogCaptureFixture
    ) -> None:
        user: RegisteredUser = await make_user()
        counted = local_sample("rate_limit_backend_failures_total", policy="reads", outcome="open")
        anonymous = await broken.get("/v1/jobs/kinds")
        assert anonymous.status_code == 200
        assert "ratelimit" not in anonymous.headers
        mine = await broken.get("/v1/jobs", headers=user.headers)
        assert mine.status_code == 200, mine.text
        failures = [r for r in caplog.records if r.name == "common.ratelimit"]
        assert [(r.levelname, getattr(r, "policy", None)) for r in failures][-2:] == [
            ("WARNING", "reads"),
            ("WARNING", "reads"),
        ]
        assert (
            local_sample("rate_limit_backend_failures_total", policy="reads", outcome="open")
            == counted + 2
        )

    async def test_login_and_register_are_refused_with_503(
        self, broken: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user: RegisteredUser = await make_user()
        login = await broken.post(
            "/v1/auth/token", data={"username": user.email, "password": user.password}
        )
        assert_problem(login, 503)
        assert login.headers["retry-after"] == "5"
        register = await broken.post(
            "/v1/auth/register", json={"email": "x@example.com", "password": PASSWORD}
        )
        assert_problem(register, 503)

    async def test_fail_closed_policies_are_a_setting(self, app_client: AppClient) -> None:
        client = await app_client(
            redis_url=f"redis://127.0.0.1:{free_port()}/0", rate_limit_fail_closed=["reads"]
        )
        assert_problem(await client.get("/v1/jobs/kinds"), 503)


class TestLogin:
    """Failed logins are limited per account and per address; a locked login costs no hash."""

    async def _login(
        self,
        client: httpx.AsyncClient,
        email: str,
        password: str,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        return await client.post(
            "/v1/auth/token", data={"username": email, "password": password}, headers=headers
        )

    async def test_n_wrong_passwords_lock_the_account_even_for_the_right_one(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        user: RegisteredUser = await make_user()
        client = await limited_client(rate_limit_login_account="3/minute")
        for _ in range(3):
            assert_problem(await self._login(client, user.email, "wrong password!"), 401)
        # Locked: the right password is not even checked (it would have answered 200).
        locked = await self._login(client, user.email.upper(), user.password)
        body = assert_problem(locked, 429)
        assert "account" in body["detail"]
        assert 1 <= int(locked.headers["retry-after"]) <= 60

    async def test_unknown_account_gets_the_same_401_and_locks_the_same_way(
        self, limited_client: AppClient
    ) -> None:
        client = await limited_client(rate_limit_login_account="2/minute")
        email = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
        answers = [assert_problem(await self._login(client, email, "whatever1234"), 401)]
        answers.append(assert_problem(await self._login(client, email, "whatever1234"), 401))
        assert answers[0]["detail"] == answers[1]["detail"] == "Incorrect email or password."
        assert_problem(await self._login(client, email, "whatever1234"), 429)

    async def test_success_forgets_earlier_failures(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        user: RegisteredUser = await make_user()
        client = await limited_client(rate_limit_login_account="2/minute")
        assert_problem(await self._login(client, user.email, "wrong password!"), 401)
        assert (await self._login(client, user.email, user.password)).status_code == 200
        assert_problem(await self._login(client, user.email, "wrong password!"), 401)
        assert (await self._login(client, user.email, user.password)).status_code == 200

    async def test_attempts_per_address_are_limited_across_accounts(
        self, limited_client: AppClient
    ) -> None:
        client = await limited_client(rate_limit_login_ip="3/minute")
        statuses = [
            (
                await self._login(client, f"n{n}-{uuid.uuid4().hex[:6]}@example.com", "x" * 12)
            ).status_code
            for n in range(4)
        ]
        assert statuses == [401, 401, 401, 429]

    async def test_an_attacker_address_does_not_lock_the_owner_out(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        """Failures are counted per (account, address): the owner's address keeps its own."""
        user: RegisteredUser = await make_user()
        client = await limited_client(
            rate_limit_login_account="3/minute", forwarded_allow_ips=[PEER]
        )
        attacker = {"X-Forwarded-For": "198.51.100.66"}
        owner = {"X-Forwarded-For": "198.51.100.7"}
        for _ in range(3):
            assert_problem(await self._login(client, user.email, "wrong password!", attacker), 401)
        assert_problem(await self._login(client, user.email, user.password, attacker), 429)
        assert (await self._login(client, user.email, user.password, owner)).status_code == 200

    async def test_a_global_lock_lets_a_recently_successful_address_in(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        """Many addresses exhaust the account's global count: strangers wait, the owner's
        known address gets in with the right password (and only with it)."""
        user: RegisteredUser = await make_user()
        client = await limited_client(
            rate_limit_login_account_global="4/minute;6/hour", forwarded_allow_ips=[PEER]
        )
        owner = {"X-Forwarded-For": "198.51.100.7"}
        assert (await self._login(client, user.email, user.password, owner)).status_code == 200
        statuses = [
            (
                await self._login(
                    client, user.email, "wrong password!", {"X-Forwarded-For": f"192.0.2.{n}"}
                )
            ).status_code
            for n in range(5)
        ]
        assert statuses == [401, 401, 401, 429, 429]
        # A new address is refused even with the right password, before any hash.
        stranger = await self._login(
            client, user.email, user.password, {"X-Forwarded-For": "192.0.2.200"}
        )
        body = assert_problem(stranger, 429)
        assert "account" in body["detail"]
        # The owner's address: a wrong password is still a 401, the right one gets in.
        assert_problem(await self._login(client, user.email, "wrong password!", owner), 401)
        assert (await self._login(client, user.email, user.password, owner)).status_code == 200

    async def test_global_tiers_are_policies_that_fail_closed(
        self, settings_factory: SettingsFactory
    ) -> None:
        settings = settings_factory(rate_limit_login_account_global="10/minute;30/hour;100/day")
        specs = settings.rate_limit_specs()
        assert {name: specs[name] for name in specs if name.startswith("login_account_global")} == {
            "login_account_global": "10 per 1 minute",
            "login_account_global.2": "30 per 1 hour",
            "login_account_global.3": "100 per 1 day",
        }
        policies = build_policies(settings, specs)
        assert not any(policies[name].fail_open for name in specs if name.startswith("login"))

    async def test_unknown_and_known_account_timing(
        self, limited_client: AppClient, make_user: MakeUser
    ) -> None:
        """Benchmark-style: prints the medians; a dummy hash keeps them close (no timed assert)."""
        user: RegisteredUser = await make_user()
        client = await limited_client()
        unknown = f"nobody-{uuid.uuid4().hex[:8]}@example.com"
        await self._login(client, unknown, "warm up the dummy hash")
        timings: dict[str, list[float]] = {"known": [], "unknown": []}
        for _ in range(5):
            for label, email in (("known", user.email), ("unknown", unknown)):
                started = time.perf_counter()
                assert_problem(await self._login(client, email, "wrong password!"), 401)
                timings[label].append(time.perf_counter() - started)
        known, missing = (statistics.median(timings[k]) for k in ("known", "unknown"))
        print(
            f"\nlogin timing (median of 5): known {known * 1000:.1f} ms, "
            f"unknown {missing * 1000:.1f} ms, ratio {missing / known:.2f}"
        )
        assert known > 0
        assert missing > 0

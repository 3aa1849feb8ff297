"""Logout and password change revoke access tokens, in every process (#15 §6)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
from redis.asyncio import Redis

from api.main import create_app
from api.settings import ApiSettings
from common.revocation import Revocations, revoked_before_key
from devharness.polling import eventually
from tests.fixtures.api import PASSWORD, ClientFactory, MakeUser, RegisteredUser
from tests.fixtures.problems import assert_problem
from tests.fixtures.services import new_prefix

NEW_PASSWORD = "a brand new passphrase 42"


async def _me(client: httpx.AsyncClient, token: str) -> int:
    response = await client.get("/v1/users/me", headers={"Authorization": f"Bearer {token}"})
    return response.status_code


async def _login(client: httpx.AsyncClient, email: str, password: str) -> httpx.Response:
    return await client.post("/v1/auth/token", data={"username": email, "password": password})


class TestLogout:
    """After logout the access token is refused, even though this process cached it."""

    async def test_logged_out_access_token_gets_401_on_every_route(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        assert await _me(client, user.access_token) == 200  # verified and cached
        logout = await client.post(
            "/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers
        )
        assert logout.status_code == 204
        assert_problem(await client.get("/v1/users/me", headers=user.headers), 401)
        assert_problem(await client.get("/v1/jobs", headers=user.headers), 401)
        assert_problem(await client.post("/v1/realtime/ticket", headers=user.headers), 401)

    async def test_a_token_issued_after_the_logout_works(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        await client.post(
            "/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers
        )
        fresh = await _login(client, user.email, user.password)
        assert fresh.status_code == 200
        assert await _me(client, fresh.json()["access_token"]) == 200

    async def test_another_process_refuses_it_at_once_over_pub_sub(
        self,
        client_factory: ClientFactory,
        settings_factory: Callable[..., ApiSettings],
        redis_key_prefix: str,
    ) -> None:
        prefix = new_prefix(redis_key_prefix)
        # A cut-off remembered for a minute: only the pub/sub message can end it sooner.
        settings: dict[str, Any] = {
            "redis_key_prefix": prefix,
            "token_revocation_cache_seconds": 60,
        }
        first = await client_factory(create_app(settings_factory(**settings)))
        second = await client_factory(create_app(settings_factory(**settings)))
        email = f"pubsub-{prefix.rstrip(':')[-8:]}@example.com"
        assert (
            await first.post("/v1/auth/register", json={"email": email, "password": PASSWORD})
        ).status_code == 201
        tokens = (await _login(first, email, PASSWORD)).json()
        assert await _me(second, tokens["access_token"]) == 200  # second remembers "no cut-off"
        await first.post(
            "/v1/auth/logout",
            json={"refresh_token": tokens["refresh_token"]},
            headers={"Authorization": f"Bearer {tokens['access_token']}"},
        )

        async def refused() -> bool:
            return await _me(second, tokens["access_token"]) == 401

        await eventually(refused, within=10)


class TestPasswordChange:
    """`POST /v1/users/me/password`: current password required; every session ends."""

    async def _change(
        self, client: httpx.AsyncClient, user: RegisteredUser, current: str
    ) -> httpx.Response:
        return await client.post(
            "/v1/users/me/password",
            json={"current_password": current, "new_password": NEW_PASSWORD},
            headers=user.headers,
        )

    async def test_wrong_current_password_gets_403_and_changes_nothing(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        assert_problem(await self._change(client, user, "not my password"), 403)
        assert await _me(client, user.access_token) == 200
        assert (await _login(client, user.email, user.password)).status_code == 200

    async def test_change_revokes_access_and_refresh_tokens(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        other_device = (await _login(client, user.email, user.password)).json()
        assert await _me(client, user.access_token) == 200
        changed = await self._change(client, user, user.password)
        assert changed.status_code == 204, changed.text
        assert_problem(await client.get("/v1/users/me", headers=user.headers), 401)
        assert await _me(client, other_device["access_token"]) == 401
        for refresh_token in (user.refresh_token, other_device["refresh_token"]):
            refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})
            assert_problem(refreshed, 401)
        assert_problem(await _login(client, user.email, user.password), 401)
        assert (await _login(client, user.email, NEW_PASSWORD)).status_code == 200

    async def test_weak_new_password_gets_422(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        user = await make_user()
        response = await client.post(
            "/v1/users/me/password",
            json={"current_password": user.password, "new_password": "short"},
            headers=user.headers,
        )
        assert_problem(response, 422)
        assert await _me(client, user.access_token) == 200


class TestListenerStop:
    """Stopping the listener ends it cleanly wherever it is: connecting, subscribing or
    waiting for a message (a stop that closed the connection mid-SUBSCRIBE once failed
    an app's shutdown with redis-py's AttributeError)."""

    async def test_a_stop_at_any_step_of_the_subscription_ends_it_without_an_error(
        self, redis: Redis, redis_url: str, key_prefix: str
    ) -> None:
        subscriber = Redis.from_url(redis_url, socket_connect_timeout=5)
        try:
            # A stop after 0, 1, 2, ... turns of the loop lands on every await of
            # `listen` in turn, up to the wait for a message.
            for turns in range(40):
                revocations = Revocations(
                    redis, prefix=key_prefix, cache_seconds=1, token_lifetime_seconds=60
                )
                listener = asyncio.create_task(revocations.listen(subscriber))
                for _ in range(turns):
                    await asyncio.sleep(0)
                await revocations.stop_listening(listener)
                assert listener.done(), f"still listening after a stop at turn {turns}"
                assert listener.exception() is None, f"stop at turn {turns}"
        finally:
            await subscriber.aclose()


class TestCutoffReads:
    """The cut-offs requests want at the same moment are read together, each one right."""

    async def test_concurrent_reads_share_one_mget_and_each_gets_its_own_cutoff(
        self, redis: Redis, key_prefix: str
    ) -> None:
        revocations = Revocations(
            redis, prefix=key_prefix, cache_seconds=60, token_lifetime_seconds=60
        )
        users = [uuid.uuid4() for _ in range(20)]
        revoked = {user: 1_000 + n for n, user in enumerate(users[::3])}
        for user, cutoff in revoked.items():
            await redis.set(revoked_before_key(key_prefix, user), cutoff, ex=60)
        # Asked twice per user in the same turn of the loop, as concurrent requests do.
        cutoffs = await asyncio.gather(*(revocations.cutoff(user) for user in users * 2))
        assert cutoffs == [revoked.get(user, 0) for user in users] * 2
        assert revocations.batches_read == 1
        # Remembered: asking again reads nothing.
        assert await revocations.cutoff(users[0]) == revoked[users[0]]
        assert revocations.batches_read == 1

    async def test_a_request_cancelled_while_waiting_leaves_the_read_to_the_others(
        self, redis: Redis, key_prefix: str
    ) -> None:
        revocations = Revocations(
            redis, prefix=key_prefix, cache_seconds=60, token_lifetime_seconds=60
        )
        user = uuid.uuid4()
        await redis.set(revoked_before_key(key_prefix, user), 42, ex=60)
        leaving = asyncio.create_task(revocations.cutoff(user))
        staying = asyncio.create_task(revocations.cutoff(user))
        await asyncio.sleep(0)  # both wait on the same read now
        leaving.cancel()
        assert await staying == 42
        assert leaving.cancelled()

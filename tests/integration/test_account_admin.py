"""`python -m api.users.admin`: an operator disables an account, in a real process of its own."""

from __future__ import annotations

import asyncio
import os
import sys

import httpx

from api.settings import ApiSettings
from devharness.realtime import listen
from realtime.settings import RealtimeSettings
from tests.fixtures.api import MakeUser, RegisteredUser
from tests.fixtures.realtime_server import serve_realtime


def _secret(settings: ApiSettings) -> str:
    assert settings.jwt_secret is not None
    return settings.jwt_secret.get_secret_value()


async def _admin(settings: ApiSettings, *args: str) -> tuple[int, str]:
    """Run the command as an operator would, on this run's Postgres and Redis."""
    env = {
        **os.environ,
        "ENVIRONMENT": "test",
        "DATABASE_URL": settings.database_url,
        "REDIS_URL": settings.redis_url,
        "REDIS_KEY_PREFIX": settings.redis_key_prefix,
        "JWT_SECRET": _secret(settings),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "api.users.admin", *args, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await process.communicate()
    return await process.wait(), output.decode()


async def _login(client: httpx.AsyncClient, user: RegisteredUser) -> httpx.Response:
    return await client.post(
        "/v1/auth/token", data={"username": user.email, "password": user.password}
    )


async def test_a_disabled_account_loses_its_logins_tokens_and_open_sockets(
    client: httpx.AsyncClient, settings: ApiSettings, make_user: MakeUser
) -> None:
    user, bystander = await make_user(), await make_user()
    realtime_settings = RealtimeSettings(
        _env_file=None,
        environment="test",
        redis_url=settings.redis_url,
        redis_key_prefix=settings.redis_key_prefix,  # the API's: one revocation channel
        jwt_secret=_secret(settings),
        log_level="WARNING",
    )
    async with serve_realtime(realtime_settings) as realtime:
        socket = await listen(realtime.ws_url, token=user.access_token)
        other = await listen(realtime.ws_url, token=bystander.access_token)

        status, output = await _admin(settings, "disable", user.email.upper())
        assert status == 0, output
        assert f"account {user.id} disabled" in output

        assert await socket.wait_closed(within=10) == 1008
        assert socket.close_reason == "token revoked"
        assert not other.is_closed
        await other.close()

    me = await client.get("/v1/users/me", headers=user.headers)
    assert me.status_code == 401
    refreshed = await client.post("/v1/auth/refresh", json={"refresh_token": user.refresh_token})
    assert refreshed.status_code == 401
    assert (await _login(client, user)).status_code == 401
    assert (await client.get("/v1/users/me", headers=bystander.headers)).status_code == 200

    status, output = await _admin(settings, "enable", user.email)
    assert status == 0, output
    assert (await _login(client, user)).status_code == 200


async def test_an_unknown_email_changes_nothing_and_says_so(settings: ApiSettings) -> None:
    status, output = await _admin(settings, "disable", "nobody-here@example.com")
    assert status == 1
    assert "no account with that email" in output

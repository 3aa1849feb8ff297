"""Secrets never reach the logs: a full flow against gunicorn at DEBUG, its whole log searched."""

from __future__ import annotations

import httpx
import pytest

from tests.system.conftest import RegisterUser, ServerFactory

pytestmark = pytest.mark.system
WRONG_PASSWORD = "not the password, but still a secret"


async def test_jwt_secret_passwords_and_tokens_are_never_logged(
    server_factory: ServerFactory, register_user: RegisterUser, jwt_secret: str
) -> None:
    server = await server_factory(LOG_LEVEL="DEBUG")
    credentials = await register_user(server)
    async with httpx.AsyncClient(base_url=server.base_url, timeout=10.0) as client:
        wrong = await client.post(
            "/v1/auth/token", data={"username": credentials.email, "password": WRONG_PASSWORD}
        )
        assert wrong.status_code == 401
        login = (await client.post("/v1/auth/token", data=credentials.form)).json()
        bearer = {"Authorization": f"Bearer {login['access_token']}"}
        rotated = (
            await client.post("/v1/auth/refresh", json={"refresh_token": login["refresh_token"]})
        ).json()
        # A spent refresh token presented again, and a token that fails verification.
        reused = await client.post(
            "/v1/auth/refresh", json={"refresh_token": login["refresh_token"]}
        )
        assert reused.status_code == 401
        tampered = login["access_token"][:-4] + "AAAA"
        forged = await client.get("/v1/users/me", headers={"Authorization": f"Bearer {tampered}"})
        assert forged.status_code == 401
        assert (await client.get("/v1/users/me", headers=bearer)).status_code == 200
        job = await client.post(
            "/v1/jobs",
            json={"kind": "demo.countdown", "params": {"steps": 1, "interval": 0}},
            headers=bearer,
        )
        assert job.status_code == 202, job.text
        ticket = (await client.post("/v1/realtime/ticket", headers=bearer)).json()["ticket"]
        logout = await client.post(
            "/v1/auth/logout", json={"refresh_token": rotated["refresh_token"]}, headers=bearer
        )
        assert logout.status_code == 204
    await server.stop()
    log = server.log()
    assert '"level": "DEBUG"' in log or '"level": "INFO"' in log  # the capture is real
    secrets = {
        "JWT secret": jwt_secret,
        "password": credentials.password,
        "wrong password": WRONG_PASSWORD,
        "access token": login["access_token"],
        "access token signature": login["access_token"].rsplit(".", 1)[1],
        "refresh token": login["refresh_token"],
        "rotated access token": rotated["access_token"],
        "rotated refresh token": rotated["refresh_token"],
        "realtime ticket": ticket,
    }
    leaked = [name for name, value in secrets.items() if value in log]
    assert leaked == [], f"found in the server log: {leaked}"

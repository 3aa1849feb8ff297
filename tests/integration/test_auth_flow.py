"""Register, log in, read me, refresh and log out through the API in process."""

from __future__ import annotations

import httpx

from tests.fixtures.api import PASSWORD


class TestRegisterAndLogin:
    """A new account can log in and read itself."""

    async def test_register_login_me(self, client: httpx.AsyncClient) -> None:
        email = "Grace.Hopper@Example.com"
        created = await client.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert created.status_code == 201
        user = created.json()
        assert set(user) == {"id", "email", "created_at"}

        token = await client.post(
            "/v1/auth/token", data={"username": email.lower(), "password": PASSWORD}
        )
        assert token.status_code == 200
        assert token.headers["cache-control"] == "no-store"
        pair = token.json()
        assert pair["token_type"] == "bearer"
        assert pair["expires_in"] > 0

        me = await client.get(
            "/v1/users/me", headers={"Authorization": f"Bearer {pair['access_token']}"}
        )
        assert me.status_code == 200
        assert me.json()["id"] == user["id"]

"""Auth over HTTP: the token attack matrix, registration rules, login, rotation, logout."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, cast

import httpx
import pytest
from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import service as auth_service
from api.auth.errors import InvalidCredentials
from api.auth.models import RefreshToken
from api.auth.passwords import PasswordHasher
from api.main import create_app
from api.settings import ApiSettings
from api.users.models import User
from devharness.polling import eventually
from tests.fixtures import tokens
from tests.fixtures.api import PASSWORD, ClientFactory, MakeUser, RegisteredUser
from tests.fixtures.problems import assert_problem


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def _refresh(client: httpx.AsyncClient, refresh_token: str) -> httpx.Response:
    return await client.post("/v1/auth/refresh", json={"refresh_token": refresh_token})


def _unique_email() -> str:
    return f"user-{uuid.uuid4().hex[:10]}@example.com"


def _assert_unauthorized(response: httpx.Response) -> dict[str, Any]:
    body = assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"
    return body


class TestBearerTokenMatrix:
    """GET /v1/users/me answers 401 problem+json with a Bearer challenge for every bad token."""

    async def test_well_formed_token_for_the_user_is_accepted(
        self, client: httpx.AsyncClient, user: RegisteredUser, settings: ApiSettings
    ) -> None:
        # The baseline: each bad token below differs from this one in one way only.
        claims = tokens.valid_claims(settings, subject=uuid.UUID(user.id))
        response = await client.get("/v1/users/me", headers=_bearer(tokens.sign(settings, claims)))
        assert response.status_code == 200
        assert response.json()["id"] == user.id

    @pytest.mark.parametrize("kind", list(tokens.BAD_TOKENS))
    async def test_bad_token_is_401(
        self, client: httpx.AsyncClient, user: RegisteredUser, settings: ApiSettings, kind: str
    ) -> None:
        token = tokens.BAD_TOKENS[kind](settings, subject=uuid.UUID(user.id))
        _assert_unauthorized(await client.get("/v1/users/me", headers=_bearer(token)))

    @pytest.mark.parametrize(
        "authorization", ["", "Bearer", "Bearer   ", "Basic dXNlcjpwYXNz", "Token abc.def.ghi"]
    )
    async def test_missing_or_other_scheme_is_401(
        self, client: httpx.AsyncClient, authorization: str
    ) -> None:
        headers = {"Authorization": authorization} if authorization else {}
        _assert_unauthorized(await client.get("/v1/users/me", headers=headers))

    async def test_refresh_token_used_as_access_token_is_401(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        _assert_unauthorized(await client.get("/v1/users/me", headers=_bearer(user.refresh_token)))

    async def test_token_of_a_user_that_does_not_exist_is_401(
        self, client: httpx.AsyncClient, settings: ApiSettings
    ) -> None:
        token = tokens.sign(settings, tokens.valid_claims(settings, subject=uuid.uuid4()))
        _assert_unauthorized(await client.get("/v1/users/me", headers=_bearer(token)))


class TestRegistration:
    """Registration creates one account per email, any letter case, with a strong password."""

    # --8<-- [start:domain-endpoint]
    async def test_register_answers_201_with_the_user(self, client: httpx.AsyncClient) -> None:
        email = _unique_email()
        response = await client.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        assert response.status_code == 201
        body = response.json()
        assert set(body) == {"id", "email", "created_at"}
        assert body["email"] == email
        uuid.UUID(body["id"])
        assert datetime.fromisoformat(body["created_at"]).utcoffset() is not None

    # --8<-- [end:domain-endpoint]

    async def test_same_email_in_other_letter_case_is_409(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await client.post(
            "/v1/auth/register", json={"email": user.email.upper(), "password": PASSWORD}
        )
        assert_problem(response, 409)

    @pytest.mark.parametrize(
        ("password", "reason"),
        [
            ("Sh0rt!pw", "at least 10 characters"),
            ("abababababababab", "different characters"),
            ("my-{local}-is-my-password", "must not contain the email"),
        ],
        ids=["too_short", "too_few_distinct_characters", "contains_email_local_part"],
    )
    async def test_weak_password_is_422(
        self, client: httpx.AsyncClient, password: str, reason: str
    ) -> None:
        local = f"weakling{uuid.uuid4().hex[:6]}"
        response = await client.post(
            "/v1/auth/register",
            json={"email": f"{local}@example.com", "password": password.format(local=local)},
        )
        body = assert_problem(response, 422)
        assert reason in body["detail"]
        assert password.format(local=local) not in response.text

    @pytest.mark.parametrize("email", ["not-an-email", "a@", "@example.com", "a b@example.com"])
    async def test_invalid_email_is_422_with_field_errors(
        self, client: httpx.AsyncClient, email: str
    ) -> None:
        response = await client.post(
            "/v1/auth/register", json={"email": email, "password": PASSWORD}
        )
        body = assert_problem(response, 422)
        assert [error["loc"] for error in body["errors"]] == [["body", "email"]]
        assert PASSWORD not in response.text


class TestPublishedPasswordRule:
    """The password's length rule is a setting, published in /openapi.json for clients."""

    async def test_min_length_in_the_schema_is_the_setting_the_api_enforces(
        self, settings_factory: Callable[..., ApiSettings], client_factory: ClientFactory
    ) -> None:
        client = await client_factory(create_app(settings_factory(password_min_length=14)))
        schema = (await client.get("/openapi.json")).json()
        body = schema["paths"]["/v1/auth/register"]["post"]["requestBody"]
        name = body["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[-1]
        assert schema["components"]["schemas"][name]["properties"]["password"]["minLength"] == 14

        email = f"rule-{uuid.uuid4().hex[:8]}@example.com"
        short = await client.post(
            "/v1/auth/register", json={"email": email, "password": "x1y2z3w4v5u6t"}
        )
        assert "at least 14 characters" in assert_problem(short, 422)["detail"]
        long_enough = {"email": email, "password": "x1y2z3w4v5u6t7"}
        assert (await client.post("/v1/auth/register", json=long_enough)).status_code == 201


class TestLogin:
    """The token endpoint gives the same 401 for a wrong password and an unknown email."""

    async def test_login_answers_a_bearer_token_pair(
        self, client: httpx.AsyncClient, user: RegisteredUser, settings: ApiSettings
    ) -> None:
        response = await client.post(
            "/v1/auth/token", data={"username": user.email, "password": PASSWORD}
        )
        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in"}
        assert body["token_type"] == "bearer"
        assert body["expires_in"] == settings.access_token_ttl_seconds

    async def test_wrong_password_and_unknown_email_answer_identically(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        wrong_password = await client.post(
            "/v1/auth/token", data={"username": user.email, "password": "not the password!"}
        )
        unknown_email = await client.post(
            "/v1/auth/token", data={"username": _unique_email(), "password": "not the password!"}
        )
        first = _assert_unauthorized(wrong_password)
        second = _assert_unauthorized(unknown_email)
        assert first.pop("request_id") != second.pop("request_id")
        assert first == second

    async def test_last_login_at_is_recorded(
        self, client: httpx.AsyncClient, user: RegisteredUser, db_engine: AsyncEngine
    ) -> None:
        # make_user logs in once; the write happens after the response.

        async def last_login() -> datetime | None:
            async with db_engine.connect() as connection:
                return await connection.scalar(
                    select(User.last_login_at).where(User.id == uuid.UUID(user.id))
                )

        recorded = await eventually(last_login)
        assert recorded.utcoffset() is not None

    async def test_an_account_disabled_while_its_password_is_checked_gets_no_tokens(
        self, user: RegisteredUser, db_engine: AsyncEngine, settings: ApiSettings
    ) -> None:
        # The login's read and its write are separate statements with the hash between
        # them; the write stores nothing for an account disabled in that gap.
        user_id = uuid.UUID(user.id)

        async def tokens_and_last_login() -> tuple[int, datetime | None]:
            async with db_engine.connect() as connection:
                tokens = await connection.scalar(
                    select(func.count()).where(RefreshToken.user_id == user_id)
                )
                last = await connection.scalar(select(User.last_login_at).where(User.id == user_id))
            return int(tokens or 0), last

        class DisablingHasher:
            """Accepts the password, having disabled the account meanwhile."""

            async def verify_and_update(
                self, password: str, password_hash: str | None
            ) -> tuple[bool, str | None]:
                async with db_engine.begin() as connection:
                    await connection.execute(
                        update(User).where(User.id == user_id).values(is_active=False)
                    )
                return True, "$argon2id$rehash-that-must-not-be-stored"

        before = await tokens_and_last_login()
        with pytest.raises(InvalidCredentials):
            await auth_service.login(
                db_engine,
                settings,
                email=user.email,
                password=PASSWORD,
                hasher=cast(PasswordHasher, DisablingHasher()),
            )
        assert await tokens_and_last_login() == before
        async with db_engine.connect() as connection:
            stored = await connection.scalar(select(User.password_hash).where(User.id == user_id))
        assert stored is not None
        assert "rehash" not in stored


class TestNoStore:
    """Answers carrying tokens or the user are never cached."""

    async def test_token_answer_is_no_store(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await client.post(
            "/v1/auth/token", data={"username": user.email, "password": PASSWORD}
        )
        assert response.headers["cache-control"] == "no-store"

    async def test_refresh_answer_is_no_store(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await _refresh(client, user.refresh_token)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"

    async def test_me_answer_is_no_store(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await client.get("/v1/users/me", headers=user.headers)
        assert response.status_code == 200
        assert response.headers["cache-control"] == "no-store"


class TestRefreshRotation:
    """A refresh token works once; reusing a rotated one revokes its whole family."""

    async def test_refresh_gives_a_new_pair_that_works(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await _refresh(client, user.refresh_token)
        assert response.status_code == 200
        pair = response.json()
        assert pair["refresh_token"] != user.refresh_token
        me = await client.get("/v1/users/me", headers=_bearer(pair["access_token"]))
        assert me.json()["id"] == user.id

    async def test_rotated_token_cannot_be_used_again(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        first = await _refresh(client, user.refresh_token)
        assert first.status_code == 200
        again = await _refresh(client, user.refresh_token)
        _assert_unauthorized(again)

    async def test_reuse_of_a_rotated_token_revokes_the_newest_token(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        rotated = await _refresh(client, user.refresh_token)
        newest = rotated.json()["refresh_token"]
        reuse = await _refresh(client, user.refresh_token)
        _assert_unauthorized(reuse)
        after = await _refresh(client, newest)
        _assert_unauthorized(after)

    async def test_reuse_does_not_touch_other_sessions_of_the_user(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        other = await client.post(
            "/v1/auth/token", data={"username": user.email, "password": PASSWORD}
        )
        await _refresh(client, user.refresh_token)
        await _refresh(client, user.refresh_token)
        response = await _refresh(client, other.json()["refresh_token"])
        assert response.status_code == 200

    async def test_unknown_refresh_token_is_401(self, client: httpx.AsyncClient) -> None:
        response = await _refresh(client, "made-up")
        _assert_unauthorized(response)


class TestLogout:
    """Logout answers 204 and revokes the refresh token's family."""

    async def test_logout_revokes_the_refresh_token(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await client.post(
            "/v1/auth/logout", json={"refresh_token": user.refresh_token}, headers=user.headers
        )
        assert response.status_code == 204
        assert response.content == b""
        after = await _refresh(client, user.refresh_token)
        _assert_unauthorized(after)

    async def test_logout_needs_a_bearer_token(
        self, client: httpx.AsyncClient, user: RegisteredUser
    ) -> None:
        response = await client.post("/v1/auth/logout", json={"refresh_token": user.refresh_token})
        _assert_unauthorized(response)
        still = await _refresh(client, user.refresh_token)
        assert still.status_code == 200

    async def test_logout_with_another_users_refresh_token_revokes_nothing(
        self, client: httpx.AsyncClient, make_user: MakeUser
    ) -> None:
        alice, mallory = await make_user(), await make_user()
        response = await client.post(
            "/v1/auth/logout", json={"refresh_token": alice.refresh_token}, headers=mallory.headers
        )
        assert response.status_code == 204
        still = await _refresh(client, alice.refresh_token)
        assert still.status_code == 200


class TestInactiveUser:
    """A valid token of a disabled account no longer reaches /v1/users/me."""

    async def test_me_of_a_disabled_user_is_401(
        self, client: httpx.AsyncClient, user: RegisteredUser, db_engine: AsyncEngine
    ) -> None:
        assert (await client.get("/v1/users/me", headers=user.headers)).status_code == 200
        async with db_engine.begin() as connection:
            await connection.execute(
                update(User).where(User.id == uuid.UUID(user.id)).values(is_active=False)
            )
        _assert_unauthorized(await client.get("/v1/users/me", headers=user.headers))

    async def test_disabled_user_cannot_log_in_or_refresh(
        self, client: httpx.AsyncClient, user: RegisteredUser, db_engine: AsyncEngine
    ) -> None:
        async with db_engine.begin() as connection:
            await connection.execute(
                update(User).where(User.id == uuid.UUID(user.id)).values(is_active=False)
            )
        login = await client.post(
            "/v1/auth/token", data={"username": user.email, "password": PASSWORD}
        )
        _assert_unauthorized(login)
        refresh = await _refresh(client, user.refresh_token)
        _assert_unauthorized(refresh)

"""POST /v1/realtime/ticket: a short-lived single-use ticket stored in Redis."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import httpx
import pytest
from redis.asyncio import Redis

from api.settings import ApiSettings
from common.auth import verify_access_token
from common.contracts.realtime import (
    TICKET_TTL_SECONDS,
    is_ticket_shaped,
    parse_ticket_value,
    ticket_key,
)
from tests.fixtures.api import RegisteredUser


@pytest.fixture
async def redis(settings: ApiSettings) -> AsyncIterator[Redis]:
    client = Redis.from_url(settings.redis_url)
    yield client
    await client.aclose()


class TestTicket:
    """A signed-in user gets a random ticket that Redis holds for them for about 30 s."""

    async def test_ticket_is_created_for_the_caller_with_a_short_ttl(
        self,
        client: httpx.AsyncClient,
        make_user: Callable[[], Awaitable[RegisteredUser]],
        redis: Redis,
        settings: ApiSettings,
    ) -> None:
        user = await make_user()
        response = await client.post("/v1/realtime/ticket", headers=user.headers)
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["expires_in"] == TICKET_TTL_SECONDS
        assert is_ticket_shaped(body["ticket"])
        assert response.headers["cache-control"] == "no-store"
        key = ticket_key(settings.redis_key_prefix, body["ticket"])
        stored = await redis.get(key)
        assert isinstance(stored, bytes)
        user_id, expires_at, issued_at_ms = parse_ticket_value(stored.decode())
        assert user_id == user.id
        # The token's times travel with the ticket: the socket ends when the token does.
        token = verify_access_token(settings, user.access_token)
        assert (expires_at, issued_at_ms) == (token.expires_at, token.issued_at_ms)
        assert 0 < await redis.ttl(key) <= TICKET_TTL_SECONDS

    async def test_each_ticket_is_new(
        self, client: httpx.AsyncClient, make_user: Callable[[], Awaitable[RegisteredUser]]
    ) -> None:
        user = await make_user()
        tickets = {
            (await client.post("/v1/realtime/ticket", headers=user.headers)).json()["ticket"]
            for _ in range(3)
        }
        assert len(tickets) == 3

    async def test_ticket_without_token_is_401_problem(self, client: httpx.AsyncClient) -> None:
        response = await client.post("/v1/realtime/ticket")
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("application/problem+json")
        assert response.headers["www-authenticate"] == "Bearer"

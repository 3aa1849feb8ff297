"""Rate limits under real gunicorn with two workers: exact across processes, keyed by real IP."""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import pytest

from tests.fixtures.servers import Server, ServerFactory
from tests.fixtures.services import new_prefix

pytestmark = pytest.mark.system
LIMIT = 20


async def _fire(
    base_url: str, count: int, headers: dict[str, str] | None = None
) -> list[httpx.Response]:
    """`count` concurrent GETs, each on a connection of its own."""

    async def one() -> httpx.Response:
        async with httpx.AsyncClient(base_url=base_url, timeout=20.0) as client:
            return await client.get("/v1/jobs/kinds", headers=headers)

    return await asyncio.gather(*(one() for _ in range(count)))


@pytest.fixture
def limited_server(server_factory: ServerFactory, redis_key_prefix: str) -> ServerFactory:
    """API servers whose limits count from zero: each has a Redis key prefix of its own."""

    async def make(**env: str) -> Server:
        return await server_factory(REDIS_KEY_PREFIX=new_prefix(redis_key_prefix), **env)

    return make


class TestExactness:
    """A limit of N holds exactly under concurrent load spread over two worker processes."""

    async def test_4n_concurrent_requests_let_exactly_n_through(
        self, limited_server: ServerFactory
    ) -> None:
        server = await limited_server(RATE_LIMIT_READS=f"{LIMIT}/minute")
        responses = await _fire(server.base_url, 4 * LIMIT)
        counts = Counter(response.status_code for response in responses)
        assert counts == {200: LIMIT, 429: 3 * LIMIT}, counts
        for response in responses:
            if response.status_code == 429:
                assert 1 <= int(response.headers["retry-after"]) <= 60
                assert response.headers["content-type"] == "application/problem+json"
        assert len(server.worker_pids()) == 2


class TestClientAddress:
    """Addresses from a trusted proxy are limited apart; an untrusted peer cannot pick one."""

    async def test_two_forwarded_addresses_are_limited_independently(
        self, limited_server: ServerFactory
    ) -> None:
        server = await limited_server(RATE_LIMIT_READS="3/minute", FORWARDED_ALLOW_IPS="127.0.0.1")
        first = await _fire(server.base_url, 6, {"X-Forwarded-For": "198.51.100.1"})
        second = await _fire(server.base_url, 3, {"X-Forwarded-For": "198.51.100.2"})
        assert Counter(r.status_code for r in first) == {200: 3, 429: 3}
        assert Counter(r.status_code for r in second) == {200: 3}

    async def test_spoofed_forwarded_for_from_an_untrusted_peer_changes_nothing(
        self, limited_server: ServerFactory
    ) -> None:
        # 127.0.0.1 (the test client) is not a trusted proxy here.
        server = await limited_server(RATE_LIMIT_READS="3/minute", FORWARDED_ALLOW_IPS="10.9.9.9")
        statuses = []
        for n in range(6):
            responses = await _fire(server.base_url, 1, {"X-Forwarded-For": f"198.51.100.{n}"})
            statuses.append(responses[0].status_code)
        assert statuses == [200, 200, 200, 429, 429, 429]

"""The limiter counts concurrent hits together, one script call per batch, against real Redis.

Batching must change nothing a client sees: the same verdicts, exactly the
limit allowed, each hit's own `RateLimit` numbers, each policy's own failure
rule; only the number of round trips falls.
"""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from common.ratelimit import BATCH_MAX, Policy, RateLimiter, RateLimitUnavailable
from devservices import free_port
from tests.fixtures.services import new_prefix


def _limiter(redis: Redis, prefix: str, **specs: str) -> RateLimiter:
    policies = {
        name: Policy.parse(name, spec, fail_open=not name.startswith("closed"))
        for name, spec in specs.items()
    }
    return RateLimiter(redis, key_prefix=prefix, policies=policies)


class TestOneCallForConcurrentHits:
    async def test_exactly_the_limit_is_allowed_with_each_hits_own_numbers(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), reads="20/minute")
        decisions = await asyncio.gather(*(limiter.hit("reads", "user:a") for _ in range(50)))
        assert limiter.batches_sent == 1
        allowed = [d for d in decisions if d is not None and d.allowed]
        assert len(allowed) == 20
        # In the order they were made: the first 20 are allowed, counting down.
        assert [d.remaining for d in allowed] == list(range(19, -1, -1))
        assert decisions[:20] == allowed
        denied = [d for d in decisions if d is not None and not d.allowed]
        assert len(denied) == 30
        assert {d.remaining for d in denied} == {0}
        assert all(1 <= d.reset_after <= 60 for d in decisions if d is not None)

    async def test_more_hits_than_a_batch_take_more_calls_and_stay_exact(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), reads="100/minute")
        count = BATCH_MAX * 2 + 10
        decisions = await asyncio.gather(*(limiter.hit("reads", "user:a") for _ in range(count)))
        assert limiter.batches_sent == 3
        assert sum(1 for d in decisions if d is not None and d.allowed) == 100

    async def test_keys_and_policies_in_one_batch_are_counted_apart(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), reads="3/minute", writes="1/minute")
        hits = [("reads", "user:a")] * 4 + [("reads", "user:b")] * 2 + [("writes", "user:a")] * 2
        decisions = await asyncio.gather(*(limiter.hit(name, key) for name, key in hits))
        assert limiter.batches_sent == 1
        verdicts = [(d.policy.name, d.allowed, d.remaining) for d in decisions if d is not None]
        assert verdicts == [
            ("reads", True, 2), ("reads", True, 1), ("reads", True, 0), ("reads", False, 0),
            ("reads", True, 2), ("reads", True, 1),
            ("writes", True, 0), ("writes", False, 0),
        ]  # fmt: skip

    async def test_a_hit_alone_waits_for_no_other(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), reads="5/minute")
        for expected in (4, 3, 2):
            decision = await limiter.hit("reads", "user:a")
            assert decision is not None
            assert decision.remaining == expected
        assert limiter.batches_sent == 3

    async def test_hits_queued_during_a_call_go_in_the_next(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), reads="10/minute")
        first = asyncio.ensure_future(limiter.hit("reads", "user:a"))
        await asyncio.sleep(0)  # the first call is now under way
        later = [limiter.hit("reads", "user:a") for _ in range(5)]
        decisions = await asyncio.gather(first, *later)
        assert limiter.batches_sent == 2
        assert [d.remaining for d in decisions if d is not None] == [9, 8, 7, 6, 5, 4]

    async def test_a_cancelled_hit_does_not_hold_up_the_others(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), reads="10/minute")
        gone = asyncio.ensure_future(limiter.hit("reads", "user:a"))
        kept = asyncio.ensure_future(limiter.hit("reads", "user:a"))
        await asyncio.sleep(0)
        gone.cancel()
        decision = await kept
        assert decision is not None
        assert decision.allowed
        assert gone.cancelled()


class TestChains:
    """`hit_chain`: hits in order, each counted only while the ones before it were allowed."""

    async def test_the_first_denied_hit_ends_the_chain_and_the_rest_are_not_counted(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(
            redis,
            new_prefix(redis_key_prefix),
            by_ip="5/minute",
            account="1/minute",
            tier="3/minute",
        )
        chain = [("by_ip", "ip:a"), ("account", "acct:a"), ("tier", "acct:a")]
        first = await limiter.hit_chain(chain)
        assert [(d.policy.name, d.allowed, d.remaining) for d in first if d] == [
            ("by_ip", True, 4),
            ("account", True, 0),
            ("tier", True, 2),
        ]
        second = await limiter.hit_chain(chain)
        assert [(d.policy.name, d.allowed) for d in second if d] == [
            ("by_ip", True),
            ("account", False),
        ]
        # The tier was not counted by the refused attempt: two of its three are left.
        assert [(d.allowed, d.remaining) for d in [await limiter.hit("tier", "acct:a")] if d] == [
            (True, 1)
        ]

    async def test_concurrent_chains_share_one_call_and_stay_exact(
        self, redis: Redis, redis_key_prefix: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), by_ip="4/minute", tier="10/minute")
        chains = await asyncio.gather(
            *(limiter.hit_chain([("by_ip", "ip:a"), ("tier", "acct:a")]) for _ in range(6))
        )
        assert limiter.batches_sent == 1
        # Four pass both counts; the two refused by address take no slot of the tier.
        assert [len(chain) for chain in chains] == [2, 2, 2, 2, 1, 1]
        tier = await limiter.hit("tier", "acct:a")
        assert tier is not None
        assert tier.remaining == 10 - 4 - 1

    async def test_a_failed_call_answers_each_hit_by_its_policy_in_order(self) -> None:
        broken = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        try:
            limiter = _limiter(broken, "broken:", reads="5/minute", closed_auth="5/minute")
            open_only = await limiter.hit_chain([("reads", "ip:a"), ("reads", "user:a")])
            with pytest.raises(RateLimitUnavailable):
                await limiter.hit_chain([("reads", "ip:a"), ("closed_auth", "user:a")])
        finally:
            await broken.aclose()
        assert open_only == [None, None]


class TestFailures:
    async def test_each_hit_of_a_failed_call_follows_its_policy(self) -> None:
        # Nothing listens on a fresh free port: the call is refused at once.
        broken = Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=1)
        try:
            limiter = _limiter(broken, "broken:", reads="5/minute", closed_auth="5/minute")
            outcomes = await asyncio.gather(
                limiter.hit("reads", "user:a"),
                limiter.hit("closed_auth", "ip:a"),
                limiter.hit("reads", "user:b"),
                return_exceptions=True,
            )
        finally:
            await broken.aclose()
        assert outcomes[0] is None
        assert isinstance(outcomes[1], RateLimitUnavailable)
        assert outcomes[2] is None

    async def test_a_redis_that_lost_the_script_counts_the_whole_batch(
        self, redis: Redis, redis_key_prefix: str, redis_url: str
    ) -> None:
        limiter = _limiter(redis, new_prefix(redis_key_prefix), reads="3/minute")
        assert await limiter.hit("reads", "user:a") is not None
        other = Redis.from_url(redis_url)
        try:
            await other.script_flush()  # as after a restart without persistence
        finally:
            await other.aclose()
        decisions = await asyncio.gather(*(limiter.hit("reads", "user:a") for _ in range(3)))
        assert [(d.allowed, d.remaining) for d in decisions if d is not None] == [
            (True, 1),
            (True, 0),
            (False, 0),
        ]


@pytest.mark.parametrize("count", [1, 7])
async def test_the_window_keys_expire(redis: Redis, redis_key_prefix: str, count: int) -> None:
    prefix = new_prefix(redis_key_prefix)
    limiter = _limiter(redis, prefix, reads="5/minute")
    await asyncio.gather(*(limiter.hit("reads", f"user:{n}") for n in range(count)))
    keys = [key async for key in redis.scan_iter(f"{prefix}*")]
    assert len(keys) == count
    ttls = [await redis.pttl(key) for key in keys]
    assert all(0 < ttl <= 60_000 for ttl in ttls)

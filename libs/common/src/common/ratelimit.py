"""Rate limits counted in Redis, shared by every worker process and instance.

A moving window (a sliding log): a Lua script drops the entries older than
the window, counts the rest, records the hit if it fits, and answers the
verdict with the numbers the `RateLimit` headers need. So N allowed per
window means exactly N across all processes (no read-then-write race), timed
by Redis's own clock (the same for every host). The hits a process makes
while a round trip is under way are counted together, in order, by one call
of the script (`BATCH_MAX` at most): one round trip per hit when alone, one
for many under load. A route takes a limit as a dependency, `rate_limit("auth")`; the
key is the verified token's user, or else the client address as uvicorn's
ProxyHeadersMiddleware resolved it; anonymous routes (`by_ip=True`) always key
on the address, so a bearer token cannot pick a bucket of its own. Limits are
written as the `limits` library parses them (`10/minute`, `5/15 minutes`).

The identity in a Redis key is a fixed-length digest of the normalised
identity, never the raw input: Redis runs with `noeviction` and also carries
the broker and the event store, so one request must not be able to store a
large key.

AppError
├── TooManyRequests (429)   a limit is exhausted; Retry-After and RateLimit headers
└── ServiceUnavailable (503)
    └── RateLimitUnavailable    Redis cannot answer and the policy fails closed
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import logging
import math
import os
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

import limits
from fastapi import Depends
from fastapi.params import Depends as DependsParam
from limits import RateLimitItem
from pydantic import AfterValidator
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError, RedisError
from starlette.requests import HTTPConnection
from starlette.responses import Response

from common.auth import InvalidToken, authenticate, bearer_token
from common.batching import Batches
from common.errors import ServiceUnavailable, TooManyRequests
from common.metrics import RATE_LIMIT_BACKEND_FAILURES, RATE_LIMIT_REJECTIONS
from common.middleware import add_late_headers
from common.settings import CommonSettings
from common.state import state_of

_logger = logging.getLogger("common.ratelimit")


def _checked_by(parse: Callable[[str], object], expected: str) -> AfterValidator:
    """A settings validator keeping the text that `parse` reads; else "not {expected}"."""

    def check(value: str) -> str:
        try:
            parse(value)
        except ValueError as exc:
            raise ValueError(f"not {expected}: {exc}") from exc
        return value

    return AfterValidator(check)


# A settings field holding a limit: `10/minute`, `5/15 minutes`, `100 per hour`.
LimitSpec = Annotated[
    str, _checked_by(limits.parse, "a rate limit such as '10/minute' or '5/15 minutes'")
]


def split_limits(value: str) -> list[str]:
    """`10/minute;30/hour` as `["10 per 1 minute", "30 per 1 hour"]`."""
    return [str(item) for item in limits.parse_many(value)]


# A settings field holding several limits, each applied: `10/minute;30/hour;100/day`.
LimitSpecs = Annotated[str, _checked_by(limits.parse_many, "limits such as '10/minute;30/hour'")]


class RateLimitUnavailable(ServiceUnavailable, retry_after=5):
    """Raised when Redis cannot count a hit and the policy fails closed."""


@dataclass(frozen=True, slots=True)
class Policy:
    """A named limit and what happens when Redis cannot answer."""

    name: str
    item: RateLimitItem
    fail_open: bool

    @classmethod
    def parse(cls, name: str, spec: str, *, fail_open: bool) -> Policy:
        """`Policy.parse("auth", "10/minute", fail_open=False)`."""
        return cls(name, limits.parse(spec), fail_open)

    @property
    def window(self) -> int:
        """The window in seconds."""
        return int(self.item.get_expiry())


@dataclass(frozen=True, slots=True)
class Decision:
    """One counted hit: allowed or not, and what the headers report."""

    policy: Policy
    allowed: bool
    remaining: int
    reset_after: int

    def headers(self) -> dict[str, str]:
        """`RateLimit-Policy` and `RateLimit` (IETF httpapi draft), and Retry-After if denied."""
        name = self.policy.name
        headers = {
            "RateLimit-Policy": f'"{name}";q={self.policy.item.amount};w={self.policy.window}',
            "RateLimit": f'"{name}";r={self.remaining};t={self.reset_after}',
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_after)
        return headers


# KEYS: one window's sorted set per hit (member: a unique hit id, score: its time
# in µs); a key may come more than once. ARGV: for each hit in turn, its limit,
# window in µs, id, and whether it is chained to the hit before it (1 or 0). Each
# hit, in order, drops its window's entries older than the window, counts the rest
# and is recorded if it fits; a chained hit whose predecessor was not allowed is
# skipped (not counted). Returns, flattened, per hit: {allowed 1|0 (-1 skipped),
# remaining, µs until the oldest hit in the window leaves it (the window, if none)}.
_HITS_LUA = """
local now = redis.call('TIME')
now = tonumber(now[1]) * 1000000 + tonumber(now[2])
local verdicts = {}
local allowed = 1
for index, key in ipairs(KEYS) do
  local base = (index - 1) * 4
  local limit, window = tonumber(ARGV[base + 1]), tonumber(ARGV[base + 2])
  if ARGV[base + 4] == '1' and allowed ~= 1 then
    allowed = -1
    verdicts[#verdicts + 1] = -1
    verdicts[#verdicts + 1] = 0
    verdicts[#verdicts + 1] = 0
  else
    redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
    local count = redis.call('ZCARD', key)
    allowed = 0
    if count < limit then
      redis.call('ZADD', key, now, ARGV[base + 3])
      redis.call('PEXPIRE', key, math.ceil(window / 1000))
      count, allowed = count + 1, 1
    end
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    local reset = window
    if oldest[2] then reset = tonumber(oldest[2]) + window - now end
    verdicts[#verdicts + 1] = allowed
    verdicts[#verdicts + 1] = limit - count
    verdicts[#verdicts + 1] = reset
  end
end
return verdicts
"""
# The most requests' hits one script call counts (about 10 µs of Redis's time per
# hit; a request's chain, `RateLimiter.hit_chain`, may hold several).
BATCH_MAX = 64


@dataclass(frozen=True, slots=True)
class _Hits:
    """One request's hits waiting for their batch: keys and script arguments, in order
    (each hit after the first chained to the one before it)."""

    keys: tuple[str, ...]
    arguments: tuple[int | str, ...]


class RateLimiter:
    """Counts hits per (policy, key) in Redis; one per process, built in `lifespan`."""

    def __init__(self, redis: Redis, *, key_prefix: str, policies: Mapping[str, Policy]) -> None:
        # The process's own client and pool (and its timeouts), not a second one.
        self._redis = redis
        self._script = redis.register_script(_HITS_LUA)  # loads the script when Redis lost it
        self._key_prefix = f"{key_prefix}ratelimit:mw"
        self.policies = dict(policies)
        # Hit ids, unique across processes (a random prefix) and hits (a counter).
        self._hit_prefix = os.urandom(6).hex()
        self._hits = itertools.count()
        # Hits of the same moment counted by one script call (`common.batching`).
        self._batches: Batches[_Hits, list[int]] = Batches(self._evalsha, max_size=BATCH_MAX)

    @property
    def batches_sent(self) -> int:
        """Script calls made so far."""
        return self._batches.sent

    @classmethod
    def from_settings(
        cls, redis: Redis, settings: CommonSettings, specs: Mapping[str, str]
    ) -> RateLimiter:
        """The process's limiter: `specs` (name to limit text) under the settings' key prefix."""
        return cls(
            redis, key_prefix=settings.redis_key_prefix, policies=build_policies(settings, specs)
        )

    def _count(self, policies: list[Policy], keys: tuple[str, ...]) -> asyncio.Future[list[int]]:
        """Queue one request's hits; their verdicts, flattened, come with the next batch
        (`common.batching`). A failed call fails each of its requests, which `hit_chain`
        answers by each policy."""
        arguments: list[int | str] = []
        for index, policy in enumerate(policies):
            chained = 1 if index else 0
            arguments += [policy.item.amount, policy.window * 1_000_000, self._hit_id(), chained]
        return self._batches.submit(_Hits(keys, tuple(arguments)))

    async def _evalsha(self, batch: list[_Hits]) -> list[list[int]]:
        """The hits script by its digest (EVALSHA as one command); each request's verdicts.

        redis-py's script object costs about as much client CPU per call as the
        command itself; it is used only to load the script when Redis lost it
        (a restart, SCRIPT FLUSH).
        """
        keys = [key for hits in batch for key in hits.keys]
        arguments = [argument for hits in batch for argument in hits.arguments]
        try:
            verdicts = await self._redis.execute_command(  # type: ignore[no-untyped-call]
                "EVALSHA", self._script.sha, len(keys), *keys, *arguments
            )
        except NoScriptError:
            verdicts = await self._script(keys=keys, args=arguments)
        answers, start = [], 0
        for hits in batch:
            end = start + 3 * len(hits.keys)
            answers.append(verdicts[start:end])
            start = end
        return answers

    def _hit_id(self) -> str:
        return f"{self._hit_prefix}{next(self._hits):x}"

    def _key(self, policy: Policy, key: str) -> str:
        # The limit is part of the key: a changed limit starts a fresh window.
        return (
            f"{self._key_prefix}/{policy.name}/{key_digest(key)}"
            f"/{policy.item.amount}/{policy.window}"
        )

    async def hit(self, name: str, key: str) -> Decision | None:
        """Count one hit of `key` under policy `name` (one round trip, shared with concurrent hits).

        None when Redis failed and the policy fails open; `RateLimitUnavailable`
        when it fails closed.
        """
        return (await self.hit_chain([(name, key)]))[0]

    async def hit_chain(self, hits: Sequence[tuple[str, str]]) -> list[Decision | None]:
        """Count `hits` (policy name, key) in order, each only if the one before was allowed.

        One round trip for them all, atomic in Redis, as if each were a `hit`
        made after the one before it was answered: the decisions end with the
        first denied hit, and the hits after it are not counted. When Redis
        fails, each hit is answered by its policy, in order: None if it fails
        open, `RateLimitUnavailable` at the first that fails closed.
        """
        policies = [self.policies[name] for name, _ in hits]
        keys = tuple(
            self._key(policy, key) for policy, (_, key) in zip(policies, hits, strict=True)
        )
        try:
            verdicts = await self._count(policies, keys)
        except (RedisError, OSError) as exc:
            answers: list[Decision | None] = []
            for policy in policies:
                self._note_unavailable(policy, exc)
                if not policy.fail_open:
                    raise RateLimitUnavailable(
                        "Temporarily unable to serve this request; try again shortly.",
                    ) from exc
                answers.append(None)
            return answers
        decisions: list[Decision | None] = []
        for index, policy in enumerate(policies):
            allowed, remaining, reset_us = verdicts[3 * index : 3 * index + 3]
            if not allowed:
                RATE_LIMIT_REJECTIONS.labels(policy.name).inc()
            reset_after = max(1, math.ceil(int(reset_us) / 1_000_000))
            decisions.append(Decision(policy, bool(allowed), max(0, int(remaining)), reset_after))
            if not allowed:
                break
        return decisions

    async def clear(
        self, name: str, key: str, *, also: Callable[[Pipeline], object] | None = None
    ) -> None:
        """Forget every hit of `key` under policy `name` (best effort).

        `also` adds commands to the same round trip (a pipeline, not a transaction);
        they fail with it.
        """
        policy = self.policies[name]
        pipeline = self._redis.pipeline(transaction=False)
        pipeline.delete(self._key(policy, key))
        if also is not None:
            also(pipeline)
        try:
            await pipeline.execute()
        except (RedisError, OSError) as exc:
            self._note_unavailable(policy, exc)

    def _note_unavailable(self, policy: Policy, exc: BaseException) -> None:
        outcome = "open" if policy.fail_open else "closed"
        RATE_LIMIT_BACKEND_FAILURES.labels(policy.name, outcome).inc()
        _logger.warning(
            "rate limit store unavailable; failing %s",
            outcome,
            extra={"policy": policy.name, "error": type(exc).__name__},
        )


def key_digest(identity: str) -> str:
    """A fixed-length (32 hex characters) digest of a limiter identity, whatever its length."""
    return hashlib.blake2b(identity.encode(errors="surrogatepass"), digest_size=16).hexdigest()


def build_policies(settings: CommonSettings, specs: Mapping[str, str]) -> dict[str, Policy]:
    """Policies from name to limit text; fail-closed ones per `RATE_LIMIT_FAIL_CLOSED`.

    A tier `name.2` of a policy family fails as `name` does.
    """
    closed = set(settings.rate_limit_fail_closed)
    return {
        name: Policy.parse(name, spec, fail_open=name.partition(".")[0] not in closed)
        for name, spec in specs.items()
    }


def rate_limited(decision: Decision, detail: str | None = None) -> TooManyRequests:
    """The 429 for a denied `decision`, with its headers."""
    return TooManyRequests(
        detail or f"Rate limit exceeded; retry in {decision.reset_after}s.",
        retry_after=decision.reset_after,
        headers=decision.headers(),
    )


def client_ip(connection: HTTPConnection) -> str:
    """The client address after ProxyHeadersMiddleware (trusted proxies only)."""
    return connection.client.host if connection.client else "unknown"


def client_key(connection: HTTPConnection) -> str:
    """`user:<id>` for a verified bearer token (no database), else `ip:<client address>`."""
    if bearer_token(connection) is not None:
        with contextlib.suppress(InvalidToken):
            return f"user:{authenticate(connection).user_id}"
    return _ip_key(connection)


def _ip_key(connection: HTTPConnection) -> str:
    return f"ip:{client_ip(connection)}"


def rate_limit(name: str, *, concurrent: bool = False, by_ip: bool = False) -> Any:
    """A route dependency counting each request under policy `name`; 429 beyond it.

    With `by_ip`, for anonymous routes (register, login, refresh), the key is
    the client address whatever headers the request carries: otherwise K
    accounts would give one address K budgets.

    With `concurrent`, for handlers without side effects only (a read), the
    hit is counted while the handler runs, which takes the limiter's round
    trip off the request's path; a denied request still gets its 429 (the
    handler's answer is dropped), and its headers are added as it is sent.
    """

    keyed = _ip_key if by_ip else client_key

    async def check_rate_limit(connection: HTTPConnection, response: Response) -> None:
        limiter = state_of(connection)["rate_limiter"]
        decision = await limiter.hit(name, keyed(connection))
        if decision is None:
            return
        if not decision.allowed:
            raise rate_limited(decision)
        response.headers.update(decision.headers())

    async def count_alongside(connection: HTTPConnection) -> AsyncIterator[None]:
        limiter = state_of(connection)["rate_limiter"]
        pending = asyncio.ensure_future(limiter.hit(name, keyed(connection)))
        try:
            try:
                yield
            except Exception:
                _settle(connection, await pending)
                raise
            _settle(connection, await pending)
        finally:
            pending.cancel()  # a no-op once settled

    check: Any = count_alongside if concurrent else check_rate_limit
    check.__name__ = f"rate_limit_{name}"
    # scope="function": settled before the response is sent, so a 429 replaces it.
    dependency: DependsParam = Depends(check, scope="function" if concurrent else None)
    return dependency


def _settle(connection: HTTPConnection, decision: Decision | None) -> None:
    """Raise the 429 of a denied hit, or have the response carry the allowed one's headers."""
    if decision is None:
        return
    if not decision.allowed:
        raise rate_limited(decision)
    add_late_headers(connection.scope, decision.headers())

"""Rate limits counted in Redis, shared by every worker process and instance.

The `limits` library's moving window: each hit is one Lua script that reads the
window and records the hit atomically, so N allowed per window means exactly N
across all processes (no read-then-write race). A route takes a limit as a
dependency, `rate_limit("auth")`; the key is the verified token's user, or
else the client address as uvicorn's ProxyHeadersMiddleware resolved it.

AppError
├── TooManyRequests (429)   a limit is exhausted; Retry-After and RateLimit headers
└── RateLimitUnavailable (503)  Redis cannot answer and the policy fails closed
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import limits
from fastapi import Depends
from fastapi.params import Depends as DependsParam
from limits import RateLimitItem
from limits.aio.storage import RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from pydantic import AfterValidator
from redis.asyncio import Redis
from redis.exceptions import RedisError
from starlette.requests import HTTPConnection
from starlette.responses import Response

from common.auth import InvalidToken, authenticate, bearer_token
from common.errors import AppError, TooManyRequests
from common.metrics import RATE_LIMIT_BACKEND_FAILURES, RATE_LIMIT_REJECTIONS
from common.settings import CommonSettings

_logger = logging.getLogger("common.ratelimit")


def _check_limit(value: str) -> str:
    try:
        limits.parse(value)
    except ValueError as exc:
        raise ValueError(f"not a rate limit such as '10/minute' or '5/15 minutes': {exc}") from exc
    return value


# A settings field holding a limit: `10/minute`, `5/15 minutes`, `100 per hour`.
LimitSpec = Annotated[str, AfterValidator(_check_limit)]


class RateLimitUnavailable(AppError):
    """Raised when Redis cannot count a hit and the policy fails closed."""

    status = 503
    title = "Service unavailable"


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


class RateLimiter:
    """Counts hits per (policy, key) in Redis; one per process, built in `lifespan`."""

    def __init__(self, redis: Redis, *, key_prefix: str, policies: Mapping[str, Policy]) -> None:
        # The process's own pool (and its timeouts), not a second one.
        options: dict[str, Any] = {"connection_pool": redis.connection_pool}
        storage = RedisStorage(
            "async+redis://",
            implementation="redispy",
            key_prefix=f"{key_prefix}ratelimit",
            **options,
        )
        self._limiter = MovingWindowRateLimiter(storage)
        self.policies = dict(policies)

    async def hit(self, name: str, key: str) -> Decision | None:
        """Count one hit of `key` under policy `name`.

        None when Redis failed and the policy fails open; `RateLimitUnavailable`
        when it fails closed.
        """
        policy = self.policies[name]
        try:
            allowed = await self._limiter.hit(policy.item, name, key)
            stats = await self._limiter.get_window_stats(policy.item, name, key)
        except (RedisError, OSError) as exc:
            self._note_unavailable(policy, exc)
            if policy.fail_open:
                return None
            raise RateLimitUnavailable(
                "Temporarily unable to serve this request; try again shortly.",
                headers={"Retry-After": "5"},
            ) from exc
        if not allowed:
            RATE_LIMIT_REJECTIONS.labels(name).inc()
        reset_after = max(1, math.ceil(stats.reset_time - time.time()))
        return Decision(policy, allowed, max(0, stats.remaining), reset_after)

    async def clear(self, name: str, key: str) -> None:
        """Forget every hit of `key` under policy `name` (best effort)."""
        policy = self.policies[name]
        try:
            await self._limiter.clear(policy.item, name, key)
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


def build_policies(settings: CommonSettings, specs: Mapping[str, str]) -> dict[str, Policy]:
    """Policies from name to limit text; fail-closed ones per `RATE_LIMIT_FAIL_CLOSED`."""
    closed = set(settings.rate_limit_fail_closed)
    return {
        name: Policy.parse(name, spec, fail_open=name not in closed) for name, spec in specs.items()
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
    return f"ip:{client_ip(connection)}"


def rate_limit(name: str) -> Any:
    """A route dependency counting each request under policy `name`; 429 beyond it."""

    async def check_rate_limit(connection: HTTPConnection, response: Response) -> None:
        limiter: RateLimiter = connection.state.rate_limiter
        decision = await limiter.hit(name, client_key(connection))
        if decision is None:
            return
        if not decision.allowed:
            raise rate_limited(decision)
        response.headers.update(decision.headers())

    check_rate_limit.__name__ = f"rate_limit_{name}"
    dependency: DependsParam = Depends(check_rate_limit)
    return dependency

"""Brute-force protection of the login, without letting a stranger lock anyone out.

Three counts, taken in order by one atomic Redis script before the password is
checked, so N concurrent guesses cannot slip past a limit of N and a refused
attempt costs no password work. The first refusal ends the chain: the counts
after it are not taken.

- `login_ip`: every attempt from one client address, whatever the account.
- `login_account`: failures on one account *from one address*. An attacker
  exhausting it locks only their own address out of that account.
- `login_account_global` (and its `.2`, `.3` tiers): attempts on one account
  from every address together, in windows that grow (a minute, an hour, a
  day by default), so a distributed guesser waits longer and longer.

When only the global count is exhausted, a client whose address logged in to
this account successfully within `LOGIN_KNOWN_ADDRESS_DAYS` still has its
password checked, and gets in with the right one: the owner is not locked out
by strangers. The trade-off: an attacker who shares the owner's address (the
same NAT) and knows nothing else keeps the per-(account, address) budget only.

Every identity is hashed into the limiter keys (`common.ratelimit.key_digest`).
"""

from __future__ import annotations

from dataclasses import dataclass

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline
from redis.exceptions import RedisError

from common.ratelimit import Decision, RateLimiter, key_digest, rate_limited

LOGIN_IP = "login_ip"
LOGIN_ACCOUNT = "login_account"
LOGIN_ACCOUNT_GLOBAL = "login_account_global"


def global_policy_names(count: int) -> list[str]:
    """The names of the global per-account tiers: `login_account_global`, `….2`, `….3`, …"""
    return [LOGIN_ACCOUNT_GLOBAL] + [f"{LOGIN_ACCOUNT_GLOBAL}.{n}" for n in range(2, count + 1)]


def account_key(email: str) -> str:
    """The account's identity: the email as the users table compares it."""
    return f"account:{email.strip().lower()}"


@dataclass(frozen=True, slots=True)
class LoginAttempt:
    """An admitted attempt: whose, from where, and what to do after the check."""

    account: str
    ip: str
    globally_locked: Decision | None

    @property
    def account_at_ip(self) -> str:
        return f"{self.account}|ip:{self.ip}"


def _known_key(prefix: str, attempt: LoginAttempt) -> str:
    return f"{prefix}login:known:{key_digest(attempt.account_at_ip)}"


async def admit_login(limiter: RateLimiter, *, email: str, ip: str) -> LoginAttempt:
    """Take a slot for this attempt in every count or raise 429.

    The counts are taken in order, in one round trip (`RateLimiter.hit_chain`):
    the first refusal ends the chain, and the counts after it are not taken. A
    denied global count does not refuse the attempt yet: `LoginAttempt.
    globally_locked` holds it, and `refuse_unless_known` decides.
    """
    attempt = LoginAttempt(account_key(email), ip, None)
    tiers = [name for name in limiter.policies if name.partition(".")[0] == LOGIN_ACCOUNT_GLOBAL]
    decisions = await limiter.hit_chain(
        [
            (LOGIN_IP, f"ip:{ip}"),
            (LOGIN_ACCOUNT, attempt.account_at_ip),
            *((name, attempt.account) for name in tiers),
        ]
    )
    for decision in decisions:
        if decision is None or decision.allowed:
            continue
        if decision.policy.name == LOGIN_IP:
            detail = "Too many login attempts from this address; try again later."
            raise rate_limited(decision, detail)
        if decision.policy.name == LOGIN_ACCOUNT:
            detail = "Too many failed logins for this account; try again later."
            raise rate_limited(decision, detail)
        return LoginAttempt(attempt.account, ip, decision)
    return attempt


async def refuse_unless_known(redis: Redis, attempt: LoginAttempt, *, prefix: str) -> None:
    """When the account is globally locked, 429 unless this address logged in recently."""
    if attempt.globally_locked is None:
        return
    try:
        known = bool(await redis.exists(_known_key(prefix, attempt)))
    except (RedisError, OSError):
        known = False
    if not known:
        raise rate_limited(
            attempt.globally_locked, "Too many failed logins for this account; try again later."
        )


async def record_success(
    limiter: RateLimiter, attempt: LoginAttempt, *, prefix: str, remember_days: int
) -> None:
    """After a successful login: this address's failures on the account no longer count, and
    the address is remembered as one the owner uses.

    One round trip for both, best effort: if the count is not cleared, this
    address's earlier failures still count; if the address is not remembered, the
    owner may wait out a global lock; nothing worse.
    """
    known = _known_key(prefix, attempt)
    seconds = remember_days * 86_400

    def remember(pipeline: Pipeline) -> None:
        pipeline.set(known, b"1", ex=seconds)

    await limiter.clear(
        LOGIN_ACCOUNT, attempt.account_at_ip, also=remember if remember_days else None
    )

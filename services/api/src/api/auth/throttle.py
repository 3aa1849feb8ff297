"""Brute-force protection of the login: attempts per client IP, failures per account.

Each attempt takes a slot in both windows before the password is checked (one
atomic Redis script each), so N concurrent guesses cannot slip past a limit of
N, and a locked account or address gets 429 without any password work. A
successful login frees the account's slots; the address's stay.
"""

from __future__ import annotations

from common.ratelimit import RateLimiter, rate_limited

LOGIN_IP = "login_ip"
LOGIN_ACCOUNT = "login_account"


def account_key(email: str) -> str:
    """The account's limit key: the email as the users table compares it."""
    return f"account:{email.strip().lower()}"


async def admit_login(limiter: RateLimiter, *, email: str, ip: str) -> str:
    """Take a slot for this attempt or raise 429; returns the account key."""
    account = account_key(email)
    by_ip = await limiter.hit(LOGIN_IP, f"ip:{ip}")
    if by_ip is not None and not by_ip.allowed:
        raise rate_limited(by_ip, "Too many login attempts from this address; try again later.")
    by_account = await limiter.hit(LOGIN_ACCOUNT, account)
    if by_account is not None and not by_account.allowed:
        raise rate_limited(by_account, "Too many failed logins for this account; try again later.")
    return account


async def forget_failures(limiter: RateLimiter, *, account: str) -> None:
    """After a successful login: the account's earlier failures no longer count."""
    await limiter.clear(LOGIN_ACCOUNT, account)

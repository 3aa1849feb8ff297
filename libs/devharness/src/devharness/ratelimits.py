"""Rate limits for tests that are not about rate limits: every test shares one client address."""

from __future__ import annotations

GENEROUS_RATE_LIMITS = {
    "rate_limit_auth": "100000/minute",
    "rate_limit_writes": "100000/minute",
    "rate_limit_reads": "100000/minute",
    "rate_limit_login_ip": "100000/minute",
    "rate_limit_login_account": "1000/minute",
    "rate_limit_login_account_global": "100000/minute",
    "rate_limit_ws_connect_ip": "100000/minute",
    "rate_limit_ws_connect_user": "100000/minute",
    "rate_limit_ws_messages": "100000/minute",
}
GENEROUS_RATE_LIMIT_ENV = {name.upper(): value for name, value in GENEROUS_RATE_LIMITS.items()}

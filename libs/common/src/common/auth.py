"""JWT access tokens (python-jose) and the `current_principal` dependency.

Access tokens are short-lived, HMAC-signed, and verified against an explicit
algorithm allow-list with `exp`, `iat`, `nbf`, `iss`, `aud`, `sub` and `jti`
all required. Any failure is a 401 with `WWW-Authenticate: Bearer`; the
reason is logged, not told to the client.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends
from fastapi.security import OAuth2PasswordBearer
from jose import JWTError, jwt
from jose.exceptions import JWKError
from starlette.requests import HTTPConnection

from common.errors import Unauthorized
from common.settings import CommonSettings
from common.state import state_of

ACCESS_TOKEN_TYPE = "access"  # noqa: S105 (a claim value, not a secret)
_REQUIRED_CLAIMS = ("exp", "iat", "nbf", "iss", "aud", "sub", "jti")
_logger = logging.getLogger("common.auth")


class InvalidToken(Unauthorized, title="Invalid or expired token"):
    """Raised when a bearer token is missing, malformed, expired or not for us."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a verified access token speaks for; built without touching the database."""

    user_id: uuid.UUID
    token_id: str
    expires_at: int
    issued_at_ms: int = 0
    """When the token was issued, in ms (revocation compares it with the user's cut-off)."""


def issue_access_token(
    settings: CommonSettings, *, subject: uuid.UUID, now: int | None = None
) -> str:
    """Sign an access token for `subject` valid for `access_token_ttl_seconds`."""
    issued_ms = int(time.time() * 1000) if now is None else now * 1000
    issued = issued_ms // 1000
    claims = {
        "sub": str(subject),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": issued,
        "iat_ms": issued_ms,
        "nbf": issued,
        "exp": issued + settings.access_token_ttl_seconds,
        "jti": uuid.uuid4().hex,
        "typ": ACCESS_TOKEN_TYPE,
    }
    return jwt.encode(claims, settings.jwt_key(), algorithm=settings.jwt_algorithm)


def verify_access_token(settings: CommonSettings, token: str) -> Principal:
    """Verify signature, algorithm, audience, issuer and times; raise `InvalidToken`."""
    try:
        header = jwt.get_unverified_header(token)
        # Checked before decoding as well as by decode(): a token must name
        # exactly our algorithm, so `none` and key-confusion tricks never start.
        if header.get("alg") != settings.jwt_algorithm:
            raise InvalidToken("token algorithm not allowed")
        claims: dict[str, Any] = jwt.decode(
            token,
            settings.jwt_key(),
            algorithms=[settings.jwt_algorithm],
            audience=settings.jwt_audience,
            issuer=settings.jwt_issuer,
            options={
                "leeway": settings.jwt_leeway_seconds,
                **{f"require_{claim}": True for claim in _REQUIRED_CLAIMS},
            },
        )
        if claims.get("typ") != ACCESS_TOKEN_TYPE:
            raise InvalidToken("not an access token")
        issued, expires = int(claims["iat"]), int(claims["exp"])
        # A token from the future or living longer than we issue them was not
        # made by us as configured now (a leaked key, a changed TTL): refuse it.
        if issued > time.time() + settings.jwt_leeway_seconds:
            raise InvalidToken("token issued in the future")
        if expires - issued > settings.access_token_ttl_seconds:
            raise InvalidToken("token lifetime longer than ACCESS_TOKEN_TTL_SECONDS")
        issued_ms = claims.get("iat_ms")
        if not isinstance(issued_ms, int) or issued_ms // 1000 != issued:
            issued_ms = issued * 1000
        return Principal(
            user_id=uuid.UUID(str(claims["sub"])),
            token_id=str(claims["jti"]),
            expires_at=expires,
            issued_at_ms=issued_ms,
        )
    except InvalidToken as exc:
        _logger.info("rejected token: %s", exc.detail)
        raise
    except (JWTError, JWKError, ValueError, KeyError, TypeError) as exc:
        _logger.info("rejected token: %s", type(exc).__name__)
        raise InvalidToken from exc


def bearer_token(connection: HTTPConnection) -> str | None:
    """The token of an `Authorization: Bearer ...` header, if there is one."""
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


_VERIFIED = "verified_principal"
# Verified tokens this process remembers (a bounded, oldest-out cache).
_VERIFIED_TOKENS_MAX = 10_000
_verified_tokens: dict[tuple[str, ...], Principal] = {}


def verify_access_token_cached(settings: CommonSettings, token: str) -> Principal:
    """`verify_access_token`, remembering the tokens it verified until they expire.

    A client sends the same token with each request until it expires: its
    signature and claims are checked on its first use in this process, later
    uses only check that it has not expired. Only valid tokens are kept, and
    only a holder of the secret can make one, so the cache cannot be flooded.
    Checks that must see every use of a token (a revocation list) belong
    after this one.
    """
    key = (
        token, settings.jwt_key(), settings.jwt_algorithm, settings.jwt_audience,
        settings.jwt_issuer, str(settings.jwt_leeway_seconds),
        str(settings.access_token_ttl_seconds),
    )  # fmt: skip
    principal = _verified_tokens.get(key)
    if principal is None:
        principal = verify_access_token(settings, token)
        if len(_verified_tokens) >= _VERIFIED_TOKENS_MAX:
            del _verified_tokens[next(iter(_verified_tokens))]
        _verified_tokens[key] = principal
    elif time.time() > principal.expires_at + settings.jwt_leeway_seconds:
        del _verified_tokens[key]
        _logger.info("rejected token: expired")
        raise InvalidToken("token expired")
    return principal


def authenticate(connection: HTTPConnection) -> Principal:
    """The verified principal of this request's bearer token; `InvalidToken` otherwise.

    Verified once per request, however many dependencies ask (the rate
    limiter keys on the user, the endpoint needs them): the outcome, success
    or failure, is kept in the request's state.
    """
    outcome: Principal | InvalidToken | None = connection.scope.get(_VERIFIED)
    if outcome is None:
        token = bearer_token(connection)
        if token is None:
            outcome = InvalidToken("Missing bearer token")
        else:
            try:
                outcome = verify_access_token_cached(state_of(connection)["settings"], token)
            except InvalidToken as exc:
                outcome = exc
        connection.scope[_VERIFIED] = outcome
    if isinstance(outcome, InvalidToken):
        raise outcome
    return outcome


class _BearerPrincipal(OAuth2PasswordBearer):
    """OAuth2's password flow in OpenAPI (Swagger UI's Authorize button), answering the principal.

    A security scheme is what FastAPI lists in OpenAPI; as one dependency it
    also verifies, where a scheme declared beside the check was a second
    dependency to solve on every authenticated request. The token is read by
    `bearer_token`, so the same check also serves WebSocket handshakes.
    """

    async def __call__(self, connection: HTTPConnection) -> Principal:  # type: ignore[override]
        """The caller of this request, from its bearer token (no database query), not revoked.

        The revocation check runs on every request, after the verified-token cache:
        it reads the user's cut-off from this process's memory (`common.revocation`).
        """
        principal = authenticate(connection)
        await state_of(connection)["revocations"].check(principal)
        return principal


current_principal = _BearerPrincipal(
    tokenUrl="/v1/auth/token", scheme_name="OAuth2PasswordBearer", auto_error=False
)
CurrentPrincipal = Annotated[Principal, Depends(current_principal)]

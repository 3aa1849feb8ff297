"""Hand-made JWTs for the token attack matrix: each is wrong in exactly one way."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jose import jwt

from common.auth import issue_access_token
from common.settings import CommonSettings


def b64url(data: bytes) -> str:
    """Unpadded base64url, as JWTs use."""
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def valid_claims(settings: CommonSettings, *, subject: uuid.UUID) -> dict[str, Any]:
    """Claims that verify: every required claim present, typ access."""
    now = int(time.time())
    return {
        "sub": str(subject),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
        "typ": "access",
    }


def sign(settings: CommonSettings, claims: dict[str, Any]) -> str:
    """Sign `claims` with the settings' own key and algorithm."""
    return jwt.encode(claims, settings.jwt_key(), algorithm=settings.jwt_algorithm)


def rsa_public_key_pem() -> str:
    """The PEM text of a fresh RSA public key, as an attacker could read it."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


def alg_none(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    header = b64url_json({"alg": "none", "typ": "JWT"})
    return f"{header}.{b64url_json(valid_claims(settings, subject=subject))}."


def hs256_with_public_key(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    # Built by hand: python-jose itself refuses a PEM as an HMAC secret.
    signing_input = (
        f"{b64url_json({'alg': 'HS256', 'typ': 'JWT'})}."
        f"{b64url_json(valid_claims(settings, subject=subject))}"
    )
    mac = hmac.new(rsa_public_key_pem().encode(), signing_input.encode(), hashlib.sha256)
    return f"{signing_input}.{b64url(mac.digest())}"


def expired(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    past = int(time.time()) - settings.access_token_ttl_seconds - settings.jwt_leeway_seconds - 60
    return issue_access_token(settings, subject=subject, now=past)


def not_yet_valid(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    claims = valid_claims(settings, subject=subject)
    claims["nbf"] = claims["iat"] + settings.jwt_leeway_seconds + 120
    claims["exp"] = claims["nbf"] + 300
    return sign(settings, claims)


def wrong_audience(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    return sign(settings, {**valid_claims(settings, subject=subject), "aud": "someone-else"})


def wrong_issuer(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    return sign(settings, {**valid_claims(settings, subject=subject), "iss": "https://evil.test"})


def flipped_signature(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    token = issue_access_token(settings, subject=subject)
    head, body, signature = token.split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[len(raw) // 2] ^= 0x01
    return f"{head}.{body}.{b64url(bytes(raw))}"


def without_jti(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    claims = valid_claims(settings, subject=subject)
    del claims["jti"]
    return sign(settings, claims)


def without_sub(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    claims = valid_claims(settings, subject=subject)
    del claims["sub"]
    return sign(settings, claims)


def refresh_typed(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    return sign(settings, {**valid_claims(settings, subject=subject), "typ": "refresh"})


def without_typ(settings: CommonSettings, *, subject: uuid.UUID) -> str:
    claims = valid_claims(settings, subject=subject)
    del claims["typ"]
    return sign(settings, claims)


TokenMaker = Callable[..., str]

# Each is a token that must be rejected, named for what is wrong with it.
BAD_TOKENS: dict[str, TokenMaker] = {
    "alg_none": alg_none,
    "hs256_signed_with_rsa_public_key": hs256_with_public_key,
    "expired": expired,
    "not_yet_valid": not_yet_valid,
    "wrong_audience": wrong_audience,
    "wrong_issuer": wrong_issuer,
    "flipped_signature_byte": flipped_signature,
    "missing_jti": without_jti,
    "missing_sub": without_sub,
    "typ_refresh": refresh_typed,
    "missing_typ": without_typ,
}

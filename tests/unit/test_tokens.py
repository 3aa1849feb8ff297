"""Access tokens (common.auth): what verifies, and every forgery that must not."""

from __future__ import annotations

import secrets
import time
import uuid

import pytest

from common.auth import (
    InvalidToken,
    Principal,
    issue_access_token,
    verify_access_token,
    verify_access_token_cached,
)
from common.settings import CommonSettings
from tests.fixtures import tokens


@pytest.fixture(scope="module")
def settings() -> CommonSettings:
    return CommonSettings(_env_file=None, jwt_secret=secrets.token_hex(32))


class TestValidToken:
    """A token we issued verifies to the principal it was issued for."""

    def test_issued_token_verifies_to_its_principal(self, settings: CommonSettings) -> None:
        user_id = uuid.uuid4()
        now = int(time.time())
        principal = verify_access_token(
            settings, issue_access_token(settings, subject=user_id, now=now)
        )
        assert isinstance(principal, Principal)
        assert principal.user_id == user_id
        assert principal.expires_at == now + settings.access_token_ttl_seconds
        assert len(principal.token_id) == 32

    def test_each_token_has_its_own_id(self, settings: CommonSettings) -> None:
        user_id = uuid.uuid4()
        first = verify_access_token(settings, issue_access_token(settings, subject=user_id))
        second = verify_access_token(settings, issue_access_token(settings, subject=user_id))
        assert first.token_id != second.token_id

    def test_token_expired_by_less_than_the_leeway_is_accepted(self) -> None:
        settings = CommonSettings(
            _env_file=None, jwt_secret=secrets.token_hex(32), jwt_leeway_seconds=60
        )
        user_id = uuid.uuid4()
        # Expired 30 s ago, inside the 60 s leeway.
        issued = int(time.time()) - settings.access_token_ttl_seconds - 30
        token = issue_access_token(settings, subject=user_id, now=issued)
        assert verify_access_token(settings, token).user_id == user_id

    def test_hand_built_valid_claims_verify(self, settings: CommonSettings) -> None:
        # The matrix below changes one thing each; this proves the baseline passes.
        user_id = uuid.uuid4()
        token = tokens.sign(settings, tokens.valid_claims(settings, subject=user_id))
        assert verify_access_token(settings, token).user_id == user_id


class TestRejectedTokens:
    """Every forged, stale or foreign token raises InvalidToken."""

    @pytest.mark.parametrize("kind", list(tokens.BAD_TOKENS))
    def test_bad_token_is_rejected(self, settings: CommonSettings, kind: str) -> None:
        token = tokens.BAD_TOKENS[kind](settings, subject=uuid.uuid4())
        with pytest.raises(InvalidToken):
            verify_access_token(settings, token)

    def test_token_signed_with_another_secret_is_rejected(self, settings: CommonSettings) -> None:
        other = CommonSettings(_env_file=None, jwt_secret=secrets.token_hex(32))
        token = issue_access_token(other, subject=uuid.uuid4())
        with pytest.raises(InvalidToken):
            verify_access_token(settings, token)

    def test_token_of_another_hmac_algorithm_is_rejected(self, settings: CommonSettings) -> None:
        other = CommonSettings(_env_file=None, jwt_secret=settings.jwt_key(), jwt_algorithm="HS512")
        token = issue_access_token(other, subject=uuid.uuid4())
        with pytest.raises(InvalidToken):
            verify_access_token(settings, token)

    def test_subject_that_is_not_a_uuid_is_rejected(self, settings: CommonSettings) -> None:
        claims = tokens.valid_claims(settings, subject=uuid.uuid4())
        claims["sub"] = "admin"
        with pytest.raises(InvalidToken):
            verify_access_token(settings, tokens.sign(settings, claims))

    @pytest.mark.parametrize("garbage", ["", "not-a-jwt", "a.b.c", "...."])
    def test_garbage_is_rejected(self, settings: CommonSettings, garbage: str) -> None:
        with pytest.raises(InvalidToken):
            verify_access_token(settings, garbage)

    def test_rejection_is_a_401_with_bearer_challenge(self, settings: CommonSettings) -> None:
        with pytest.raises(InvalidToken) as caught:
            verify_access_token(settings, tokens.expired(settings, subject=uuid.uuid4()))
        assert caught.value.status == 401
        assert caught.value.headers == {"WWW-Authenticate": "Bearer"}


class TestIssueTimes:
    """A token issued in the future, or living longer than our TTL, is refused (#15 §7)."""

    def test_token_issued_in_the_future_is_rejected(self, settings: CommonSettings) -> None:
        claims = tokens.valid_claims(settings, subject=uuid.uuid4())
        future = claims["iat"] + settings.jwt_leeway_seconds + 60
        # nbf stays now, so only iat is wrong.
        claims.update(iat=future, exp=future + 300)
        with pytest.raises(InvalidToken):
            verify_access_token(settings, tokens.sign(settings, claims))

    def test_token_living_longer_than_the_ttl_is_rejected(self, settings: CommonSettings) -> None:
        claims = tokens.valid_claims(settings, subject=uuid.uuid4())
        claims["exp"] = claims["iat"] + settings.access_token_ttl_seconds + 1
        with pytest.raises(InvalidToken):
            verify_access_token(settings, tokens.sign(settings, claims))

    def test_token_of_exactly_the_ttl_verifies(self, settings: CommonSettings) -> None:
        claims = tokens.valid_claims(settings, subject=uuid.uuid4())
        claims["exp"] = claims["iat"] + settings.access_token_ttl_seconds
        assert verify_access_token(settings, tokens.sign(settings, claims))

    def test_issue_time_in_milliseconds_is_carried(self, settings: CommonSettings) -> None:
        before = int(time.time() * 1000)
        token = issue_access_token(settings, subject=uuid.uuid4())
        principal = verify_access_token(settings, token)
        assert before <= principal.issued_at_ms <= int(time.time() * 1000)


class TestVerifiedTokenCache:
    """A token verified once is remembered until it expires, and only under its own secret."""

    def test_a_remembered_token_is_rejected_once_it_expires(
        self, settings: CommonSettings, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        token = issue_access_token(settings, subject=uuid.uuid4())
        principal = verify_access_token_cached(settings, token)
        assert verify_access_token_cached(settings, token) == principal

        later = principal.expires_at + settings.jwt_leeway_seconds + 1
        monkeypatch.setattr(time, "time", lambda: float(later))

        with pytest.raises(InvalidToken):
            verify_access_token_cached(settings, token)

    def test_a_token_remembered_under_one_secret_is_refused_under_another(
        self, settings: CommonSettings
    ) -> None:
        token = issue_access_token(settings, subject=uuid.uuid4())
        verify_access_token_cached(settings, token)
        other = CommonSettings(_env_file=None, jwt_secret=secrets.token_hex(32))

        with pytest.raises(InvalidToken):
            verify_access_token_cached(other, token)

    def test_an_invalid_token_is_never_remembered(self, settings: CommonSettings) -> None:
        forged = tokens.alg_none(settings, subject=uuid.uuid4())

        for _ in range(2):
            with pytest.raises(InvalidToken):
                verify_access_token_cached(settings, forged)

"""Bearer tokens: a shared-secret (HS256) issuer verifies tokens; every
failure is a 401 `unauthenticated` with a stable reason and a `WWW-Authenticate` header.

Tokens are made with PyJWT itself, or by hand where PyJWT refuses to make them (`alg: none`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jwt
import pytest

import gateway.auth
from gateway.auth import SharedSecretIssuer, TokenVerifier, VerifiedToken, bearer_token, mint_hs256_token
from gateway.config import IssuerConfig, parse_config
from gateway.errors import GatewayError
from gateway.secrets import SecretStore
from oidc_provider import b64url, hand_made, hs256_by_hand, hs256_over_bytes

# 64 bytes: long enough for every HMAC size, so PyJWT never warns about short keys.
SECRET = "auth-test-signing-secret-0123456789-abcdefghijklmnopqrstuvwxyz-AB"
OTHER_SECRET = "another-signing-secret-9876543210-zyxwvutsrqponmlkjihgfedcba-ZYX"
ISSUER = IssuerConfig(
    name="dev", issuer="https://issuer.test", audience="edge-sql-gateway", hs256_secret="AUTH_TEST_SECRET"
)
PARTNER = IssuerConfig(
    name="partner", issuer="https://partner.test", audience="edge-sql-gateway", hs256_secret="AUTH_PARTNER_SECRET"
)


@pytest.fixture(autouse=True)
def secrets_in_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AUTH_TEST_SECRET", SECRET)
    monkeypatch.setenv("AUTH_PARTNER_SECRET", OTHER_SECRET)


def make_verifier(*issuers: IssuerConfig, store: SecretStore | None = None) -> TokenVerifier:
    store = store or SecretStore()
    return TokenVerifier([SharedSecretIssuer(issuer, store) for issuer in issuers or (ISSUER, PARTNER)])


@pytest.fixture
def verifier() -> TokenVerifier:
    return make_verifier()


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base = {"iss": ISSUER.issuer, "aud": ISSUER.audience, "sub": "orders-worker", "iat": now, "exp": now + 300}
    base.update(overrides)
    return {key: value for key, value in base.items() if value is not None}


def token(secret: str = SECRET, algorithm: str = "HS256", **overrides: Any) -> str:
    return jwt.encode(claims(**overrides), secret, algorithm=algorithm)


def rejection(call: Callable[[], Any]) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        call()
    return raised.value


def assert_rejected(call: Callable[[], Any], reason: str) -> None:
    error = rejection(call)
    assert error.status == 401
    assert error.code == "unauthenticated"
    assert error.detail == reason
    assert error.headers["WWW-Authenticate"].startswith('Bearer error="invalid_token"')


# ---------------------------------------------------------------------------- valid tokens


def test_valid_token_gives_its_claims(verifier):
    verified = verifier.verify(token(tenant="acme"))
    assert isinstance(verified, VerifiedToken)
    assert verified.claims["sub"] == "orders-worker"
    assert verified.claims["tenant"] == "acme"


def test_verified_token_names_the_configured_issuer(verifier):
    assert verifier.verify(token()).issuer == "dev"
    assert verifier.verify(token(OTHER_SECRET, iss=PARTNER.issuer)).issuer == "partner"


def test_verified_claims_json_is_what_rls_sees(verifier):
    verified = verifier.verify(token(tenant="acme"))
    assert json.loads(verified.claims_json) == verified.claims


def test_verified_token_expires_at_exp_plus_leeway(verifier):
    exp = int(time.time()) + 120
    assert verifier.verify(token(exp=exp)).expires_at == exp + ISSUER.leeway


def test_bearer_header_is_verified(verifier):
    assert asyncio.run(verifier.verify_header(f"Bearer {token()}")).claims["sub"] == "orders-worker"


def test_bearer_scheme_is_case_insensitive(verifier):
    assert bearer_token(f"bearer {token()}") == token()


def test_audience_list_containing_the_audience_is_accepted(verifier):
    verified = verifier.verify(token(aud=["https://other.example", ISSUER.audience]))
    assert verified.claims["sub"] == "orders-worker"


def test_expired_within_leeway_is_accepted(verifier):
    now = int(time.time())
    assert verifier.verify(token(iat=now - 600, exp=now - 10)).claims["sub"] == "orders-worker"


def test_not_before_within_leeway_is_accepted(verifier):
    assert verifier.verify(token(nbf=int(time.time()) + 10)).claims["sub"] == "orders-worker"


def test_token_without_iat_is_accepted(verifier):
    assert verifier.verify(token(iat=None)).claims["sub"] == "orders-worker"


# ---------------------------------------------------------------------------- rejected tokens


def test_missing_header_is_rejected():
    assert_rejected(lambda: bearer_token(None), "missing_token")


def test_empty_header_is_rejected():
    assert_rejected(lambda: bearer_token(""), "missing_token")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Token abc", "Bearer", "Bearer    ", "Bearerabc"])
def test_non_bearer_scheme_is_rejected(header):
    assert_rejected(lambda: bearer_token(header), "not_bearer")


@pytest.mark.parametrize("text", ["abc", "a.b", "a.b.c", "not-a-jwt-at-all", "....", "e30.e30"])
def test_malformed_token_is_rejected(verifier, text):
    assert_rejected(lambda: verifier.verify(text), "malformed_token")


def test_non_ascii_token_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token() + "é"), "malformed_token")


def test_alg_none_is_rejected(verifier):
    unsigned = hand_made({"alg": "none", "typ": "JWT"}, claims())
    assert_rejected(lambda: verifier.verify(unsigned), "algorithm_not_allowed")


def test_alg_none_in_capitals_is_rejected(verifier):
    unsigned = hand_made({"alg": "NONE", "typ": "JWT"}, claims())
    assert_rejected(lambda: verifier.verify(unsigned), "algorithm_not_allowed")


@pytest.mark.parametrize("algorithm", ["HS384", "HS512"])
def test_other_hmac_algorithms_with_the_right_secret_are_rejected(verifier, algorithm):
    assert_rejected(lambda: verifier.verify(token(algorithm=algorithm)), "algorithm_not_allowed")


def test_rs256_header_over_hmac_signature_is_rejected(verifier):
    confused = hs256_by_hand({"alg": "RS256", "typ": "JWT"}, claims(), SECRET.encode())
    assert_rejected(lambda: verifier.verify(confused), "algorithm_not_allowed")


def test_expired_beyond_leeway_is_rejected(verifier):
    now = int(time.time())
    assert_rejected(lambda: verifier.verify(token(iat=now - 600, exp=now - 60)), "expired")


def test_not_before_in_the_future_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(nbf=int(time.time()) + 120)), "not_yet_valid")


def test_issued_in_the_future_is_rejected(verifier):
    now = int(time.time())
    assert_rejected(lambda: verifier.verify(token(iat=now + 600, exp=now + 900)), "not_yet_valid")


def test_unknown_issuer_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(iss="https://evil.example")), "unknown_issuer")


def test_missing_issuer_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(iss=None)), "unknown_issuer")


def test_non_string_issuer_is_rejected(verifier):
    listed = hs256_by_hand({"alg": "HS256", "typ": "JWT"}, claims(iss=[ISSUER.issuer]), SECRET.encode())
    assert_rejected(lambda: verifier.verify(listed), "unknown_issuer")


def test_issuer_of_another_configured_issuer_is_rejected(verifier):
    # Signed with dev's secret but claiming to come from partner: partner's key decides.
    assert_rejected(lambda: verifier.verify(token(iss=PARTNER.issuer)), "bad_signature")


def test_wrong_audience_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(aud="https://other.example")), "wrong_audience")


def test_audience_list_without_the_audience_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(aud=["a", "b"])), "wrong_audience")


def test_missing_exp_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(exp=None)), "missing_claim")


def test_missing_aud_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(aud=None)), "missing_claim")


def test_non_numeric_exp_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(exp="tomorrow")), "malformed_token")


def test_wrong_secret_is_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(OTHER_SECRET)), "bad_signature")


def test_tampered_payload_is_rejected(verifier):
    header, _, signature = token().split(".")
    forged = b64url(json.dumps(claims(sub="admin")).encode())
    assert_rejected(lambda: verifier.verify(f"{header}.{forged}.{signature}"), "bad_signature")


def test_stripped_signature_is_rejected(verifier):
    header, payload, _ = token().split(".")
    assert_rejected(lambda: verifier.verify(f"{header}.{payload}."), "bad_signature")


def test_token_over_16_kib_is_rejected_before_parsing(verifier):
    big = token(padding="x" * (16 * 1024))
    assert len(big) > 16 * 1024
    assert_rejected(lambda: verifier.verify(big), "token_too_large")


def test_garbage_over_16_kib_is_rejected_as_too_large(verifier):
    assert_rejected(lambda: verifier.verify("x" * (16 * 1024 + 1)), "token_too_large")


def test_issuer_max_token_bytes_is_enforced():
    small = dataclasses.replace(ISSUER, max_token_bytes=512)
    verifier = make_verifier(small, PARTNER)
    assert_rejected(lambda: verifier.verify(token(padding="x" * 600)), "token_too_large")


def test_lifetime_above_max_token_lifetime_is_rejected(verifier):
    now = int(time.time())
    assert_rejected(lambda: verifier.verify(token(iat=now, exp=now + 25 * 3600)), "lifetime_too_long")


def test_lifetime_without_iat_counts_from_now(verifier):
    assert_rejected(lambda: verifier.verify(token(iat=None, exp=int(time.time()) + 25 * 3600)), "lifetime_too_long")


def test_lifetime_limit_comes_from_the_issuer():
    verifier = make_verifier(dataclasses.replace(ISSUER, max_token_lifetime=60.0))
    assert_rejected(lambda: verifier.verify(token(exp=int(time.time()) + 120)), "lifetime_too_long")


def test_missing_secret_rejects_tokens(verifier, monkeypatch):
    monkeypatch.delenv("AUTH_TEST_SECRET")
    assert_rejected(lambda: verifier.verify(token()), "issuer_unavailable")


def test_empty_secret_never_verifies_a_token_signed_with_it(monkeypatch):
    monkeypatch.setenv("AUTH_TEST_SECRET", "")
    forged = hs256_by_hand({"alg": "HS256", "typ": "JWT"}, claims(), b"")
    assert_rejected(lambda: make_verifier().verify(forged), "issuer_unavailable")


def test_rejection_discloses_only_the_reason(verifier):
    error = rejection(lambda: verifier.verify(token(OTHER_SECRET)))
    assert error.message == "token rejected: bad_signature"
    assert SECRET not in str(error.headers) and OTHER_SECRET not in error.message


def test_header_token_failures_carry_the_same_reason(verifier):
    assert_rejected(lambda: asyncio.run(verifier.verify_header(f"Bearer {token(aud='x')}")), "wrong_audience")


# ---------------------------------------------------------------------------- validly signed, hostile claims

HS256_HEADER = {"alg": "HS256", "typ": "JWT"}


def signed_payload(payload: bytes) -> str:
    return hs256_over_bytes(HS256_HEADER, payload, SECRET.encode())


def nested(levels: int) -> Any:
    value: Any = "leaf"
    for _ in range(levels):
        value = [value]
    return value


def test_claims_nested_to_the_limit_verify(verifier):
    verified = verifier.verify(token(groups=nested(gateway.auth.MAX_CLAIMS_DEPTH - 1)))
    assert verified.claims["groups"] == nested(gateway.auth.MAX_CLAIMS_DEPTH - 1)


def test_claims_nested_past_the_limit_are_rejected(verifier):
    assert_rejected(lambda: verifier.verify(token(groups=nested(gateway.auth.MAX_CLAIMS_DEPTH))), "claims_too_deep")


@pytest.mark.parametrize(
    "claim",
    [
        {"exp": 10**30},
        {"exp": 1e300},
        {"exp": str(int(time.time()) + 86400)},  # a day: the suite may run long before this test
        {"iat": -(10**30)},
        {"iat": -1},
        {"iat": str(int(time.time()))},
        {"nbf": -(10**30)},
        {"nbf": "0"},
    ],
    ids=repr,
)
def test_a_time_claim_that_is_no_date_is_rejected(verifier, claim):
    assert_rejected(lambda: verifier.verify(token(**claim)), "invalid_time_claim")


def test_a_400_digit_exp_is_rejected(verifier):
    payload = json.dumps(claims(exp=None)).encode()[:-1] + b', "exp": 1' + b"0" * 400 + b"}"
    assert_rejected(lambda: verifier.verify(signed_payload(payload)), "malformed_token")


@pytest.mark.parametrize(
    "extra",
    [b'"n": NaN', b'"n": -Infinity', b'"n": "\\ud800"', b'"n": "\xff"', b'"n": ' + b"[" * 2000 + b"]" * 2000],
    ids=["nan", "infinity", "lone-surrogate", "not-utf8", "2000-deep"],
)
def test_a_payload_that_is_not_strict_json_is_malformed(verifier, extra):
    payload = json.dumps(claims()).encode()[:-1] + b", " + extra + b"}"
    assert_rejected(lambda: verifier.verify(signed_payload(payload)), "malformed_token")


def test_wide_integer_claims_stay_exact(verifier):
    verified = verifier.verify(token(account=12345678901234567890123, balance=-(2**70)))
    assert verified.claims["account"] == 12345678901234567890123
    assert '"account":12345678901234567890123' in verified.claims_json
    assert f'"balance":{-(2**70)}' in verified.claims_json


# ---------------------------------------------------------------------------- cache


def test_verified_token_is_served_from_the_cache(verifier):
    text = token()
    first = verifier.verify(text)
    assert verifier.verify(text) is first


def test_cached_token_is_not_decoded_again(verifier, monkeypatch):
    text = token()
    first = verifier.verify(text)

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached token was decoded again")

    monkeypatch.setattr(gateway.auth.jwt, "decode", no_decoding)
    assert verifier.verify(text) is first


def test_cache_entry_past_exp_is_dropped(monkeypatch):
    verifier = make_verifier(dataclasses.replace(ISSUER, leeway=0.0))
    now = time.time()
    text = token(exp=int(now) + 5)
    first = verifier.verify(text)
    monkeypatch.setattr(gateway.auth.time, "time", lambda: now + 10)
    second = verifier.verify(text)  # verified afresh (PyJWT's clock still says it is valid)
    assert second is not first
    assert second == first


def test_rejected_tokens_are_not_cached(verifier):
    text = token(aud="x")
    assert_rejected(lambda: verifier.verify(text), "wrong_audience")
    assert_rejected(lambda: verifier.verify(text), "wrong_audience")


def test_cache_is_bounded():
    verifier = TokenVerifier([SharedSecretIssuer(ISSUER, SecretStore())], cache_size=1)
    first_text, second_text = token(sub="a"), token(sub="b")
    first = verifier.verify(first_text)
    verifier.verify(second_text)
    assert verifier.verify(first_text) is not first


# ---------------------------------------------------------------------------- rotation


def rotate(path: Path, value: str) -> None:
    path.write_text(value + "\n")
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))


@pytest.fixture
def secret_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("AUTH_TEST_SECRET")
    path = tmp_path / "AUTH_TEST_SECRET"
    path.write_text(SECRET + "\n")
    return path


def test_after_rotation_tokens_signed_with_the_new_secret_verify(secret_file):
    verifier = make_verifier(ISSUER, store=SecretStore(secret_file.parent))
    assert verifier.verify(token(SECRET)).claims["sub"] == "orders-worker"
    rotate(secret_file, OTHER_SECRET)
    assert verifier.verify(token(OTHER_SECRET, sub="after")).claims["sub"] == "after"


def test_after_rotation_tokens_signed_with_the_old_secret_are_rejected(secret_file):
    verifier = make_verifier(ISSUER, store=SecretStore(secret_file.parent))
    rotate(secret_file, OTHER_SECRET)
    assert_rejected(lambda: verifier.verify(token(SECRET)), "bad_signature")


def test_rotation_drops_tokens_cached_under_the_old_secret(secret_file):
    verifier = make_verifier(ISSUER, store=SecretStore(secret_file.parent))
    old = token(SECRET)
    verifier.verify(old)
    rotate(secret_file, OTHER_SECRET)
    assert_rejected(lambda: verifier.verify(old), "bad_signature")


# ---------------------------------------------------------------------------- building and minting


def test_verifier_from_config_knows_every_issuer():
    config = parse_config(
        {
            "name": "t",
            "database": {"url": "postgresql://gateway@localhost/app"},
            "issuers": [
                {"name": i.name, "issuer": i.issuer, "audience": i.audience, "hs256_secret": i.hs256_secret}
                for i in (ISSUER, PARTNER)
            ],
        }
    )
    verifier = TokenVerifier.from_config(config, SecretStore())
    assert verifier.verify(token()).issuer == "dev"
    assert verifier.verify(token(OTHER_SECRET, iss=PARTNER.issuer)).issuer == "partner"


def test_minted_token_verifies_with_subject_claims_and_ttl(verifier):
    before = int(time.time())
    text = mint_hs256_token(ISSUER, SECRET, "reporting", 900, {"tenant": "acme"})
    verified = verifier.verify(text)
    assert verified.claims["sub"] == "reporting"
    assert verified.claims["tenant"] == "acme"
    assert verified.claims["iss"] == ISSUER.issuer and verified.claims["aud"] == ISSUER.audience
    assert before + 900 <= verified.claims["exp"] <= int(time.time()) + 900
    assert verified.claims["exp"] - verified.claims["iat"] == 900


def test_minted_token_is_hs256(verifier):
    assert jwt.get_unverified_header(mint_hs256_token(ISSUER, SECRET, "x", 60))["alg"] == "HS256"

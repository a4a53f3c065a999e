"""OIDC issuers (issue 4): tokens verified with keys from the issuer's JWKS,
served by a real provider on loopback (`oidc_provider.py`) — discovery, caching, rotation,
single-flight refetch, outages — and the attack suite: every forged or invalid token is a
401 with a stable reason, and no URL named by a token is ever fetched.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

import gateway.auth
from gateway.auth import TokenIssuer, TokenVerifier, VerifiedToken, issuer_for
from gateway.config import IssuerConfig
from gateway.errors import GatewayError
from gateway.jwks import JwksError, freshness, parse_jwks
from gateway.secrets import SecretStore
from oidc_provider import AUDIENCE, OidcProvider, ProviderKey, TestIssuer, b64url, hand_made, hs256_by_hand


def issuer_config(issuer: TestIssuer, **overrides: Any) -> IssuerConfig:
    """The gateway's view of a provider's issuer: its signing algorithm allowed, unknown kids
    refetched at once."""
    settings = {
        "name": issuer.name,
        "issuer": issuer.url,
        "audience": AUDIENCE,
        "algorithms": (issuer.signing.algorithm,),
        "jwks_refresh_min_interval": 0.0,
    }
    return IssuerConfig(**{**settings, **overrides})


@dataclasses.dataclass
class Checker:
    """A started TokenVerifier, driven from synchronous tests on its own event loop."""

    verifier: TokenVerifier
    runner: asyncio.Runner
    issuers: dict[str, TokenIssuer]

    def verify(self, token: str) -> VerifiedToken:
        return self.runner.run(self.verifier.verify_header(f"Bearer {token}"))

    def reason(self, token: str) -> str:
        """The stable reason a token is refused with; asserts the 401's shape."""
        with pytest.raises(GatewayError) as raised:
            self.verify(token)
        error = raised.value
        assert (error.status, error.code) == (401, "unauthenticated")
        assert error.headers["WWW-Authenticate"] == f'Bearer error="invalid_token", error_description="{error.detail}"'
        assert error.message == f"token rejected: {error.detail}"
        return str(error.detail)

    def status(self) -> dict[str, str]:
        return self.verifier.issuer_status()


@pytest.fixture
def checker_for() -> Iterator[Callable[..., Checker]]:
    """`checker_for(config, ...)` -> a Checker over those issuers, keys loaded; closed after."""
    with asyncio.Runner() as runner:
        started: list[TokenVerifier] = []

        def make(*configs: IssuerConfig) -> Checker:
            issuers = [issuer_for(config, SecretStore()) for config in configs]
            verifier = TokenVerifier(issuers)
            runner.run(verifier.start())
            started.append(verifier)
            return Checker(verifier, runner, {issuer.config.name: issuer for issuer in issuers})

        yield make
        for verifier in started:
            runner.run(verifier.close())


@pytest.fixture(scope="module")
def provider() -> Iterator[OidcProvider]:
    """Two RS256 issuers, alpha and beta, up for the whole module. A test that rotates keys or
    counts requests adds an issuer of its own (`fresh`); one that needs an outage has a
    provider of its own (`oidc_provider`)."""
    server = OidcProvider()
    server.add_issuer("alpha")
    server.add_issuer("beta")
    yield server.start()
    server.stop()


@pytest.fixture
def fresh(provider: OidcProvider) -> TestIssuer:
    """An issuer of this test's own on the shared provider (ES256: its keys are quick to make)."""
    return provider.add_issuer(f"fresh-{uuid.uuid4().hex[:8]}", "ES256")


@pytest.fixture
def alpha(provider: OidcProvider) -> TestIssuer:
    return provider.issuers["alpha"]


@pytest.fixture
def beta(provider: OidcProvider) -> TestIssuer:
    return provider.issuers["beta"]


@pytest.fixture
def checker(checker_for: Callable[..., Checker], alpha: TestIssuer, beta: TestIssuer) -> Checker:
    return checker_for(issuer_config(alpha), issuer_config(beta))


# ---------------------------------------------------------------------------- valid tokens


def test_token_signed_with_the_issuers_key_verifies(checker, alpha):
    verified = checker.verify(alpha.mint(sub="worker", tenant="acme"))
    assert verified.issuer == "alpha"
    assert (verified.claims["sub"], verified.claims["tenant"]) == ("worker", "acme")
    assert json.loads(verified.claims_json) == verified.claims


def test_keys_come_from_the_discovery_document(checker_for, provider, fresh):
    checker_for(issuer_config(fresh)).verify(fresh.mint())
    assert provider.hits[f"{fresh.name}/.well-known/openid-configuration"] == 1
    assert provider.hits[fresh.jwks_path] == 1


def test_configured_jwks_uri_skips_discovery(checker_for, provider, fresh):
    checker_for(issuer_config(fresh, jwks_uri=fresh.jwks_uri)).verify(fresh.mint())
    assert provider.hits[f"{fresh.name}/.well-known/openid-configuration"] == 0
    assert provider.hits[fresh.jwks_path] == 1


@pytest.mark.parametrize("algorithm", ["RS256", "PS256", "ES256", "EdDSA"])
def test_each_asymmetric_algorithm_verifies(checker_for, provider, algorithm):
    issuer = provider.add_issuer(f"signer-{algorithm.lower()}", algorithm)
    checker = checker_for(issuer_config(issuer))
    assert checker.verify(issuer.mint(sub="x")).claims["sub"] == "x"


def test_several_issuers_verify_side_by_side(checker, alpha, beta):
    assert checker.verify(alpha.mint()).issuer == "alpha"
    assert checker.verify(beta.mint()).issuer == "beta"


def test_issuer_with_a_trailing_slash_is_discovered(checker_for, provider):
    issuer = provider.add_issuer("tenant", "ES256", suffix="/")  # Auth0 writes its issuers so
    checker = checker_for(issuer_config(issuer))
    assert checker.verify(issuer.mint()).claims["iss"].endswith("/tenant/")
    assert provider.hits["tenant/.well-known/openid-configuration"] == 1


def test_token_without_kid_verifies_with_the_only_key(checker, alpha):
    token = jwt.encode(alpha.claims(sub="no-kid"), alpha.signing.private, algorithm="RS256")
    assert checker.verify(token).claims["sub"] == "no-kid"


def test_token_without_kid_is_refused_when_several_keys_could_verify_it(checker_for, fresh):
    fresh.rotate()
    checker = checker_for(issuer_config(fresh))
    token = jwt.encode(fresh.claims(), fresh.signing.private, algorithm="ES256")
    assert checker.reason(token) == "unknown_key"


# ---------------------------------------------------------------------------- the attack suite


def test_alg_none_is_refused(checker, alpha):
    unsigned = hand_made({"alg": "none", "typ": "JWT", "kid": alpha.signing.kid}, alpha.claims())
    assert checker.reason(unsigned) == "algorithm_not_allowed"


@pytest.mark.parametrize("encoding", ["pem", "jwk"])
def test_hs256_keyed_with_the_issuers_public_key_is_refused(checker, alpha, encoding):
    public = alpha.signing.public_pem() if encoding == "pem" else json.dumps(alpha.signing.public_jwk()).encode()
    forged = hs256_by_hand({"alg": "HS256", "typ": "JWT", "kid": alpha.signing.kid}, alpha.claims(sub="admin"), public)
    assert checker.reason(forged) == "algorithm_not_allowed"


def test_expired_token_is_refused(checker, alpha):
    now = int(time.time())
    assert checker.reason(alpha.mint(iat=now - 600, nbf=now - 600, exp=now - 60)) == "expired"


def test_token_not_yet_valid_is_refused(checker, alpha):
    assert checker.reason(alpha.mint(nbf=int(time.time()) + 120)) == "not_yet_valid"


def test_wrong_issuer_is_refused(checker, alpha):
    assert checker.reason(alpha.mint(iss="https://accounts.example.com")) == "unknown_issuer"


def test_issuer_compared_exactly(checker, alpha):
    assert checker.reason(alpha.mint(iss=alpha.url + "/")) == "unknown_issuer"


def test_wrong_audience_is_refused(checker, alpha):
    assert checker.reason(alpha.mint(aud="https://another-service.test")) == "wrong_audience"


def test_missing_exp_is_refused(checker, alpha):
    assert checker.reason(alpha.mint(exp=None)) == "missing_claim"


def test_lifetime_over_the_maximum_is_refused(checker_for, alpha):
    checker = checker_for(issuer_config(alpha, max_token_lifetime=3600.0))
    assert checker.reason(alpha.mint(lifetime=2 * 3600)) == "lifetime_too_long"


def test_unknown_kid_is_refused(checker, alpha):
    assert checker.reason(alpha.mint(headers={"kid": "no-such-key"})) == "unknown_key"


@pytest.mark.parametrize(
    "kid",
    ["../../../etc/passwd", "x' OR '1'='1", "'; DROP TABLE orders; --", "/jwks", "http://127.0.0.1:1/k", "%2e%2e%2f"],
)
def test_kid_with_path_or_sql_characters_is_only_a_lookup(checker, provider, alpha, kid):
    assert checker.reason(alpha.mint(headers={"kid": kid})) == "unknown_key"
    assert all(path.endswith(("/jwks", "/.well-known/openid-configuration")) for path in provider.hits)


def test_kid_that_is_not_a_string_is_malformed(checker, alpha):
    token = hand_made({"alg": "RS256", "kid": 7}, alpha.claims())
    assert checker.reason(token) == "malformed_token"


@pytest.mark.parametrize("header", ["jku", "x5u"])
def test_key_url_in_the_token_is_refused_and_never_fetched(checker, alpha, attacker, header):
    evil = attacker.issuers["attacker"]
    forged = evil.signing.sign(alpha.claims(sub="admin"), {header: evil.jwks_uri})
    assert checker.reason(forged) == "untrusted_key_header"
    genuine_but_pointing_away = alpha.mint(headers={header: evil.jwks_uri})
    assert checker.reason(genuine_but_pointing_away) == "untrusted_key_header"
    assert sum(attacker.hits.values()) == 0


def test_embedded_jwk_is_refused(checker, alpha, attacker):
    evil = attacker.issuers["attacker"].signing
    forged = evil.sign(alpha.claims(sub="admin"), {"jwk": evil.public_jwk()})
    assert checker.reason(forged) == "untrusted_key_header"


def test_embedded_certificate_chain_is_refused(checker, alpha):
    assert checker.reason(alpha.mint(headers={"x5c": ["MIIBIjANBgkq"]})) == "untrusted_key_header"


def test_oversize_token_is_refused(checker, alpha):
    big = alpha.mint(padding="x" * (16 * 1024))
    assert checker.reason(big) == "token_too_large"


def test_tampered_payload_is_refused(checker, alpha):
    header, _, signature = alpha.mint(sub="worker").split(".")
    forged = b64url(json.dumps(alpha.claims(sub="admin")).encode())
    assert checker.reason(f"{header}.{forged}.{signature}") == "bad_signature"


def test_stripped_signature_is_refused(checker, alpha):
    header, payload, _ = alpha.mint().split(".")
    assert checker.reason(f"{header}.{payload}.") == "bad_signature"


def test_token_from_one_issuer_naming_another_is_refused(checker, alpha, beta):
    # Signed with alpha's key, claiming to come from beta: only beta's keys decide.
    assert checker.reason(alpha.mint(iss=beta.url)) == "unknown_key"


def test_token_signed_by_one_issuer_with_anothers_kid_is_refused(checker, alpha, beta):
    forged = alpha.signing.sign(beta.claims(), {"kid": beta.signing.kid})
    assert checker.reason(forged) == "bad_signature"


def test_key_of_another_type_than_the_algorithm_is_refused(checker_for, alpha):
    checker = checker_for(issuer_config(alpha, algorithms=("RS256", "ES256")))
    ec_key = ProviderKey.make("ES256")
    forged = ec_key.sign(alpha.claims(), {"kid": alpha.signing.kid})  # names alpha's RSA key
    assert checker.reason(forged) == "key_algorithm_mismatch"


def test_algorithm_outside_the_issuers_list_is_refused(checker, alpha):
    pss = jwt.encode(alpha.claims(), alpha.signing.private, algorithm="PS256", headers={"kid": alpha.signing.kid})
    assert checker.reason(pss) == "algorithm_not_allowed"


def test_symmetric_key_published_in_the_jwks_is_never_used(checker_for, fresh):
    secret = b"published-for-everyone-to-see-0123456789abcdef"
    fresh.extra_jwks = [{"kty": "oct", "kid": "hmac", "k": b64url(secret), "alg": "HS256"}]
    checker = checker_for(issuer_config(fresh))
    forged = hs256_by_hand({"alg": "HS256", "kid": "hmac"}, fresh.claims(), secret)
    assert checker.reason(forged) == "algorithm_not_allowed"
    assert checker.reason(fresh.signing.sign(fresh.claims(), {"kid": "hmac"})) == "unknown_key"


# ---------------------------------------------------------------------------- keys over time


def test_rotated_key_is_fetched_on_first_use(checker_for, provider, fresh):
    checker = checker_for(issuer_config(fresh))
    checker.verify(fresh.mint())
    fresh.rotate()
    assert checker.verify(fresh.mint(sub="after")).claims["sub"] == "after"
    assert provider.hits[fresh.jwks_path] == 2


def test_burst_of_unknown_kids_causes_one_fetch(checker_for, provider, fresh):
    checker = checker_for(issuer_config(fresh))
    tokens = [fresh.mint(headers={"kid": f"made-up-{uuid.uuid4()}"}) for _ in range(20)]

    async def burst() -> list[Any]:
        calls = (checker.verifier.verify_header(f"Bearer {token}") for token in tokens)
        return await asyncio.gather(*calls, return_exceptions=True)

    results = checker.runner.run(burst())
    assert {error.detail for error in results} == {"unknown_key"}
    assert provider.hits[fresh.jwks_path] == 2  # the start's fetch, and one for the whole burst


def test_unknown_kid_refetch_is_rate_limited(checker_for, provider, fresh):
    checker = checker_for(issuer_config(fresh, jwks_refresh_min_interval=3600.0))
    fresh.rotate()
    assert checker.reason(fresh.mint()) == "unknown_key"
    assert checker.reason(fresh.mint(headers={"kid": "another"})) == "unknown_key"
    assert provider.hits[fresh.jwks_path] == 1


def test_key_gone_from_the_jwks_drops_cached_tokens(checker_for, fresh):
    checker = checker_for(issuer_config(fresh))
    old = fresh.mint()
    checker.verify(old)
    fresh.rotate(retire=True)
    checker.verify(fresh.mint())  # fetches the new set, without the old key
    assert checker.reason(old) == "unknown_key"


@pytest.fixture
def outage(oidc_provider: OidcProvider) -> TestIssuer:
    """An issuer on a provider of this test's own, up until the test stops it."""
    issuer = oidc_provider.add_issuer("flaky", "ES256")
    oidc_provider.start()
    return issuer


def test_cached_token_needs_no_io_and_no_crypto(checker_for, oidc_provider, outage, monkeypatch):
    checker = checker_for(issuer_config(outage))
    token = outage.mint()
    first = checker.verify(token)
    oidc_provider.stop()

    def no_decoding(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a cached token was decoded again")

    monkeypatch.setattr(gateway.auth.jwt, "decode", no_decoding)
    assert checker.verify(token) is first


def test_last_good_keys_are_used_while_the_issuer_is_unreachable(checker_for, oidc_provider, outage):
    checker = checker_for(issuer_config(outage))
    oidc_provider.stop()
    checker.runner.run(checker.issuers["flaky"].refresh())
    assert checker.status() == {"flaky": "stale"}
    assert checker.verify(outage.mint()).issuer == "flaky"


def test_keys_are_not_used_past_jwks_max_stale(checker_for, oidc_provider, outage):
    checker = checker_for(issuer_config(outage, jwks_cache=0.05, jwks_max_stale=0.0))
    oidc_provider.stop()
    time.sleep(0.1)
    assert checker.status() == {"flaky": "keys_not_loaded"}
    assert checker.reason(outage.mint()) == "issuer_unavailable"


def test_issuer_down_at_start_is_reported_and_recovers_on_a_token(checker_for, oidc_provider):
    issuer = oidc_provider.add_issuer("late", "ES256")
    checker = checker_for(issuer_config(issuer))
    assert checker.status() == {"late": "keys_not_loaded"}
    assert checker.reason(issuer.mint()) == "issuer_unavailable"
    oidc_provider.start()
    assert checker.verify(issuer.mint()).issuer == "late"
    assert checker.status() == {"late": "ok"}


def test_discovery_document_naming_another_issuer_loads_no_keys(checker_for, provider, fresh):
    fresh.discovery_overrides = {"issuer": "https://accounts.example.com"}
    assert checker_for(issuer_config(fresh)).status() == {fresh.name: "keys_not_loaded"}
    assert provider.hits[fresh.jwks_path] == 0


def test_discovered_jwks_uri_over_plain_http_off_loopback_is_never_fetched(checker_for, fresh):
    fresh.discovery_overrides = {"jwks_uri": "http://keys.example.com/jwks"}
    assert checker_for(issuer_config(fresh)).status() == {fresh.name: "keys_not_loaded"}


def test_jwks_over_https_is_verified_against_jwks_ca(checker_for, tls_files):
    provider = OidcProvider(tls=(tls_files.server_cert, tls_files.server_key))
    issuer = provider.add_issuer("private-ca", "ES256")
    provider.start()
    try:
        trusting = checker_for(issuer_config(issuer, jwks_ca=str(tls_files.ca)))
        assert trusting.verify(issuer.mint()).issuer == "private-ca"
        assert checker_for(issuer_config(issuer, jwks_ca=str(tls_files.other_ca))).status() == {
            "private-ca": "keys_not_loaded"
        }
    finally:
        provider.stop()


# ---------------------------------------------------------------------------- caching rules and parsing


@pytest.mark.parametrize(
    ("cache_control", "seconds"),
    [
        ("public, max-age=120, must-revalidate", 120.0),  # honoured
        ("max-age=86400", 3600.0),  # bounded by jwks_cache
        ("max-age=5", 30.0),  # never below jwks_refresh_min_interval
        ("no-store", 30.0),
        ("no-cache, max-age=600", 30.0),
        (None, 3600.0),  # silent: jwks_cache
        ("private", 3600.0),
    ],
)
def test_jwks_freshness_follows_cache_control_within_bounds(cache_control, seconds):
    config = IssuerConfig(name="x", issuer="https://x.test", audience="a")
    assert (config.jwks_cache, config.jwks_refresh_min_interval) == (3600.0, 30.0)
    assert freshness(cache_control, config) == seconds


RSA_JWK = ProviderKey.make("RS256").public_jwk()


def rsa_jwk(**extra: Any) -> dict[str, Any]:
    return {**RSA_JWK, **extra}


@pytest.mark.parametrize(
    "jwk",
    [
        {"kty": "oct", "kid": "s", "k": "c2VjcmV0"},
        rsa_jwk(use="enc"),
        rsa_jwk(key_ops=["encrypt"]),
        rsa_jwk(alg="RS384"),
        rsa_jwk(alg="RSA-OAEP"),
        rsa_jwk(kid=42),
        {**rsa_jwk(), "d": "private-exponent"},
        {**ProviderKey.make("ES256").public_jwk(), "crv": "P-384"},
        {"kty": "EC", "crv": "secp256k1", "x": "AA", "y": "AA"},
        {"kty": "RSA", "kid": "broken", "n": "!!", "e": "AQAB"},
        "not an object",
    ],
    ids=["oct", "enc", "encrypt-only", "rs384", "rsa-oaep", "numeric-kid", "private", "wrong-curve", "secp256k1",
         "broken", "string"],
)
def test_jwks_entries_that_must_not_verify_are_skipped(jwk):
    assert parse_jwks(json.dumps({"keys": [jwk]}).encode()) == ()


def test_short_rsa_keys_are_skipped():
    short = RSAAlgorithm.to_jwk(rsa.generate_private_key(65537, 1024).public_key(), as_dict=True)
    assert parse_jwks(json.dumps({"keys": [short]}).encode()) == ()


@pytest.mark.parametrize("algorithm", ["RS256", "ES256", "EdDSA"])
def test_jwks_signing_keys_are_loaded(algorithm):
    key = ProviderKey.make(algorithm)
    (loaded,) = parse_jwks(json.dumps({"keys": [key.public_jwk()]}).encode())
    assert (loaded.kid, loaded.algorithm) == (key.kid, algorithm)
    assert loaded.key == key.private.public_key()


@pytest.mark.parametrize("body", [b"<html>", b"[]", b'{"keys": {}}'])
def test_document_that_is_not_a_jwk_set_is_an_error(body):
    with pytest.raises(JwksError):
        parse_jwks(body)


def test_shared_secret_issuer_reports_a_missing_secret(checker_for, monkeypatch):
    monkeypatch.delenv("OIDC_TEST_SECRET", raising=False)
    config = IssuerConfig(name="dev", issuer="dev-issuer", audience="a", hs256_secret="OIDC_TEST_SECRET")
    assert checker_for(config).status() == {"dev": "secret_missing"}

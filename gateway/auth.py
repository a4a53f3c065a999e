"""Bearer token -> verified claims.

Owns the checks every token must pass, the issuers' key lookup (`TokenIssuer`: a shared
secret here, an OIDC issuer's JWKS in `gateway.jwks`), and a bounded cache of tokens already
verified. It does not decide who a caller is (see `gateway.identity`). Every failure is
`unauthenticated(<stable reason>)`; the details of a failed check never reach the caller.

Verification is synchronous and a cache hit does no I/O and no cryptography; only a token
whose `kid` the issuer's loaded keys do not know awaits one (rate-limited) key fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
from jwt.exceptions import (
    DecodeError,
    ExpiredSignatureError,
    ImmatureSignatureError,
    InvalidAlgorithmError,
    InvalidAudienceError,
    InvalidIssuedAtError,
    InvalidIssuerError,
    InvalidSignatureError,
    MissingRequiredClaimError,
    PyJWTError,
)

from gateway import json_text
from gateway.config import GatewayConfig, IssuerConfig
from gateway.errors import GatewayError, unauthenticated
from gateway.jwks import FetchListener, JwksIssuer, KeyNotFound
from gateway.secrets import MissingSecret, SecretStore

VERIFIED_TOKEN_CACHE_SIZE = 10_000
# Headers that point at a key other than the issuer's own (a URL to fetch, or the key itself).
# Keys come only from the configuration; a token carrying one of these is refused outright.
KEY_REFERENCE_HEADERS = ("jku", "x5u", "jwk", "x5c")
# Issuers nest claims a few levels (Keycloak's resource_access.<client>.roles: 3); deeper is
# no token anyone issues, and the claims reach PostgreSQL whole, as request.jwt.claims.
MAX_CLAIMS_DEPTH = 32
# NumericDate claims: seconds since 1970, up to 9999-12-31T23:59:59Z. A wider number is no
# date, and the lifetime check's arithmetic could not hold it.
TIME_CLAIMS = ("exp", "nbf", "iat")
MAX_NUMERIC_DATE = 253_402_300_799
# Issuer states in which tokens verify (`stale`: the issuer is unreachable, its last good
# keys are still used).
READY_STATES = frozenset({"ok", "stale"})

# PyJWT exception -> the stable reason code callers see.
FAILURE_REASONS: tuple[tuple[type[PyJWTError], str], ...] = (
    (ExpiredSignatureError, "expired"),
    (ImmatureSignatureError, "not_yet_valid"),
    (InvalidIssuedAtError, "issued_in_future"),
    (InvalidAudienceError, "wrong_audience"),
    (InvalidIssuerError, "wrong_issuer"),
    (MissingRequiredClaimError, "missing_claim"),
    (InvalidAlgorithmError, "algorithm_not_allowed"),
    (InvalidSignatureError, "bad_signature"),
    (DecodeError, "malformed_token"),
)


@dataclass(frozen=True)
class VerifiedToken:
    issuer: str  # the configured issuer's name
    claims: dict[str, Any]
    expires_at: float
    claims_json: str  # what row-level security sees as request.jwt.claims


class _StrictPayloadJWT(jwt.PyJWT):
    """PyJWT reading a token's payload as the gateway reads every JSON it is sent
    (`gateway.json_text`): strict UTF-8, no NaN or lone surrogates, integers exact — so the
    claims can always be written back as `request.jwt.claims`. PyJWT documents
    `_decode_payload` as the method for subclasses to override."""

    def _decode_payload(self, decoded: dict[str, Any]) -> dict[str, Any]:
        try:
            payload = json_text.loads(decoded["payload"])
        except json_text.UnreadableJson as error:
            raise DecodeError(f"Invalid payload string: {error}") from None
        if not isinstance(payload, dict):
            raise DecodeError("Invalid payload string: must be a json object")
        return payload


_jwt = _StrictPayloadJWT()


class TokenIssuer(Protocol):
    config: IssuerConfig
    algorithms: list[str]

    def signing_key(self, header: dict[str, Any]) -> Any:
        """The key for a token with this (unverified) header, compared with `==` to see
        whether a cached token's key is still current. No I/O beyond a secret file's stat."""
        ...

    def status(self) -> str:
        """For /readyz: "ok", or why this issuer's tokens cannot be verified now."""
        ...

    async def start(self, on_fetch: FetchListener | None = None) -> None: ...

    async def close(self) -> None: ...


class SharedSecretIssuer:
    """An HS256 issuer whose secret is read by name (re-read when its file changes)."""

    def __init__(self, config: IssuerConfig, secrets: SecretStore) -> None:
        assert config.hs256_secret is not None and config.algorithms is not None
        self.config = config
        self.algorithms = list(config.algorithms)
        self._secrets = secrets
        self._secret_name = config.hs256_secret

    def signing_key(self, header: dict[str, Any]) -> bytes:
        return self._secrets.get(self._secret_name).encode()

    def status(self) -> str:
        try:
            self._secrets.get(self._secret_name)
        except MissingSecret:
            return "secret_missing"
        return "ok"

    async def start(self, on_fetch: FetchListener | None = None) -> None:
        """Nothing to load: the secret is read when a token is checked."""

    async def close(self) -> None:
        """Nothing to release."""


@dataclass(frozen=True)
class _CachedToken:
    """A verified token with the key that verified it: when the issuer's key changes (a
    rotated secret, a key gone from the JWKS), the entry no longer counts and the token is
    verified afresh."""

    verified: VerifiedToken
    issuer: TokenIssuer
    header: dict[str, Any]
    key: Any


class TokenVerifier:
    """Verifies bearer tokens against the configured issuers."""

    def __init__(self, issuers: list[TokenIssuer], cache_size: int = VERIFIED_TOKEN_CACHE_SIZE) -> None:
        self._issuers = issuers
        self._by_iss = {issuer.config.issuer: issuer for issuer in issuers}
        self._cache: OrderedDict[str, _CachedToken] = OrderedDict()
        self._cache_size = cache_size
        # The largest any issuer accepts, checked before the issuer is known; each issuer's
        # own limit is checked once its `iss` is read.
        self.max_token_bytes = max((i.config.max_token_bytes for i in issuers), default=16 * 1024)

    @classmethod
    def from_config(cls, config: GatewayConfig, secrets: SecretStore) -> TokenVerifier:
        return cls([issuer_for(issuer, secrets) for issuer in config.issuers])

    async def start(self, on_fetch: FetchListener | None = None) -> None:
        """Load every OIDC issuer's keys; one that cannot be reached is retried in the background."""
        await asyncio.gather(*(issuer.start(on_fetch) for issuer in self._issuers))

    async def close(self) -> None:
        await asyncio.gather(*(issuer.close() for issuer in self._issuers))

    def issuer_status(self) -> dict[str, str]:
        return {issuer.config.name: issuer.status() for issuer in self._issuers}

    async def verify_header(self, authorization: str | None) -> VerifiedToken:
        """The request path: like `verify`, but a token whose kid the issuer's keys do not know
        waits for one fetch of them (shared with concurrent callers, rate-limited) first."""
        token = bearer_token(authorization)
        try:
            return self._verify(token)
        except KeyNotFound as missing:
            await missing.issuer.refresh_for_unknown_key()
        return self.verify(token)

    def verify(self, token: str) -> VerifiedToken:
        """The claims of a valid token, from the keys loaded now."""
        try:
            return self._verify(token)
        except KeyNotFound as missing:
            raise unauthenticated(missing.reason) from None

    def _verify(self, token: str) -> VerifiedToken:
        # Before any parsing, and before hashing the text for the cache. A token is base64url
        # and dots, so a non-ASCII one is malformed and its length in characters is in bytes.
        if len(token) > self.max_token_bytes:
            raise unauthenticated("token_too_large")
        if not token.isascii():
            raise unauthenticated("malformed_token")
        cached = self._cache.get(token)
        if cached is not None:
            if _still_valid(cached):
                self._cache.move_to_end(token)
                return cached.verified
            del self._cache[token]
        entry = self._verify_uncached(token)
        self._remember(token, entry)
        return entry.verified

    def _remember(self, token: str, entry: _CachedToken) -> None:
        self._cache[token] = entry
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)

    def _verify_uncached(self, token: str) -> _CachedToken:
        try:
            header = jwt.get_unverified_header(token)
            unverified = _jwt.decode(token, options={"verify_signature": False})
        except PyJWTError:
            raise unauthenticated("malformed_token") from None
        if any(name in header for name in KEY_REFERENCE_HEADERS):
            raise unauthenticated("untrusted_key_header")
        issuer = self._by_iss.get(unverified.get("iss")) if isinstance(unverified.get("iss"), str) else None
        if issuer is None:
            raise unauthenticated("unknown_issuer")
        config = issuer.config
        if len(token) > config.max_token_bytes:
            raise unauthenticated("token_too_large")
        if header.get("alg") not in issuer.algorithms:
            raise unauthenticated("algorithm_not_allowed")
        key = _signing_key(issuer, header)
        try:
            claims = _jwt.decode(
                token,
                key=key,
                algorithms=issuer.algorithms,
                audience=config.audience,
                issuer=config.issuer,
                leeway=config.leeway,
                options={"require": ["exp", "iss", "aud"], "strict_aud": False},
            )
        except PyJWTError as error:
            raise unauthenticated(_reason(error)) from None
        _check_claims_shape(claims)
        _check_lifetime(claims, config)
        verified = VerifiedToken(
            issuer=config.name,
            claims=claims,
            expires_at=float(claims["exp"]) + config.leeway,
            claims_json=json_text.dumps(claims),
        )
        return _CachedToken(verified, issuer, header, key)


def bearer_token(authorization: str | None) -> str:
    """The token of an `Authorization: Bearer <token>` header."""
    if not authorization:
        raise unauthenticated("missing_token")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthenticated("not_bearer")
    return token.strip()


def issuer_for(config: IssuerConfig, secrets: SecretStore) -> TokenIssuer:
    """A shared-secret issuer, or an OIDC issuer verifying with its JWKS."""
    return JwksIssuer(config) if config.is_oidc else SharedSecretIssuer(config, secrets)


def _still_valid(cached: _CachedToken) -> bool:
    """Not past exp, and its issuer would still verify it with the same key: a rotated secret
    or a key gone from the JWKS drops it."""
    if cached.verified.expires_at <= time.time():
        return False
    try:
        return _signing_key(cached.issuer, cached.header) == cached.key
    except (GatewayError, KeyNotFound):
        return False


def _signing_key(issuer: TokenIssuer, header: dict[str, Any]) -> Any:
    """The issuer's current key. A secret that cannot be read refuses the token: no key, no
    verification (the cause is the gateway's configuration, which the caller never sees)."""
    try:
        return issuer.signing_key(header)
    except MissingSecret:
        raise unauthenticated("issuer_unavailable") from None


def _check_claims_shape(claims: dict[str, Any]) -> None:
    """Claims nested at most MAX_CLAIMS_DEPTH levels, and each NumericDate a number of seconds
    in range (PyJWT takes a 31-digit `exp` as a date far in the future)."""
    if json_text.nests_deeper_than(claims, MAX_CLAIMS_DEPTH):
        raise unauthenticated("claims_too_deep")
    for name in TIME_CLAIMS:
        if name in claims and not _is_numeric_date(claims[name]):
            raise unauthenticated("invalid_time_claim")


def _is_numeric_date(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= MAX_NUMERIC_DATE


def _check_lifetime(claims: dict[str, Any], config: IssuerConfig) -> None:
    """exp - iat (exp - now without iat) above max_token_lifetime is refused, so a
    leaked long-lived token is refused even though it verifies."""
    issued = claims.get("iat")
    start = float(issued) if isinstance(issued, int | float) and not isinstance(issued, bool) else time.time()
    if float(claims["exp"]) - start > config.max_token_lifetime:
        raise unauthenticated("lifetime_too_long")


def _reason(error: PyJWTError) -> str:
    for kind, reason in FAILURE_REASONS:
        if isinstance(error, kind):
            return reason
    return "invalid_token"


def mint_hs256_token(
    issuer: IssuerConfig, secret: str, subject: str, ttl: float, claims: dict[str, Any] | None = None
) -> str:
    """A token for a shared-secret (dev) issuer, as `gateway token` and `gateway dev` hand out."""
    now = int(time.time())
    payload = {
        "iss": issuer.issuer,
        "aud": issuer.audience,
        "sub": subject,
        "iat": now,
        "exp": now + int(ttl),
        **(claims or {}),
    }
    return jwt.encode(payload, secret, algorithm="HS256")

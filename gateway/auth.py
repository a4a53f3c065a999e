"""Bearer token -> verified claims.

Owns the issuers (key material per issuer), the checks every token must pass, and a
bounded cache of tokens already verified. It does not decide who a caller is (see
`gateway.identity`). Every failure is `unauthenticated(<stable reason>)`; the details of a
failed check never reach the caller.

Issuers implement `TokenIssuer`: a shared-secret (HS256) issuer today; JWKS-backed issuers
plug in by providing `signing_key` for a token header.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import jwt
import orjson
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

from gateway.config import GatewayConfig, IssuerConfig
from gateway.errors import unauthenticated
from gateway.secrets import MissingSecret, SecretStore

HMAC_ALGORITHMS = ("HS256",)
VERIFIED_TOKEN_CACHE_SIZE = 10_000

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


class TokenIssuer(Protocol):
    config: IssuerConfig

    def signing_key(self, header: dict[str, Any]) -> Any: ...

    @property
    def algorithms(self) -> list[str]: ...


class SharedSecretIssuer:
    """An HS256 issuer whose secret is read by name (re-read when its file changes)."""

    def __init__(self, config: IssuerConfig, secrets: SecretStore) -> None:
        assert config.hs256_secret is not None
        self.config = config
        self._secrets = secrets
        self._secret_name = config.hs256_secret

    @property
    def algorithms(self) -> list[str]:
        return list(HMAC_ALGORITHMS)

    def signing_key(self, header: dict[str, Any]) -> bytes:
        return self._secrets.get(self._secret_name).encode()


@dataclass(frozen=True)
class _CachedToken:
    """A verified token with the key that verified it: when the issuer's key changes (a
    rotated secret), the entry no longer counts and the token is verified afresh."""

    verified: VerifiedToken
    issuer: TokenIssuer
    header: dict[str, Any]
    key: Any


class TokenVerifier:
    """Verifies bearer tokens against the configured issuers."""

    def __init__(self, issuers: list[TokenIssuer], cache_size: int = VERIFIED_TOKEN_CACHE_SIZE) -> None:
        self._by_iss = {issuer.config.issuer: issuer for issuer in issuers}
        self._cache: OrderedDict[str, _CachedToken] = OrderedDict()
        self._cache_size = cache_size
        # The largest any issuer accepts, checked before the issuer is known; each issuer's
        # own limit is checked once its `iss` is read.
        self.max_token_bytes = max((i.config.max_token_bytes for i in issuers), default=16 * 1024)

    @classmethod
    def from_config(cls, config: GatewayConfig, secrets: SecretStore) -> TokenVerifier:
        return cls([SharedSecretIssuer(issuer, secrets) for issuer in config.issuers])

    def verify_header(self, authorization: str | None) -> VerifiedToken:
        if not authorization:
            raise unauthenticated("missing_token")
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise unauthenticated("not_bearer")
        return self.verify(token.strip())

    def verify(self, token: str) -> VerifiedToken:
        # Before any parsing, and before hashing the text for the cache. A token is base64url
        # and dots, so a non-ASCII one is malformed and its length in characters is in bytes.
        if len(token) > self.max_token_bytes:
            raise unauthenticated("token_too_large")
        if not token.isascii():
            raise unauthenticated("malformed_token")
        cached = self._cache.get(token)
        if cached is not None:
            if cached.verified.expires_at > time.time() and _signing_key(cached.issuer, cached.header) == cached.key:
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
            unverified = jwt.decode(token, options={"verify_signature": False})
        except PyJWTError:
            raise unauthenticated("malformed_token") from None
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
            claims = jwt.decode(
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
        _check_lifetime(claims, config)
        verified = VerifiedToken(
            issuer=config.name,
            claims=claims,
            expires_at=float(claims["exp"]) + config.leeway,
            claims_json=orjson.dumps(claims).decode(),
        )
        return _CachedToken(verified, issuer, header, key)


def _signing_key(issuer: TokenIssuer, header: dict[str, Any]) -> Any:
    """The issuer's current key. A secret that cannot be read refuses the token: no key, no
    verification (the cause is the gateway's configuration, which the caller never sees)."""
    try:
        return issuer.signing_key(header)
    except MissingSecret:
        raise unauthenticated("issuer_unavailable") from None


def _check_lifetime(claims: dict[str, Any], config: IssuerConfig) -> None:
    """SPEC §2: exp - iat (exp - now without iat) above max_token_lifetime is refused, so a
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

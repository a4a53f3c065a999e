"""OIDC issuers' signing keys: where they come from, how long they are kept, when they are
fetched again.

Keys come only from the issuer's own JWKS — at the configured `jwks_uri`, or the one its
discovery document names — never from a URL or a key in a token. A fetched set is fresh for
its `Cache-Control: max-age`, bounded by `jwks_refresh_min_interval` and `jwks_cache`; a
background task fetches it again when that runs out, and retries with backoff while the
issuer cannot be reached, using the last good keys for up to `jwks_max_stale` more. An
unknown `kid` may fetch once more (single-flight, rate-limited). Checking tokens is
`gateway.auth`'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
from jwt import PyJWK
from jwt.exceptions import PyJWTError

from gateway.config import IssuerConfig, is_https_or_loopback
from gateway.errors import unauthenticated

logger = logging.getLogger("gateway")

DISCOVERY_PATH = "/.well-known/openid-configuration"
MAX_DOCUMENT_BYTES = 512 * 1024  # a discovery document or JWKS larger than this is refused
MIN_RSA_BITS = 2048
# Seconds between background fetches at the least; after a failed fetch the delay doubles,
# up to jwks_refresh_min_interval.
RETRY_DELAY = 1.0
MAX_AGE = re.compile(r"(?:^|[,\s])max-age\s*=\s*\"?(\d+)", re.IGNORECASE)
NO_CACHING = re.compile(r"(?:^|[,\s])no-(?:cache|store)\b", re.IGNORECASE)

# The keys each algorithm verifies with: the JWK's kty, and its crv where the algorithm fixes one.
ALGORITHM_KEYS = {
    "RS256": ("RSA",),
    "PS256": ("RSA",),
    "ES256": ("EC:P-256",),
    "EdDSA": ("OKP:Ed25519", "OKP:Ed448"),
}
# How PyJWT is asked to read a key of each kind (RS256 and PS256 read RSA keys alike). Kinds
# not listed — above all "oct", a symmetric key, which in a public document would let anyone
# sign — are never loaded.
KEY_READERS = {"RSA": "RS256", "EC:P-256": "ES256", "OKP:Ed25519": "EdDSA", "OKP:Ed448": "EdDSA"}


# Told of every fetch of an issuer's keys: (issuer name, "ok" or "failed"). Metrics count them.
FetchListener = Callable[[str, str], None]


class JwksError(Exception):
    """A discovery document or JWKS that cannot be used; logged, never shown to callers."""


class KeyNotFound(Exception):
    """No loaded key for a token's header. A fresh fetch may find one (a key the issuer has
    just added); `reason` is the caller's answer if it does not."""

    def __init__(self, issuer: JwksIssuer, reason: str) -> None:
        super().__init__(reason)
        self.issuer = issuer
        self.reason = reason


@dataclass(frozen=True)
class SigningKey:
    kid: str | None
    kind: str  # "RSA", "EC:P-256", "OKP:Ed25519": which algorithms it can verify
    algorithm: str | None  # the JWK's own "alg", when it names one
    key: Any  # a cryptography public key

    def verifies(self, algorithm: str) -> bool:
        return self.kind in ALGORITHM_KEYS.get(algorithm, ()) and self.algorithm in (None, algorithm)


@dataclass(frozen=True)
class KeySet:
    by_kid: dict[str, SigningKey]
    keys: tuple[SigningKey, ...]
    fresh_until: float  # time.monotonic(): fetched again after this
    usable_until: float  # and not used at all after this, when fetching keeps failing

    def find(self, kid: str | None, algorithm: str) -> SigningKey | None:
        if kid is not None:
            return self.by_kid.get(kid)
        # Without a kid only an unambiguous key will do: trying each would verify against
        # keys the issuer never meant for this token.
        fitting = [key for key in self.keys if key.verifies(algorithm)]
        return fitting[0] if len(fitting) == 1 else None


def parse_jwks(body: bytes) -> tuple[SigningKey, ...]:
    """The verification keys of a JWK set, skipping what cannot or must not verify tokens."""
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise JwksError(f"not JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksError('not a JWK set (no "keys" array)')
    return tuple(key for jwk in document["keys"] if (key := _signing_key(jwk)) is not None)


def _signing_key(jwk: Any) -> SigningKey | None:
    """A public signing key, or None for an encryption key, a private key (an issuer that
    publishes one is compromised), an unknown kind or curve, or a short RSA key."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or "d" in jwk:
        return None
    operations = jwk.get("key_ops", ["verify"])
    if not isinstance(operations, list) or "verify" not in operations:
        return None
    kind = f"{jwk.get('kty')}:{jwk['crv']}" if "crv" in jwk else str(jwk.get("kty"))
    kid, algorithm = jwk.get("kid"), jwk.get("alg")
    if kind not in KEY_READERS or not isinstance(kid, str | None) or algorithm not in (None, *ALGORITHM_KEYS):
        return None
    try:
        key = PyJWK(jwk, algorithm=KEY_READERS[kind]).key
    except (PyJWTError, ValueError, TypeError, KeyError):
        return None
    if kind == "RSA" and key.key_size < MIN_RSA_BITS:
        return None
    return SigningKey(kid, kind, algorithm, key)


def freshness(cache_control: str | None, config: IssuerConfig) -> float:
    """Seconds a fetched JWKS stays fresh: its max-age (0 for no-cache or no-store), at least
    jwks_refresh_min_interval and at most jwks_cache; jwks_cache when the header says nothing."""
    header = cache_control or ""
    if NO_CACHING.search(header):
        max_age = 0.0
    elif match := MAX_AGE.search(header):
        max_age = float(match.group(1))
    else:
        return config.jwks_cache
    return min(max(max_age, config.jwks_refresh_min_interval), config.jwks_cache)


class JwksIssuer:
    """An OIDC issuer: verifies with the keys of its JWKS, fetched and kept here.

    `signing_key` is synchronous and does no I/O (it runs for every token, cached or not);
    fetching happens in `start`, in a background task and in `refresh_for_unknown_key`.
    """

    def __init__(self, config: IssuerConfig) -> None:
        assert config.algorithms is not None
        self.config = config
        self.algorithms = list(config.algorithms)
        self._keys: KeySet | None = None
        self._client: httpx.AsyncClient | None = None
        self._fetch: asyncio.Task[None] | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._last_fetch = -math.inf  # time.monotonic() when the last fetch began
        self._failures = 0  # fetches failed in a row
        self._on_fetch: FetchListener | None = None

    # ------------------------------------------------------------------ the hot path

    def signing_key(self, header: dict[str, Any]) -> Any:
        keys = self._keys
        if keys is None or time.monotonic() > keys.usable_until:
            raise KeyNotFound(self, "issuer_unavailable")
        found = keys.find(header.get("kid"), header["alg"])
        if found is None:
            raise KeyNotFound(self, "unknown_key")
        if not found.verifies(header["alg"]):
            raise unauthenticated("key_algorithm_mismatch")
        return found.key

    def status(self) -> str:
        keys = self._keys
        if keys is None or time.monotonic() > keys.usable_until:
            return "keys_not_loaded"
        return "stale" if self._failures else "ok"

    # ------------------------------------------------------------------ fetching

    async def start(self, on_fetch: FetchListener | None = None) -> None:
        """Fetch the keys once, then keep them fresh in the background. An issuer that cannot
        be reached does not stop the gateway: it is retried, and `/readyz` reports it."""
        self._on_fetch = on_fetch
        await self.refresh()
        self._refresher = asyncio.get_running_loop().create_task(self._keep_fresh())

    async def close(self) -> None:
        for task in (self._refresher, self._fetch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._client is not None:
            await self._client.aclose()

    async def refresh(self) -> None:
        """Fetch the keys now, or wait for the fetch already under way: one fetch, however
        many ask. Shielded: a caller that gives up does not cancel it for the others."""
        if self._fetch is None:
            self._fetch = asyncio.get_running_loop().create_task(self._fetch_and_keep())
        await asyncio.shield(self._fetch)

    async def refresh_for_unknown_key(self) -> None:
        """An unknown kid may be a key the issuer has just added. Fetch for it — but not when
        the last fetch began less than jwks_refresh_min_interval ago, so a stream of made-up
        kids costs the issuer at most one request per interval."""
        if self._fetch is None and time.monotonic() - self._last_fetch < self.config.jwks_refresh_min_interval:
            return
        await self.refresh()

    async def _keep_fresh(self) -> None:
        while True:
            wait = self._next_fetch_at() - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            else:
                await self.refresh()

    def _next_fetch_at(self) -> float:
        if self._keys is not None and not self._failures:
            return max(self._keys.fresh_until, self._last_fetch + RETRY_DELAY)
        backoff = RETRY_DELAY * 2 ** min(max(self._failures - 1, 0), 16)
        return self._last_fetch + min(backoff, max(self.config.jwks_refresh_min_interval, RETRY_DELAY))

    async def _fetch_and_keep(self) -> None:
        self._last_fetch = time.monotonic()
        try:
            self._keys = await self._fetch_keys()
            self._failures = 0
            outcome = "ok"
        except (httpx.HTTPError, JwksError, OSError) as error:  # OSError: an unreadable jwks_ca
            self._failures += 1
            outcome = "failed"
            kept = "no keys loaded" if self.status() == "keys_not_loaded" else "keeping the last good keys"
            reason = str(error) or type(error).__name__
            logger.warning('issuer "%s": cannot fetch its keys (%s); %s', self.config.name, reason, kept)
        finally:
            self._fetch = None
        if self._on_fetch is not None:
            self._on_fetch(self.config.name, outcome)

    async def _fetch_keys(self) -> KeySet:
        jwks_uri = self.config.jwks_uri or await self._discover()
        body, headers = await self._get(jwks_uri)
        keys = parse_jwks(body)
        if not keys:
            raise JwksError(f"{jwks_uri} holds no usable signing key")
        now = time.monotonic()
        fresh_until = now + freshness(headers.get("cache-control"), self.config)
        return KeySet(
            by_kid={key.kid: key for key in keys if key.kid is not None},
            keys=keys,
            fresh_until=fresh_until,
            usable_until=fresh_until + self.config.jwks_max_stale,
        )

    async def _discover(self) -> str:
        """The jwks_uri from `{issuer}/.well-known/openid-configuration` (OIDC Discovery §4:
        a trailing slash of the issuer is dropped first; the document must name the issuer)."""
        body, _ = await self._get(self.config.issuer.rstrip("/") + DISCOVERY_PATH)
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as error:
            raise JwksError(f"discovery document is not JSON: {error}") from None
        if not isinstance(document, dict) or document.get("issuer") != self.config.issuer:
            raise JwksError("the discovery document names another issuer")
        jwks_uri = document.get("jwks_uri")
        if not isinstance(jwks_uri, str) or not is_https_or_loopback(jwks_uri):
            raise JwksError("the discovery document's jwks_uri is not an https:// URL")
        return jwks_uri

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.config.jwks_fetch_timeout,
                verify=_tls_context(self.config.jwks_ca),
                follow_redirects=False,  # a redirect could lead anywhere, plain http included
            )
        return self._client

    async def _get(self, url: str) -> tuple[bytes, httpx.Headers]:
        async with self._http().stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise JwksError(f"{url} answered {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise JwksError(f"{url} sent more than {MAX_DOCUMENT_BYTES} bytes")
            return bytes(body), response.headers


@functools.cache
def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    """Made once per CA bundle (loading one takes tens of milliseconds): the configured one,
    else httpx's default (SSL_CERT_FILE or SSL_CERT_DIR when set, else certifi's)."""
    return ssl.create_default_context(cafile=ca_file) if ca_file else httpx.create_ssl_context()

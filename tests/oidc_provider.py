"""A real OIDC provider on loopback, for the tests: a Starlette app served by uvicorn in a
thread on 127.0.0.1, hosting several issuers side by side (`/google`, `/github`, ...), each
with a discovery document and a JWKS, signing keys made at test time with `cryptography`,
key rotation, outages (stop and start on the same port), and a count of every request by
path — so a test can prove that a URL was never fetched.

Also here: the claims of real-world tokens (Google, GitHub Actions, Okta, Auth0,
Kubernetes) and forgeries PyJWT refuses to make (`alg: none`, HMAC keyed with a public key).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import itertools
import json
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import uvicorn
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from gateway.embedded import free_loopback_port

AUDIENCE = "https://gateway.test"
_serials = itertools.count(1)


# ---------------------------------------------------------------------------- keys


@functools.cache
def _private_key(algorithm: str, serial: int) -> Any:
    """Made once per (algorithm, serial) for the whole session: RSA keys take a while."""
    if algorithm in ("RS256", "PS256"):
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(algorithm)


_JWK_WRITERS = {"RS256": RSAAlgorithm, "PS256": RSAAlgorithm, "ES256": ECAlgorithm, "EdDSA": OKPAlgorithm}


@dataclass(frozen=True)
class ProviderKey:
    kid: str
    algorithm: str
    private: Any

    @classmethod
    def make(cls, algorithm: str) -> ProviderKey:
        serial = next(_serials)
        return cls(f"key-{serial}-{algorithm.lower()}", algorithm, _private_key(algorithm, serial))

    def public_jwk(self) -> dict[str, Any]:
        jwk = _JWK_WRITERS[self.algorithm].to_jwk(self.private.public_key(), as_dict=True)
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.algorithm}

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, payload: dict[str, Any], headers: dict[str, Any] | None = None) -> str:
        return jwt.encode(payload, self.private, algorithm=self.algorithm, headers={"kid": self.kid, **(headers or {})})


# ---------------------------------------------------------------------------- one issuer


@dataclass
class TestIssuer:
    """One issuer the provider hosts at `{base}/{name}` (plus `suffix`, e.g. Auth0's "/")."""

    __test__ = False  # not a test class, whatever its name

    name: str
    url: str
    keys: list[ProviderKey]
    cache_control: str | None = "public, max-age=3600"
    discovery_overrides: dict[str, Any] = field(default_factory=dict)
    extra_jwks: list[dict[str, Any]] = field(default_factory=list)  # published as they are

    @property
    def signing(self) -> ProviderKey:
        return self.keys[-1]

    @property
    def jwks_path(self) -> str:
        return f"{self.name}/jwks"

    @property
    def jwks_uri(self) -> str:
        return f"{self.url.rstrip('/')}/jwks"

    def rotate(self, algorithm: str | None = None, *, retire: bool = False) -> ProviderKey:
        """A new signing key, published next to the old one (as issuers do), or in its place."""
        key = ProviderKey.make(algorithm or self.signing.algorithm)
        self.keys = [key] if retire else [*self.keys, key]
        return key

    def claims(self, lifetime: int = 300, **claims: Any) -> dict[str, Any]:
        now = int(time.time())
        standard = {"iss": self.url, "aud": AUDIENCE, "iat": now, "nbf": now, "exp": now + lifetime}
        return {key: value for key, value in {**standard, **claims}.items() if value is not None}

    def mint(self, *, key: ProviderKey | None = None, headers: dict[str, Any] | None = None, **claims: Any) -> str:
        """A valid token: standard claims (iss, aud, iat, nbf, exp in 5 minutes) plus `claims`
        (a claim given as None is left out), signed with the current key."""
        return (key or self.signing).sign(self.claims(**claims), headers)

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": self.jwks_uri,
            "id_token_signing_alg_values_supported": sorted({key.algorithm for key in self.keys}),
            **self.discovery_overrides,
        }

    def jwks(self) -> dict[str, Any]:
        return {"keys": [*(key.public_jwk() for key in self.keys), *self.extra_jwks]}


# ---------------------------------------------------------------------------- the server


class OidcProvider:
    """The issuers, served on one loopback port; `start()`/`stop()` may be called again (an
    outage), and `hits` counts requests by path (without the leading slash)."""

    def __init__(self, tls: tuple[Path, Path] | None = None) -> None:
        """`tls`: a certificate for "localhost" and its key, to serve https://localhost:PORT."""
        self.port = free_loopback_port()
        self.tls = tls
        self.base_url = f"https://localhost:{self.port}" if tls else f"http://127.0.0.1:{self.port}"
        self.issuers: dict[str, TestIssuer] = {}
        self.hits: Counter[str] = Counter()
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None
        self.app = Starlette(routes=[Route("/{path:path}", self._answer)])

    def add_issuer(self, name: str, algorithm: str = "RS256", suffix: str = "") -> TestIssuer:
        issuer = TestIssuer(name, f"{self.base_url}/{name}{suffix}", [ProviderKey.make(algorithm)])
        self.issuers[name] = issuer
        return issuer

    async def _answer(self, request: Request) -> Response:
        path = request.path_params["path"]
        self.hits[path] += 1
        name, _, rest = path.partition("/")
        issuer = self.issuers.get(name)
        if issuer is None:
            return Response(status_code=404)
        if rest == ".well-known/openid-configuration":
            return JSONResponse(issuer.discovery())
        if rest == "jwks":
            headers = {"Cache-Control": issuer.cache_control} if issuer.cache_control else {}
            return JSONResponse(issuer.jwks(), headers=headers)
        return Response(status_code=404)

    def start(self) -> OidcProvider:
        certificate, key = self.tls or (None, None)
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off", loop="asyncio",
            ssl_certfile=certificate, ssl_keyfile=key,
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, name=f"oidc-provider-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 10
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the OIDC provider did not start on port {self.port}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = self._server.force_exit = True
            self._thread.join(10)
            self._server = self._thread = None


# ---------------------------------------------------------------------------- real-world token shapes


def google_id_token_claims(email: str, **extra: Any) -> dict[str, Any]:
    """A Google service account's ID token, as the metadata server issues it in a Cloud
    Function or Cloud Run (`format=full` omitted): `azp` and `sub` are the account's id."""
    account_id = str(int(hashlib.sha256(email.encode()).hexdigest()[:15], 16))
    return {"azp": account_id, "sub": account_id, "email": email, "email_verified": True, **extra}


def github_actions_claims(repository: str, ref: str, workflow: str, **extra: Any) -> dict[str, Any]:
    """A GitHub Actions OIDC token (`core.getIDToken(audience)`) for a push to `ref`."""
    owner = repository.split("/")[0]
    return {
        "jti": str(uuid.uuid4()),
        "sub": f"repo:{repository}:ref:{ref}",
        "ref": ref,
        "ref_type": "branch",
        "sha": hashlib.sha1(repository.encode()).hexdigest(),
        "repository": repository,
        "repository_owner": owner,
        "repository_visibility": "private",
        "actor": "octocat",
        "workflow": "migrate",
        "event_name": "push",
        "job_workflow_ref": f"{repository}/.github/workflows/{workflow}@{ref}",
        "runner_environment": "github-hosted",
        "run_id": "8123456789",
        "run_attempt": "1",
        **extra,
    }


def okta_access_token_claims(client_id: str, scopes: list[str], **extra: Any) -> dict[str, Any]:
    """An Okta custom authorization server's access token for the client-credentials flow."""
    now = int(time.time())
    return {"ver": 1, "jti": f"AT.{uuid.uuid4().hex}", "cid": client_id, "sub": client_id, "scp": scopes,
            "auth_time": now, **extra}


def auth0_access_token_claims(client_id: str, permissions: list[str], **extra: Any) -> dict[str, Any]:
    """An Auth0 machine-to-machine access token (RBAC on: `permissions`; `scope` is one string)."""
    return {"sub": f"{client_id}@clients", "azp": client_id, "gty": "client-credentials",
            "scope": " ".join(permissions), "permissions": permissions, **extra}


def kubernetes_service_account_claims(namespace: str, account: str, **extra: Any) -> dict[str, Any]:
    """A projected Kubernetes service-account token (`serviceAccountToken` with an audience)."""
    pod = f"{account}-7d9f8b6c5-x2k4q"
    return {
        "jti": str(uuid.uuid4()),
        "sub": f"system:serviceaccount:{namespace}:{account}",
        "kubernetes.io": {
            "namespace": namespace,
            "node": {"name": "node-a", "uid": str(uuid.uuid4())},
            "pod": {"name": pod, "uid": str(uuid.uuid4())},
            "serviceaccount": {"name": account, "uid": str(uuid.uuid4())},
        },
        **extra,
    }


# ---------------------------------------------------------------------------- forgeries


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """Any header, payload and signature, as an attacker would write them."""
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{b64url(signature)}"


def hs256_by_hand(header: dict[str, Any], payload: dict[str, Any], secret: bytes) -> str:
    """HMAC-SHA256 over header and payload with any bytes as the key, a public key included."""
    return hs256_over_bytes(header, json.dumps(payload).encode(), secret)


def hs256_over_bytes(header: dict[str, Any], payload: bytes, secret: bytes) -> str:
    """A validly signed token whose payload is any bytes: not JSON, not UTF-8, NaN, 2,000
    levels deep."""
    signing_input = f"{b64url(json.dumps(header).encode())}.{b64url(payload)}"
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"

"""Token providers: callables returning a bearer token, so a caller stores no credential.

Owns reading a token from the environment or from a file a platform rotates, fetching one
from the GCP metadata server or GitHub Actions' OIDC endpoint, and caching fetched tokens
until shortly before they expire. Any other callable returning a token works in their place
(an async one too, for `AsyncGatewayClient`). Providers never show a token in their repr.
"""

from __future__ import annotations

import base64
import binascii
import os
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from gateway_client import _wire
from gateway_client._errors import TokenError

TokenProvider = Callable[[], str | Awaitable[str]]

FETCH_TIMEOUT = 10.0  # seconds for one token request
REFRESH_MARGIN = 60.0  # a fetched token is replaced this long before its exp
GCP_METADATA_HOST = "metadata.google.internal"
GCP_IDENTITY_PATH = "/computeMetadata/v1/instance/service-accounts/default/identity"


class StaticToken:
    """One fixed token (a script, a test)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __call__(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticToken(...)"


class EnvToken:
    """The token in an environment variable, read at every call (so a new value is used)."""

    def __init__(self, name: str = "GATEWAY_TOKEN") -> None:
        self.name = name

    def __call__(self) -> str:
        token = os.environ.get(self.name, "").strip()
        if not token:
            raise TokenError(f"environment variable {self.name} is not set")
        return token

    def __repr__(self) -> str:
        return f"EnvToken({self.name!r})"


class FileToken:
    """The token in a file, re-read when the file changes: the Kubernetes projected
    service-account token, which the kubelet rotates by swapping a symlink."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._seen: tuple[tuple[int, int, int], str] | None = None

    def __call__(self) -> str:
        try:
            stat = self.path.stat()  # follows the symlink: a swapped target is a new inode
            version = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if self._seen is None or self._seen[0] != version:
                self._seen = (version, self.path.read_text().strip())
        except OSError as error:
            raise TokenError(f"cannot read the token file {self.path}: {error.strerror}") from None
        return self._seen[1]

    def __repr__(self) -> str:
        return f"FileToken({str(self.path)!r})"


def token_expiry(token: str) -> float | None:
    """The `exp` of a JWT, read without verifying it (only to know when to fetch anew)."""
    try:
        payload = token.split(".")[1]
        claims = _wire.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, binascii.Error):
        return None
    expiry = claims.get("exp") if isinstance(claims, dict) else None
    return float(expiry) if isinstance(expiry, int | float) else None


class FetchedToken:
    """A token fetched over HTTP and kept until `REFRESH_MARGIN` before its `exp` (a token
    whose exp cannot be read is fetched for every call). Subclasses implement `fetch`."""

    def __init__(self) -> None:
        self._token: str | None = None
        self._refresh_at = 0.0
        self._lock = threading.Lock()  # one fetch at a time when threads share the client

    def cached(self) -> str | None:
        """The kept token while it is fresh, without any I/O."""
        return self._token if time.time() < self._refresh_at else None

    def __call__(self) -> str:
        with self._lock:
            token = self.cached()
            if token is None:
                token = self.fetch()
                self._token, self._refresh_at = token, (token_expiry(token) or 0.0) - REFRESH_MARGIN
            return token

    def fetch(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}(...)"


def _answer(response: httpx.Response, source: str) -> httpx.Response:
    if response.status_code != 200:
        raise TokenError(f"{source} answered HTTP {response.status_code}")
    return response


class GcpIdentityToken(FetchedToken):
    """An identity token for `audience` (the gateway's URL, as the gateway's issuer expects)
    from the GCP metadata server: the runtime service account of a Cloud Function, Cloud Run
    service or GCE VM. `GCE_METADATA_HOST` points it at an emulator, as in Google's libraries."""

    def __init__(self, audience: str, metadata_url: str | None = None) -> None:
        super().__init__()
        self.audience = audience
        host = os.environ.get("GCE_METADATA_HOST", GCP_METADATA_HOST)
        self.metadata_url = metadata_url or f"http://{host}{GCP_IDENTITY_PATH}"

    def fetch(self) -> str:
        # No proxy: the metadata server is only reachable directly (and must never be proxied).
        response = httpx.get(
            self.metadata_url,
            params={"audience": self.audience, "format": "full"},
            headers={"Metadata-Flavor": "Google"},
            timeout=FETCH_TIMEOUT,
            trust_env=False,
        )
        return _answer(response, "the GCP metadata server").text.strip()


class GithubActionsToken(FetchedToken):
    """A GitHub Actions OIDC token for `audience`, from the job's token endpoint (the job needs
    `permissions: id-token: write`, which sets ACTIONS_ID_TOKEN_REQUEST_URL and _TOKEN)."""

    def __init__(self, audience: str | None = None) -> None:
        super().__init__()
        self.audience = audience

    def fetch(self) -> str:
        url = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL")
        request_token = os.environ.get("ACTIONS_ID_TOKEN_REQUEST_TOKEN")
        if not url or not request_token:
            raise TokenError("ACTIONS_ID_TOKEN_REQUEST_URL/_TOKEN are not set: the job needs id-token: write")
        if self.audience:
            # The URL carries ?api-version=...: add to its query (httpx's params= would replace it).
            url = str(httpx.URL(url).copy_merge_params({"audience": self.audience}))
        response = httpx.get(
            url,
            headers={"Authorization": f"Bearer {request_token}"},
            timeout=FETCH_TIMEOUT,
        )
        try:
            value = _wire.loads(_answer(response, "the Actions token endpoint").content)["value"]
        except (ValueError, KeyError, TypeError):
            value = None
        if not isinstance(value, str):
            raise TokenError('the Actions token endpoint answered without a "value"')
        return value

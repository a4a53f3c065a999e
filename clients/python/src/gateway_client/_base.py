"""What `GatewayClient` and `AsyncGatewayClient` share: their settings, and how a call and
a token become an HTTP request.
"""

from __future__ import annotations

from typing import Any

import httpx

from gateway_client import _wire
from gateway_client._calls import JSON, Call
from gateway_client._retry import RetryPolicy

USER_AGENT = "edge-sql-gateway-client"
DEFAULT_TIMEOUT = 30.0  # seconds: connect, and each read of the answer
DEFAULT_RETRIES = 2
DEFAULT_MAX_RETRY_WAIT = 10.0  # seconds of waiting, summed over one call's retries


class ClientBase:
    _http: httpx.Client | httpx.AsyncClient

    def __init__(self, url: str, token_provider: Any, *, timeout: float, retries: int, max_retry_wait: float) -> None:
        self.url = url.rstrip("/")
        self.token_provider = token_provider
        self.timeout = timeout
        self.retry_policy = RetryPolicy(retries, max_retry_wait)

    def _http_options(self) -> dict[str, Any]:
        return {"base_url": self.url, "timeout": self.timeout, "headers": {"User-Agent": USER_AGENT}}

    def _request(self, call: Call[Any], token: str) -> httpx.Request:
        headers = {"Authorization": f"Bearer {token}", "Accept": call.accept}
        if call.body is None:
            return self._http.build_request(call.method, call.path, headers=headers)
        content = _wire.dumps(call.body)
        return self._http.build_request(
            call.method, call.path, content=content, headers={**headers, "Content-Type": JSON}
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r}, token_provider={self.token_provider!r})"

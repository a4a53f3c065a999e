"""Loopback stand-ins for what the Python client talks to besides the gateway: the GCP
metadata server, GitHub Actions' OIDC token endpoint, and a front that answers chosen
failures before passing requests on to the gateway. Each is an `http.server` on 127.0.0.1
in a thread, recording every request it answers.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import orjson

from gateway_client._tokens import GCP_IDENTITY_PATH

ACTIONS_TOKEN_PATH = "/_apis/pipelines/workflows/1/idtoken"


@dataclass(frozen=True)
class Seen:
    method: str
    target: str  # path and query, as sent
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # lower-case names
    body: bytes


Reply = tuple[int, dict[str, str], bytes]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        url = urlsplit(self.path)
        seen = Seen(self.command, self.path, url.path, dict(parse_qsl(url.query)),
                    {name.lower(): value for name, value in self.headers.items()}, body)
        self.server.stand_in.seen.append(seen)
        status, headers, content = self.server.stand_in.answer(seen)
        self.send_response(status)
        for name, value in {**headers, "Content-Length": str(len(content))}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(content)

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:  # quiet: pytest shows failures
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    stand_in: LoopbackServer


class LoopbackServer:
    """`answer(seen) -> (status, headers, body)` served on a free loopback port until `stop()`."""

    def __init__(self, answer: Callable[[Seen], Reply]) -> None:
        self.answer = answer
        self.seen: list[Seen] = []
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.stand_in = self
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()

    def __enter__(self) -> LoopbackServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def text(status: int, body: str) -> Reply:
    return status, {"Content-Type": "text/plain"}, body.encode()


def gateway_error(status: int, code: str, retry_after: str | None = None) -> Reply:
    """An error answer shaped like the gateway's own."""
    body = {"error": {"code": code, "message": f"stand-in {code}", "postgresMessage": None, "requestId": "stand-in",
                      "sqlstate": None, "detail": None, "hint": None, "position": None}}
    headers = {"Content-Type": "application/json", **({"Retry-After": retry_after} if retry_after else {})}
    return status, headers, orjson.dumps(body)


def gcp_metadata_server(audience: str, token: Callable[[], str]) -> LoopbackServer:
    """The metadata server's identity endpoint: refuses a request without
    `Metadata-Flavor: Google` or for another audience, as the real one would not mint it."""

    def answer(seen: Seen) -> Reply:
        if seen.path != GCP_IDENTITY_PATH:
            return text(404, "not found")
        if seen.headers.get("metadata-flavor") != "Google":
            return text(403, "Missing required header: Metadata-Flavor")
        if seen.query.get("audience") != audience or seen.query.get("format") != "full":
            return text(400, "unexpected audience or format")
        return text(200, token())

    return LoopbackServer(answer)


def actions_token_endpoint(request_token: str, audience: str, token: Callable[[], str]) -> LoopbackServer:
    """GitHub Actions' OIDC endpoint: the job's request token as bearer, `?api-version=2.0`
    kept, `&audience=` added; answers `{"value": <jwt>}`."""

    def answer(seen: Seen) -> Reply:
        if seen.path != ACTIONS_TOKEN_PATH or seen.query.get("api-version") != "2.0":
            return text(404, "not found")
        if seen.headers.get("authorization") != f"Bearer {request_token}":
            return text(401, "bad request token")
        if seen.query.get("audience") != audience:
            return text(400, "unexpected audience")
        return 200, {"Content-Type": "application/json"}, orjson.dumps({"count": 1, "value": token()})

    return LoopbackServer(answer)


def failing_front(gateway_url: str, failures: list[Reply]) -> LoopbackServer:
    """Answers `failures` in order, then passes each request on to the gateway."""
    pending = list(failures)

    def answer(seen: Seen) -> Reply:
        if pending:
            return pending.pop(0)
        headers = {name: value for name, value in seen.headers.items()
                   if name in ("authorization", "accept", "content-type")}
        response = httpx.request(seen.method, gateway_url + seen.target, content=seen.body, headers=headers)
        return response.status_code, {"Content-Type": response.headers["content-type"]}, response.content

    return LoopbackServer(answer)

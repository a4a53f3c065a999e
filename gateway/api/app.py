"""The Starlette application: routes (each with its operation in the API document, built
here once), middleware, lifespan, health and readiness, and the JSON shape of errors raised
outside an endpoint (unknown paths, oversized bodies, internal failures).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import orjson
from starlette.applications import Starlette
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import Message, Receive, Scope, Send

from gateway.api import approvals, credentials, mcp, native, neon, reference
from gateway.api.exchange import JSON, declares_more_than, error_answers
from gateway.api.openapi import Answer, ApiRoute, Operation, build_document
from gateway.api.results import error_body
from gateway.auth import READY_STATES
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, internal_error, payload_too_large
from gateway.pipeline import Pipeline, request_id_from

logger = logging.getLogger("gateway")

Endpoint = Callable[[Request], Awaitable[Response]]


def _error_json(error: GatewayError, request_id: str) -> bytes:
    return orjson.dumps({"error": error_body(error, request_id)})


class Front:
    """The one ASGI layer in front of the routes. Each request gets one id (the caller's
    `X-Request-Id` when sane, else a new one), kept in the scope's state. The hot routes
    (`POST /v1/query`, `POST /sql`) are answered directly: their endpoints turn every failure
    into a response in their wire format's shape and stamp the id and `Server-Timing`
    themselves. Everything else goes through Starlette's router (404, 405, JSON 500s), and
    answers that lack the id or a `Server-Timing` total get them here."""

    def __init__(self, app: Starlette, hot: dict[tuple[str, str], Endpoint], max_body_bytes: int) -> None:
        self.app = app
        self.state = app.state  # the pipeline, for whoever holds the app
        self.hot = hot
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = request_id_from(_header(scope, b"x-request-id"))
        scope.setdefault("state", {})["request_id"] = request_id
        endpoint = self.hot.get((scope["method"], scope["path"]))
        if endpoint is not None:
            scope["app"] = self.app
            try:
                response = await endpoint(Request(scope, receive))
            except Exception as error:  # the endpoints answer their failures: a bug
                response = await unhandled_error(Request(scope), error)
            await response(scope, receive, send)
            return
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if "x-request-id" not in headers:
                    headers.append("X-Request-Id", request_id)
                if scope["path"] == neon.PATH:  # the proxy's header, on every answer from /sql
                    headers.append("Neon-Request-Id", request_id)
                if "server-timing" not in headers:
                    headers.append("Server-Timing", f"total;dur={(time.perf_counter() - started) * 1000:.2f}")
            await send(message)

        if declares_more_than(_header(scope, b"content-length"), self.max_body_bytes):  # any path, known or not
            error = payload_too_large(self.max_body_bytes)
            body = neon.error_json(error) if scope["path"] == neon.PATH else _error_json(error, request_id)
            await Response(body, status_code=413, media_type=JSON)(scope, receive, send_with_id)
            return
        await self.app(scope, receive, send_with_id)


def _header(scope: Scope, name: bytes) -> str | None:
    """One header of the raw scope, without building Starlette's `Headers` on the hot path."""
    for key, value in scope["headers"]:
        if key == name:
            return value.decode("latin-1")
    return None


async def healthz(request: Request) -> Response:
    return Response(b'{"status":"ok"}', media_type=JSON)


HEALTHZ = Operation(
    "The process is alive",
    {200: Answer.json("alive", {"type": "object", "required": ["status"], "properties": {"status": {"const": "ok"}}})},
    secured=False,
)
READINESS_SCHEMA = {
    "type": "object",
    "required": ["status", "checks"],
    "properties": {
        "status": {"enum": ["ready", "not_ready"]},
        "checks": {
            "type": "object",
            "required": ["database", "issuers"],
            "properties": {
                "database": {"enum": ["ok", "unreachable"]},
                "issuers": {"type": "object", "additionalProperties": {"type": "string"}},
            },
        },
    },
}
READYZ = Operation(
    "Database reachable and issuers loaded",
    {200: Answer.json("ready", READINESS_SCHEMA), 503: Answer.json("not ready: the checks say why", READINESS_SCHEMA)},
    secured=False,
)
METRICS = Operation(
    "Prometheus text format",
    {200: Answer("the metrics", {"text/plain": {"type": "string"}})},
    secured=False,
)
OPENAPI = Operation(
    "This document",
    {200: Answer.json("the OpenAPI 3.1 document", {"type": "object", "required": ["openapi", "paths"]})},
    secured=False,
)
DOCS = Operation(
    "The reference of this API, as a page for people",
    {
        200: Answer(
            "an HTML page, made from this document", {"text/html": {"type": "string"}}, ("Content-Security-Policy",)
        )
    },
    secured=False,
)


class Readiness:
    """`GET /readyz`: database reachable and issuers loaded (and, with `[limits] redis_url`,
    where limits are counted, which does not change readiness). A check takes a pool connection,
    so its answer is kept for `server.readyz_cache`, and calls arriving while one runs wait
    for its answer instead of each taking a connection."""

    def __init__(self, pipeline: Pipeline, keep_for: float) -> None:
        self.pipeline = pipeline
        self.keep_for = keep_for
        self._lock = asyncio.Lock()
        self._answer: tuple[int, bytes] | None = None  # (status, body)
        self._expires = 0.0

    async def endpoint(self, request: Request) -> Response:
        async with self._lock:  # held at most for one check, which the ping's timeout bounds
            if self._answer is None or time.monotonic() >= self._expires:
                self._answer = await self._check()
                self._expires = time.monotonic() + self.keep_for
            status, body = self._answer
        # A new response each time: middleware adds this request's own headers to it.
        return Response(body, status_code=status, media_type=JSON)

    async def _check(self) -> tuple[int, bytes]:
        database_ok = await self.pipeline.database.ping()
        issuers = self.pipeline.verifier.issuer_status()
        checks: dict[str, object] = {"database": "ok" if database_ok else "unreachable", "issuers": issuers}
        shared = self.pipeline.limits.shared
        if shared is not None:
            # Not a reason to stop taking requests: each replica then enforces the limits alone.
            checks["limits"] = "shared" if shared.up else "per_replica"
        ready = database_ok and all(state in READY_STATES for state in issuers.values())
        return 200 if ready else 503, orjson.dumps({"status": "ready" if ready else "not_ready", "checks": checks})


async def openapi(request: Request) -> Response:
    return Response(request.app.state.openapi, media_type=JSON)


async def metrics(request: Request) -> Response:
    body, content_type = request.app.state.pipeline.metrics.render()
    return Response(body, media_type=content_type)


async def http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}.get(exc.status_code, "bad_request")
    return Response(
        _error_json(GatewayError(str(exc.detail), status=exc.status_code, code=code), request.state.request_id),
        status_code=exc.status_code,
        media_type=JSON,
        headers=exc.headers,  # a 405 names the allowed methods
    )


async def unhandled_error(request: Request, exc: Exception) -> Response:
    logger.exception("unhandled error on %s", request.url.path)
    # Sent by Starlette's outermost middleware, past RequestIdentifier: stamp the id here.
    request_id = request.state.request_id
    return Response(
        _error_json(internal_error(), request_id),
        status_code=500,
        media_type=JSON,
        headers={"X-Request-Id": request_id},
    )


def create_app(config: GatewayConfig, pipeline: Pipeline | None = None) -> Front:
    pipeline = pipeline or Pipeline.from_config(config)
    mcp_endpoint = mcp.McpEndpoint(config.server.max_body_bytes)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        # The MCP SDK's tasks outlive the pipeline's shutdown: that first cuts the database
        # off, so a tool call still running ends (and is audited) before its task is cancelled.
        async with mcp_endpoint.running():
            await pipeline.start()
            try:
                async with pipeline.metrics.following_pool(
                    pipeline.database.pool_state, config.metrics.pool_sample_interval
                ):
                    yield
            finally:
                await pipeline.stop()

    routes = [
        ApiRoute("/openapi.json", openapi, "GET", OPENAPI),
        ApiRoute(reference.PATH, reference.page, "GET", DOCS),
        Route(reference.STYLE_PATH, reference.style, methods=["GET"], include_in_schema=False),
        ApiRoute("/v1/query", native.query, "POST", native.QUERY),
        ApiRoute("/v1/batch", native.batch, "POST", native.BATCH),
        ApiRoute("/v1/explain", native.explain, "POST", native.EXPLAIN),
        ApiRoute("/v1/whoami", native.whoami, "GET", native.WHOAMI),
        ApiRoute(credentials.PATH, credentials.issue, "POST", credentials.ISSUE),
        ApiRoute(credentials.PATH, credentials.active, "GET", credentials.ACTIVE),
        ApiRoute(credentials.USER_PATH, credentials.revoke, "DELETE", credentials.REVOKE),
        ApiRoute(approvals.PATH, approvals.pending, "GET", approvals.PENDING),
        ApiRoute(approvals.ID_PATH, approvals.read, "GET", approvals.READ),
        ApiRoute(approvals.ID_PATH, approvals.decide, "POST", approvals.DECIDE),
        ApiRoute(neon.PATH, neon.sql, "POST", neon.OPERATION),
        # CORS preflight: answered for the driver, not an operation of the API
        Route(neon.PATH, neon.preflight, methods=["OPTIONS"], include_in_schema=False),
        ApiRoute(mcp.ENDPOINT, mcp_endpoint, "POST", mcp.OPERATION),
        ApiRoute("/healthz", healthz, "GET", HEALTHZ),
        ApiRoute("/readyz", Readiness(pipeline, config.server.readyz_cache).endpoint, "GET", READYZ),
    ]
    if config.metrics.listen is None:  # else only on that listener (gateway.server)
        routes.append(ApiRoute("/metrics", metrics, "GET", METRICS))
    middleware = []
    if config.server.cors_origins:
        middleware.append(
            Middleware(
                CORSMiddleware,
                allow_origins=list(config.server.cors_origins),
                allow_methods=["GET", "POST", "DELETE"],
                allow_headers=[
                    "Authorization",
                    "Content-Type",
                    "Traceparent",
                    "X-Request-Id",
                    *neon.REQUEST_HEADERS,
                    *mcp.REQUEST_HEADERS,
                ],
                expose_headers=["X-Request-Id", "Server-Timing", *neon.RESPONSE_HEADERS, *mcp.RESPONSE_HEADERS],
                max_age=600,
            ),
        )
    app = Starlette(
        routes=routes,
        middleware=middleware,
        lifespan=lifespan,
        exception_handlers={HTTPException: http_error, Exception: unhandled_error},
    )
    app.state.pipeline = pipeline
    document = build_document(app.routes, error_answers)
    app.state.openapi = orjson.dumps(document)
    app.state.reference = reference.render(document)
    # With CORS configured every request goes through its middleware, hot routes included.
    hot = {} if config.server.cors_origins else {("POST", "/v1/query"): native.query, ("POST", neon.PATH): neon.sql}
    return Front(app, hot, config.server.max_body_bytes)

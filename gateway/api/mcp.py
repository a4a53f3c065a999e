"""`POST /mcp`: a Model Context Protocol server over Streamable HTTP, built on the official
`mcp` SDK — a third adapter around the one pipeline, beside `/v1` and `/sql`.

Owns what happens to a request before and after the SDK reads it: the body within
`server.max_body_bytes`; the bearer token verified and resolved to an identity exactly as for
`/v1` (401 and 403 in `/v1`'s error shape) before the SDK sees a byte; the MCP session (its
id names the client and is bound to the caller, `gateway.api.mcp_session`); and the request's
one audit record (channel `mcp`), which a tool call takes over (`HeldScope`). The tools
are `gateway.api.mcp_tools`.

The SDK runs stateless, answering JSON: any worker or replica answers any request, as for
`/v1`, and nothing is kept between requests. The server sends nothing unasked, so there is no
stream to GET and no session to DELETE (405).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import orjson
from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from mcp_types import CLIENT_INFO_META_KEY, INVALID_PARAMS
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway import __version__
from gateway.api.exchange import CUT_BY_SERVER, close_shielded, error_response, open_scope, read_body, respond
from gateway.api.mcp_session import HEADER as SESSION_HEADER
from gateway.api.mcp_session import open_session, session_client
from gateway.api.mcp_tools import INSTRUCTIONS, TOOLS, run_tool
from gateway.api.openapi import Answer, Operation
from gateway.pipeline import RequestScope

ENDPOINT = "/mcp"
# What a browser must be allowed to send and to read (CORS).
REQUEST_HEADERS = (SESSION_HEADER, "Mcp-Protocol-Version")
RESPONSE_HEADERS = (SESSION_HEADER,)
MAX_CLIENT_NAME = 64  # characters of a client's name kept (audit records, session ids)
INTERNAL_ERROR = 500

# What every JSON-RPC 2.0 message has; the SDK reads (and judges) the rest.
ENVELOPE = {"jsonrpc": {"const": "2.0"}, "id": {"type": ["string", "integer", "null"]}}
MESSAGE_SCHEMA = {
    "type": "object",
    "description": "a JSON-RPC 2.0 message of the Model Context Protocol: initialize, tools/list, tools/call, ...",
    "required": ["jsonrpc"],
    "properties": {
        **ENVELOPE,
        "method": {"type": "string"},
        "params": {"type": "object"},
    },
    "examples": [
        {"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "query", "arguments": {"sql": "select 1 as one"}},
        },
        {"jsonrpc": "2.0", "method": "notifications/initialized"},
    ],
}
# What the SDK answers itself: a JSON-RPC response, or an error that is not the gateway's.
RPC_ANSWER_SCHEMA = {
    "type": "object",
    "required": ["jsonrpc"],
    "properties": {
        **ENVELOPE,
        "result": {"type": "object"},
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "integer"}, "message": {"type": "string"}},
        },
    },
}
OPERATION = Operation(
    "Model Context Protocol over Streamable HTTP: tools query, explain, list_tables, describe_table",
    {
        200: Answer.json("the JSON-RPC answer (a tool's failure is a result with isError)", RPC_ANSWER_SCHEMA),
        202: Answer("a notification or a response, accepted"),
        # The SDK's own refusals, as JSON-RPC errors
        400: Answer.json("not a JSON-RPC message the protocol takes", RPC_ANSWER_SCHEMA),
        406: Answer.json("Accept does not include application/json", RPC_ANSWER_SCHEMA),
        415: Answer.json("Content-Type is not application/json", RPC_ANSWER_SCHEMA),
    },
    ("unauthenticated", "no_identity", "not_found"),
    request=MESSAGE_SCHEMA,
    description="Answers JSON (Accept must include application/json); stateless, so there is no stream to GET "
    "and no session to DELETE. An initialize answer opens an Mcp-Session-Id bound to the caller.",
)


class HeldScope:
    """The request scope of one POST to /mcp (the request's one audit record), held by the
    endpoint until a tool call takes it over; whoever holds it last closes it. A tool runs in
    a task of the SDK's, which can outlive the endpoint's (a request cut by the shutdown), and
    a scope is closed by the task that runs its statements, never under it."""

    def __init__(self, scope: RequestScope) -> None:
        self._scope: RequestScope | None = scope

    def take(self) -> RequestScope:
        scope, self._scope = self._scope, None
        if scope is None:
            raise RuntimeError("the request ended before its tool call started")
        scope.task = asyncio.current_task()  # the shutdown waits for this task to unwind
        return scope

    def release(self) -> RequestScope | None:
        """The scope, unless a tool call took it."""
        scope, self._scope = self._scope, None
        return scope


@dataclass(frozen=True)
class McpMessage:
    """What the endpoint reads of a JSON-RPC message; the SDK reads (and judges) the rest."""

    method: str | None
    client: str | None  # the name in `initialize`'s clientInfo, or in a 2026-07-28 envelope

    @classmethod
    def read(cls, body: bytes) -> McpMessage:
        try:
            message = orjson.loads(body)
        except orjson.JSONDecodeError:
            return cls(None, None)  # the SDK answers it
        if not isinstance(message, dict) or not isinstance(message.get("method"), str):
            return cls(None, None)  # a response, or nothing the SDK will take
        method = message["method"]
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        if method == "initialize":
            info = params.get("clientInfo")
        else:
            meta = params.get("_meta")
            info = meta.get(CLIENT_INFO_META_KEY) if isinstance(meta, dict) else None
        name = info.get("name") if isinstance(info, dict) else None
        return cls(method, name[:MAX_CLIENT_NAME] if isinstance(name, str) else None)


@dataclass(frozen=True)
class Admitted:
    """A request the endpoint lets the SDK read: its body, and the session id it opens."""

    body: bytes
    session: str | None


class McpEndpoint:
    """The ASGI app at `/mcp`; `running()` belongs in the app's lifespan."""

    def __init__(self, max_body_bytes: int) -> None:
        server: Server[Any] = Server(
            "edge-sql-gateway",
            version=__version__,
            instructions=INSTRUCTIONS,
            on_list_tools=_list_tools,
            on_call_tool=_call_tool,
        )
        self.sessions = StreamableHTTPSessionManager(
            server, json_response=True, stateless=True, max_request_body_size=max_body_bytes
        )

    def running(self) -> contextlib.AbstractAsyncContextManager[None]:
        """The SDK's task group, in which it answers requests."""
        return self.sessions.run()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request = Request(scope, receive)
        audited = open_scope(request, ENDPOINT)
        audited.record.channel = "mcp"
        admitted = await respond(audited, _admit(request, audited), error_response)
        if isinstance(admitted, Response):
            await close_shielded(audited)
            await admitted(scope, receive, send)
            return
        held = scope["state"]["mcp_scope"] = HeldScope(audited)
        status = INTERNAL_ERROR
        try:
            status = await self._forward(scope, receive, send, admitted)
        except asyncio.CancelledError:
            status = CUT_BY_SERVER
            raise
        finally:
            left = held.release()
            if left is not None:
                await close_shielded(left, status)

    async def _forward(self, scope: Scope, receive: Receive, send: Send, admitted: Admitted) -> int:
        """The SDK's answer to the request, the session id on the answer that opens one; the
        status it answered with."""
        status = 0

        async def answer(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                if admitted.session is not None and status == 200:
                    MutableHeaders(scope=message).append(SESSION_HEADER, admitted.session)
            await send(message)

        await self.sessions.handle_request(scope, _Replay(admitted.body, receive), answer)
        return status


class _Replay:
    """The body the endpoint read, received again by the SDK; then the client's messages
    (a disconnect)."""

    def __init__(self, body: bytes, receive: Receive) -> None:
        self._body: bytes | None = body
        self._receive = receive

    async def __call__(self) -> Message:
        if self._body is None:
            return await self._receive()
        body, self._body = self._body, None
        return {"type": "http.request", "body": body, "more_body": False}


async def _admit(request: Request, scope: RequestScope) -> Admitted:
    """The body read, the caller authenticated, the session checked: `initialize` opens one
    for the caller; any other message that names one must be the caller's (else 404)."""
    body = await read_body(request)
    caller = await scope.authenticate(request.headers.get("authorization"))
    message = McpMessage.read(body)
    session_id = request.headers.get(SESSION_HEADER)
    session = None
    if message.method == "initialize":
        session, client = open_session(caller, message.client), message.client
    elif session_id is not None:
        client = session_client(session_id, caller)
    else:  # a 2026-07-28 request, which names its client itself, or a call outside any session
        client = message.client
    scope.record.mcpMethod = message.method
    scope.record.mcpClient = client
    return Admitted(body, session)


Context = ServerRequestContext[Any, Request]


async def _list_tools(ctx: Context, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
    return types.ListToolsResult(tools=[tool.definition for tool in TOOLS.values()])


async def _call_tool(ctx: Context, params: types.CallToolRequestParams) -> types.CallToolResult:
    """Runs in the SDK's task, in the scope of the POST that carries the call (`ctx.request`)."""
    tool = TOOLS.get(params.name)
    if tool is None:
        raise MCPError(INVALID_PARAMS, f'no tool "{params.name}"; tools/list names the tools')
    request = ctx.request
    assert request is not None  # served over HTTP, by this endpoint
    scope = request.state.mcp_scope.take()
    try:
        return await run_tool(scope, request.headers.get("authorization"), tool, params.arguments or {})
    finally:
        await close_shielded(scope)

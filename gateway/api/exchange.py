"""What every endpoint does around the pipeline: open a `RequestScope` from the HTTP
request, read the JSON body within the size limit, turn a `GatewayError` — or a failure
nobody foresaw — into its response, stamp `Server-Timing`, and cancel database work when the
client leaves.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

import anyio
import orjson
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response, StreamingResponse

from gateway import json_text
from gateway.api.openapi import Answer, Schema, by_status, describe, shared_headers
from gateway.api.results import ERROR_BODY_SCHEMA, ResultWriter, error_body, whole_result
from gateway.approvals import ApprovalRequest
from gateway.db.session import StatementRun
from gateway.errors import ErrorKind, GatewayError, bad_request, internal_error, payload_too_large, query_cancelled
from gateway.pipeline import Judged, Pipeline, RequestScope, Statement, trace_id_from

T = TypeVar("T")
JSON = "application/json"

logger = logging.getLogger("gateway")


# A statement judged by the policy, then run: every code a run can end in.
STATEMENT_ERRORS = (
    "bad_request",
    "sql_error",
    "unauthenticated",
    "no_identity",
    "policy_denied",
    "serialization_failure",
    "rate_limited",
    "overloaded",
    "database_unavailable",
    "statement_timeout",
)

CLIENT_CLOSED_REQUEST = 499  # audit status for a client that left before the response
CUT_BY_SERVER = 503  # audit status for a request still open when the shutdown's grace ran out

Handler = Callable[[Request, RequestScope], Awaitable[Response]]
ErrorResponder = Callable[[RequestScope, GatewayError], Response]


class ClientGone(Exception):
    """The client disconnected before the response started."""


async def answer(request: Request, endpoint: str, handler: Handler, on_error: ErrorResponder | None = None) -> Response:
    """Run one endpoint's handler inside a request scope: errors become their responses (in
    the wire format's shape: `on_error`, the native one by default), and the scope is closed
    (connection returned, audit written) when the handler is done — or, for a streaming
    response, when the stream ends."""
    scope = open_scope(request, endpoint)
    response: Response | None = None
    try:
        response = await respond(scope, handler(request, scope), on_error or error_response)
        return response
    finally:
        if not isinstance(response, StreamingResponse):
            if response is not None and not scope.record.status:
                scope.record.status = response.status_code
            await scope.close()


async def respond(scope: RequestScope, work: Awaitable[T], on_error: ErrorResponder) -> T | Response:
    """What `work` returns, or how it failed as the wire format's error response (`on_error`):
    a GatewayError as itself, a client that left as 499, anything unforeseen as a 500. Cut
    short by the server (the shutdown's grace period ran out), the request is closed and the
    cancellation goes on."""
    try:
        return await work
    except GatewayError as error:
        return on_error(scope, error)
    except ClientGone:
        gone = on_error(scope, query_cancelled())  # nobody reads it; the audit says 499
        scope.record.status = CLIENT_CLOSED_REQUEST
        return gone
    except asyncio.CancelledError:
        await close_shielded(scope, CUT_BY_SERVER)
        raise
    except Exception:
        return on_error(scope, unforeseen(scope))


def unforeseen(scope: RequestScope) -> GatewayError:
    """The 500 for an exception nobody foresaw (a bug), logged once with its traceback while
    it is being handled; the caller sees only the error shape of its wire format."""
    logger.exception("unexpected error on %s (request %s)", scope.record.endpoint, scope.request_id)
    return internal_error()


def open_scope(request: Request, endpoint: str) -> RequestScope:
    pipeline: Pipeline = request.app.state.pipeline
    client = request.client.host if request.client else None
    return pipeline.scope(
        endpoint,
        request_id=request.state.request_id,
        trace_id=trace_id_from(request.headers.get("traceparent")),
        client_ip=client,
        user_agent=request.headers.get("user-agent"),
    )


def declares_more_than(content_length: str | None, limit: int) -> bool:
    """A `Content-Length` over `limit`: the body is refused before a byte of it is read."""
    return content_length is not None and content_length.isdigit() and int(content_length) > limit


async def read_body(request: Request) -> bytes:
    """The body, refused (413) as soon as it is declared or found to be over
    `server.max_body_bytes`, before the rest of it is read."""
    limit = request.app.state.pipeline.config.server.max_body_bytes
    if declares_more_than(request.headers.get("content-length"), limit):
        raise payload_too_large(limit)
    chunks = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise payload_too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:  # the client left while sending the body
        raise ClientGone from None
    return b"".join(chunks)


async def read_json(request: Request) -> Any:
    """The body as JSON whatever the Content-Type (edge runtimes send text/plain), integers
    of any width exact."""
    return decode_json(await read_body(request))


def decode_json(body: bytes) -> Any:
    try:
        return json_text.loads(body)
    except json_text.UnreadableJson as error:
        raise bad_request(f"the body {error}") from None


def statement_schema(sql_key: str = "sql", **more: Schema) -> Schema:
    """What `statement_from` reads: the SQL, and its parameters (a string fits any type); other
    keys are the wire format's (`more`) or ignored."""
    return {
        "type": "object",
        "required": [sql_key],
        "properties": {
            sql_key: {"type": "string", "description": "one statement, with $1..$n parameters"},
            "params": {"type": ["array", "null"], "items": {}, "description": "a JSON string fits any parameter type"},
            **more,
        },
    }


def statement_from(body: Any, max_depth: int, where: str = "body", sql_key: str = "sql") -> Statement:
    """`{"<sql_key>": "...", "params": [...]}` -> a Statement; params may be absent or null,
    and none may nest arrays and objects more than `max_depth` levels deep."""
    if not isinstance(body, dict):
        raise bad_request(f"{where} must be a JSON object")
    sql = body.get(sql_key)
    if not isinstance(sql, str):
        raise bad_request(f'{where}: "{sql_key}" must be a string')
    params = body.get("params", [])
    if params is None:
        params = []
    if not isinstance(params, list):
        raise bad_request(f'{where}: "params" must be an array')
    for position, value in enumerate(params, 1):
        if json_text.nests_deeper_than(value, max_depth):
            raise bad_request(f"{where}: parameter ${position} is nested more than {max_depth} levels deep")
    return Statement(sql, params)


def results_body(parts: list[bytes]) -> bytes:
    """A batch's answer in both wire formats: `{"results": [<one result per statement>]}`."""
    return b'{"results":[' + b",".join(parts) + b"]}"


def result_writer(scope: RequestScope, run: StatementRun, *, array_rows: bool, ndjson: bool) -> ResultWriter:
    """A writer for one result within the caller's `max_rows` and `max_response_bytes`."""
    assert scope.caller is not None  # the pipeline runs nothing before authenticating
    identity = scope.caller.identity
    return ResultWriter(
        run.columns,
        array_rows=array_rows,
        ndjson=ndjson,
        max_rows=identity.max_rows,
        max_bytes=identity.max_response_bytes,
    )


def account(scope: RequestScope, writer: ResultWriter, status: int) -> None:
    """The rows and bytes a result sent, and the status it ended with, on the audit record."""
    scope.record.rows += writer.rows_sent
    scope.record.bytes += writer.bytes_sent
    scope.record.status = status


class WholeResults:
    """Each statement's result read whole, all of them within the identity's limits together:
    `/v1/batch`, MCP's query tool, and an approved request's statements."""

    def __init__(self, scope: RequestScope, *, array_rows: bool) -> None:
        self.scope = scope
        self.array_rows = array_rows
        self.parts: list[bytes] = []
        self.bytes_sent = 0

    async def take(self, judged: Judged, run: StatementRun) -> bool:
        assert self.scope.caller is not None  # the pipeline runs nothing before authenticating
        identity = self.scope.caller.identity
        writer = ResultWriter(
            run.columns,
            array_rows=self.array_rows,
            ndjson=False,
            max_rows=identity.max_rows,
            max_bytes=identity.max_response_bytes - self.bytes_sent,
        )
        self.parts.append(await whole_result(run, writer, judged.facts.kind))
        self.bytes_sent += writer.bytes_sent
        account(self.scope, writer, 200)
        return False


# `ApprovalRequest.summary()`: what the requester is answered, and every view of a request starts with.
APPROVAL_SUMMARY_SCHEMA = {
    "type": "object",
    "required": ["id", "status", "expiresAt", "statement", "identity"],
    "properties": {
        "id": {"type": "string"},
        "status": {"type": "string", "enum": ["pending", "running", "done", "failed", "rejected", "expired"]},
        "expiresAt": {"type": "string"},
        "statement": {"type": ["string", "null"], "description": "null for a batch"},
        "identity": {"type": "string"},
    },
}
HELD = Answer.json(
    "held until an approver approves it (/v1/approvals)",
    {"type": "object", "required": ["approval"], "properties": {"approval": APPROVAL_SUMMARY_SCHEMA}},
)


def awaiting_approval(scope: RequestScope, pending: ApprovalRequest) -> Response:
    """202: the statement is held until an approver approves it (`/v1/approvals`)."""
    return json_response(scope, {"approval": pending.summary()}, status=202)


def scope_headers(scope: RequestScope) -> dict[str, str]:
    return {"X-Request-Id": scope.request_id, "Server-Timing": scope.server_timing()}


def json_response(
    scope: RequestScope, payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    all_headers = {**scope_headers(scope), **(headers or {})}
    return Response(orjson.dumps(payload), status_code=status, media_type=JSON, headers=all_headers)


def error_schema(codes: list[str]) -> Schema:
    """`error_response`'s body, with one of these codes."""
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {**ERROR_BODY_SCHEMA, "properties": {**ERROR_BODY_SCHEMA["properties"], "code": {"enum": codes}}}
        },
    }


def error_answers(kinds: Sequence[ErrorKind]) -> dict[int, Answer]:
    """The native wire format's errors: each with its status in the error table, as `error_response` writes it."""
    return {
        status: Answer.json(describe(group), error_schema([kind.code for kind in group]), shared_headers(group))
        for status, group in by_status(kinds, lambda kind: kind.status).items()
    }


def error_response(scope: RequestScope, error: GatewayError) -> Response:
    scope.fail(error)
    headers = {**scope_headers(scope), **error.headers}
    return Response(
        orjson.dumps({"error": error_body(error, scope.request_id)}),
        status_code=error.status,
        media_type=JSON,
        headers=headers,
    )


async def close_shielded(scope: RequestScope, status: int | None = None) -> None:
    """Release the connection and audit even while the request task is being cancelled (a
    streaming response is cancelled when its client leaves, any request when the shutdown
    cuts it)."""
    with anyio.CancelScope(shield=True):
        await scope.close(status)


# A statement answered sooner than this is not watched for the client leaving: the watcher
# is a task, which costs more than such a statement saves by being cancelled.
WATCH_AFTER_SECONDS = 0.05


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await `work` in this task, cancelling it if the client disconnects first; asyncpg then
    cancels the running statement on the server. The watcher starts only once `work` has
    taken `WATCH_AFTER_SECONDS`: this runs on every query."""
    task = asyncio.current_task()
    assert task is not None
    loop = asyncio.get_running_loop()
    client_left = False
    watcher: asyncio.Task | None = None

    async def watch() -> None:
        nonlocal client_left
        await _wait_for_disconnect(request)
        client_left = True
        task.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    timer = loop.call_later(WATCH_AFTER_SECONDS, start_watching)
    try:
        return await work
    except asyncio.CancelledError:
        if not client_left:
            raise
        task.uncancel()
        raise ClientGone from None
    finally:
        timer.cancel()
        if watcher is not None:
            watcher.cancel()


async def _wait_for_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return

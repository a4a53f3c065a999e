"""The native `/v1` wire format: query, batch, explain, whoami.

Decodes request bodies into pipeline statements and encodes results as JSON (the default)
or NDJSON (`Accept: application/x-ndjson`). A result that fits in the first batch is
committed before the response starts, so its status is exact; a longer one streams from the
open portal and commits at the end, reporting a late failure in the body's last line.
"""

from __future__ import annotations

import asyncio
import contextlib
from functools import partial
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.exchange import (
    CLIENT_CLOSED_REQUEST,
    CUT_BY_SERVER,
    HELD,
    JSON,
    STATEMENT_ERRORS,
    WholeResults,
    account,
    answer,
    awaiting_approval,
    close_shielded,
    json_response,
    read_json,
    result_writer,
    results_body,
    scope_headers,
    statement_from,
    statement_schema,
    unforeseen,
    until_disconnect,
)
from gateway.api.openapi import STRINGS, Answer, Operation, Schema, listed
from gateway.api.results import NDJSON, RESULT_SCHEMA, ResultWriter, encoded_rows
from gateway.api.streaming import PacedBody, PacedStreamingResponse
from gateway.db.session import ISOLATION_LEVELS, StatementRun
from gateway.errors import GatewayError, bad_request
from gateway.pipeline import Call, Judged, RequestScope, Statement, TransactionOptions

# ---------------------------------------------------------------------------- body decoding

ROW_MODES = ("object", "array")
ROW_MODE_SCHEMA = {"enum": list(ROW_MODES), "default": "object", "description": "rows as objects, or as arrays"}
QUERY_SCHEMA = {
    **statement_schema(rowMode=ROW_MODE_SCHEMA),
    "examples": [
        {"sql": "select $1::int4 as n, now() as at", "params": ["7"]},
        {"sql": "select 1 as one, 'two' as two", "rowMode": "array"},
    ],
}
BATCH_SCHEMA = {
    "type": "object",
    "required": ["statements"],
    "properties": {
        "statements": {"type": "array", "minItems": 1, "items": statement_schema()},
        "isolation": {"enum": list(ISOLATION_LEVELS), "default": "read committed"},
        "readOnly": {"type": "boolean", "default": False},
        "rowMode": ROW_MODE_SCHEMA,
    },
    "examples": [
        {"statements": [{"sql": "select 1 as one"}, {"sql": "select $1::text as t", "params": ["x"]}], "readOnly": True}
    ],
}


def _row_mode(body: dict) -> bool:
    mode = body.get("rowMode", "object")
    if mode not in ROW_MODES:
        raise bad_request('"rowMode" must be "object" or "array"')
    return mode == "array"


def _batch(body: Any, max_depth: int) -> tuple[list[Statement], TransactionOptions]:
    if not isinstance(body, dict) or not isinstance(body.get("statements"), list) or not body["statements"]:
        raise bad_request('"statements" must be a non-empty array')
    statements = [statement_from(item, max_depth, f"statements[{i}]") for i, item in enumerate(body["statements"])]
    isolation = body.get("isolation", "read committed")
    if not isinstance(isolation, str) or isolation not in ISOLATION_LEVELS:
        raise bad_request('"isolation" must be one of ' + ", ".join(f'"{level}"' for level in ISOLATION_LEVELS))
    read_only = body.get("readOnly", False)
    if not isinstance(read_only, bool):
        raise bad_request('"readOnly" must be true or false')
    return statements, TransactionOptions(isolation=isolation, read_only=read_only)


def _max_depth(scope: RequestScope) -> int:
    return scope.pipeline.config.server.max_param_depth


def _wants_ndjson(request: Request) -> bool:
    return NDJSON in request.headers.get("accept", "")


# ---------------------------------------------------------------------------- what the endpoints answer

DECISION_SCHEMA: Schema = {
    "type": "object",
    "required": ["allowed", "identity", "kind", "tables", "columns", "functions", "reason", "approval"],
    "properties": {
        "allowed": {"type": "boolean"},
        "identity": {"type": "string"},
        "kind": {"type": ["string", "null"]},
        "tables": STRINGS,
        "columns": STRINGS,
        "functions": STRINGS,
        "reason": {"type": ["string", "null"], "description": "the message its error would carry"},
        "approval": {
            "type": ["object", "null"],
            "description": "a statement a rule holds for approval: who may approve, within how many seconds",
            "required": ["approvers", "ttl"],
            "properties": {"approvers": STRINGS, "ttl": {"type": "number"}},
        },
    },
}
WHOAMI_SCHEMA: Schema = {
    "type": "object",
    "required": ["identity", "role", "issuer", "subject", "schemas", "limits"],
    "properties": {
        "identity": {"type": "string"},
        "role": {"type": "string"},
        "issuer": {"type": "string"},
        "subject": {"description": "the token's sub claim"},
        "schemas": STRINGS,
        "limits": {
            "type": "object",
            "required": [
                "readOnly",
                "maxRows",
                "maxResponseBytes",
                "statementTimeoutMs",
                "ratePerSecond",
                "concurrency",
            ],
            "properties": {
                "readOnly": {"type": "boolean"},
                "maxRows": {"type": "integer"},
                "maxResponseBytes": {"type": "integer"},
                "statementTimeoutMs": {"type": "integer"},
                "ratePerSecond": {"type": ["number", "null"]},
                "concurrency": {"type": ["integer", "null"]},
            },
        },
    },
}
QUERY = Operation(
    "Run one statement: JSON, or NDJSON with Accept: application/x-ndjson",
    {
        200: Answer(
            "the result; rows past the identity's max_rows or max_response_bytes are cut (truncated). A result "
            "longer than one batch streams, and a failure after its first rows ends the body with the error",
            {JSON: RESULT_SCHEMA, NDJSON: {"type": "string", "description": "columns line, row lines, summary line"}},
        ),
        202: HELD,
    },
    STATEMENT_ERRORS,
    request=QUERY_SCHEMA,
)
BATCH = Operation(
    "Run statements in one transaction, all or nothing",
    {
        200: Answer.json(
            "one result per statement, sent after COMMIT",
            listed("results", RESULT_SCHEMA),
        ),
        202: HELD,
    },
    (*STATEMENT_ERRORS, "response_too_large"),
    request=BATCH_SCHEMA,
)
EXPLAIN = Operation(
    "The verdict /v1/query would give a statement before running it (policy, parameters)",
    {200: Answer.json("the decision", DECISION_SCHEMA)},
    ("bad_request", "unauthenticated", "no_identity", "overloaded", "database_unavailable"),
    request=QUERY_SCHEMA,
)
WHOAMI = Operation(
    "The identity, role, issuer and limits the token resolves to",
    {200: Answer.json("the identity", WHOAMI_SCHEMA)},
    ("unauthenticated", "no_identity"),
)

# ---------------------------------------------------------------------------- endpoints


async def query(request: Request) -> Response:
    return await answer(request, "/v1/query", _query)


async def _query(request: Request, scope: RequestScope) -> Response:
    body = await read_json(request)
    call = Call(request.headers.get("authorization"), [statement_from(body, _max_depth(scope))])
    result = _QueryResult(scope, array_rows=_row_mode(body), ndjson=_wants_ndjson(request))
    pending = await until_disconnect(request, scope.execute(call, result))
    if pending is not None:
        return awaiting_approval(scope, pending)
    media_type = NDJSON if result.ndjson else JSON
    if result.chunks is None:  # more than the first batch: streamed, committed at its end
        return PacedStreamingResponse(
            partial(_stream, scope, result.run, result.writer, result.judged),
            idle_timeout=scope.pipeline.config.server.stream_idle_timeout,
            media_type=media_type,
            headers=scope_headers(scope),
        )
    result.chunks.append(result.writer.tail(result.run.command_tag, result.judged.facts.kind))
    account(scope, result.writer, 200)
    return Response(b"".join(result.chunks), media_type=media_type, headers=scope_headers(scope))


class _QueryResult:
    """`/v1/query`'s one result: encoded whole when its first batch ends it (answered after
    COMMIT, so the status is exact), else kept to be streamed from the open portal."""

    def __init__(self, scope: RequestScope, *, array_rows: bool, ndjson: bool) -> None:
        self.scope = scope
        self.array_rows = array_rows
        self.ndjson = ndjson
        self.chunks: list[bytes] | None = None

    async def take(self, judged: Judged, run: StatementRun) -> bool:
        self.judged, self.run = judged, run
        self.writer = result_writer(self.scope, run, array_rows=self.array_rows, ndjson=self.ndjson)
        if not run.exhausted:
            return True
        self.chunks = [self.writer.head(), *[chunk async for chunk in encoded_rows(run, self.writer)]]
        return False


async def _stream(
    scope: RequestScope, run: StatementRun, writer: ResultWriter, judged: Judged, body: PacedBody
) -> None:
    """The rows as they are read, then COMMIT and the summary. The connection goes back (and
    the audit record is written) before the last line is sent: a client that stopped reading
    holds nothing of the database while it is offered."""
    status = 200
    last = b""
    try:
        await body.write(writer.head())
        async for chunk in encoded_rows(run, writer):
            await body.write(chunk)
        await scope.commit()
        last = writer.tail(run.command_tag, judged.facts.kind)
    except asyncio.CancelledError:  # cut short: the client left, or the shutdown's grace ran out
        status = CLIENT_CLOSED_REQUEST if body.client_left else CUT_BY_SERVER
        raise
    except Exception as error:  # a GatewayError, or one nobody foresaw (logged; a 500)
        failure = error if isinstance(error, GatewayError) else unforeseen(scope)
        status = failure.status
        scope.fail(failure)
        if body.stalled:  # the audit record says why the stream stopped
            scope.record.reason = failure.message
        last = writer.error_tail(failure, scope.request_id)
    finally:
        account(scope, writer, status)
        await close_shielded(scope, status)
    with contextlib.suppress(GatewayError):  # a stall now holds nothing of the database
        await body.write(last)


async def batch(request: Request) -> Response:
    """All statements in one transaction; the response is sent after COMMIT, so its status
    says whether the whole batch happened. Results are bounded by the identity's limits."""
    return await answer(request, "/v1/batch", _batch_answer)


async def _batch_answer(request: Request, scope: RequestScope) -> Response:
    body = await read_json(request)
    statements, options = _batch(body, _max_depth(scope))
    call = Call(request.headers.get("authorization"), statements, options, batch=True)
    results = WholeResults(scope, array_rows=_row_mode(body))
    pending = await until_disconnect(request, scope.execute(call, results))
    if pending is not None:
        return awaiting_approval(scope, pending)
    return Response(results_body(results.parts), media_type=JSON, headers=scope_headers(scope))


async def explain(request: Request) -> Response:
    return await answer(request, "/v1/explain", _explain)


async def _explain(request: Request, scope: RequestScope) -> Response:
    statement = statement_from(await read_json(request), _max_depth(scope))
    await scope.authenticate(request.headers.get("authorization"))
    judged = await scope.explain(statement)
    return json_response(scope, judged.verdict())


async def whoami(request: Request) -> Response:
    return await answer(request, "/v1/whoami", _whoami)


async def _whoami(request: Request, scope: RequestScope) -> Response:
    caller = await scope.authenticate(request.headers.get("authorization"))
    identity = caller.identity
    return json_response(
        scope,
        {
            "identity": identity.name,
            "role": identity.role,
            "issuer": caller.token.issuer,
            "subject": caller.token.claims.get("sub"),
            "schemas": list(identity.schemas),
            "limits": identity.limits(),
        },
    )

"""The Neon serverless driver's HTTP protocol, `POST /sql`: an unmodified
`@neondatabase/serverless`, and drizzle-orm's `neon-http` on top of it, runs against the
gateway with `neonConfig.fetchEndpoint` pointing here and the token as `authToken`.

A second adapter around the one pipeline: authentication, policy, limits, the transaction
and audit are those of `/v1`. Only the body and headers are read differently, rows are
written as PostgreSQL's text output, and errors as the PostgreSQL-shaped 400s the driver reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.exchange import (
    JSON,
    STATEMENT_ERRORS,
    answer,
    read_json,
    results_body,
    scope_headers,
    statement_from,
    statement_schema,
    until_disconnect,
)
from gateway.api.openapi import (
    NULLABLE_STRING,
    Answer,
    Operation,
    Schema,
    by_status,
    describe,
    listed,
    shared_headers,
)
from gateway.api.results import parse_command_tag
from gateway.db.session import RowField, StatementRun, row_description
from gateway.db.types import json_to_pg_text, neon_json_converter, row_converter
from gateway.errors import ErrorKind, GatewayError, bad_request, response_too_large
from gateway.pipeline import Call, Judged, RequestScope, Statement, TransactionOptions

PATH = "/sql"
ISOLATION_LEVELS = {
    "ReadUncommitted": "read uncommitted",
    "ReadCommitted": "read committed",
    "RepeatableRead": "repeatable read",
    "Serializable": "serializable",
}
# What a browser must be allowed to send and to read (CORS): the driver's headers, and the
# pool opt-in that drivers 0.4.26 to 0.8 sent.
REQUEST_HEADERS = (
    "Neon-Connection-String",
    "Neon-Raw-Text-Output",
    "Neon-Array-Mode",
    "Neon-Batch-Isolation-Level",
    "Neon-Batch-Read-Only",
    "Neon-Batch-Deferrable",
    "Neon-Pool-Opt-In",
)
RESPONSE_HEADERS = ("Neon-Request-Id", "Neon-Batch-Isolation-Level", "Neon-Batch-Read-Only", "Neon-Batch-Deferrable")

# The driver reads the body of a 400 only, so everything wrong with the statement is a 400:
# PostgreSQL's errors, serialization failures (40001, safe to retry), statement timeouts
# (57014), a cancelled query, bad parameters, and policy denials (as 42501). Failures of the
# caller (401, 403 no_identity), of capacity (429, 503) and of size (413, 507) keep their
# status and get a short body, which the driver shows in its message.
STATEMENT_FAILURES = frozenset({400, 409, 499, 504})
INSUFFICIENT_PRIVILEGE = "42501"
# The proxy's error keys after `message` and `code`, in its order, and the field of
# PostgreSQL's error (as `translate_error` keeps them in `pg_fields`) each one carries.
ERROR_KEYS = {
    "detail": "detail",
    "hint": "hint",
    "position": "position",
    "internalPosition": "internal_position",
    "internalQuery": "internal_query",
    "severity": "severity",
    "where": "context",
    "table": "table_name",
    "column": "column_name",
    "schema": "schema_name",
    "dataType": "data_type_name",
    "constraint": "constraint_name",
    "file": "server_source_filename",
    "line": "server_source_line",
    "routine": "server_source_function",
}


# ---------------------------------------------------------------------------- request


@dataclass(frozen=True)
class NeonQuery:
    statement: Statement
    array_mode: bool


@dataclass(frozen=True)
class NeonRequest:
    queries: list[NeonQuery]
    batch: bool
    raw_text: bool
    transaction: TransactionOptions
    echo: dict[str, str]  # the batch headers the proxy repeats on its answer


QUERY_SCHEMA = statement_schema("query", arrayMode={"type": "boolean", "description": "this query's rows as arrays"})
# `decode`'s two bodies, told apart as it tells them: a body with "query" is a single query.
REQUEST_SCHEMA = {
    "anyOf": [
        QUERY_SCHEMA,
        {
            "type": "object",
            "required": ["queries"],
            "not": {"required": ["query"]},
            "properties": {"queries": {"type": "array", "items": QUERY_SCHEMA}},
        },
    ],
    "examples": [
        {"query": "select $1::int4 as n", "params": ["7"]},
        {
            "queries": [
                {"query": "select 1 as one"},
                {"query": "select $1::text as t", "params": ["x"], "arrayMode": True},
            ]
        },
    ],
}
FLAG = {"type": "string", "description": "only the exact value true turns it on"}
HEADERS = (
    {
        "name": "Neon-Connection-String",
        "in": "header",
        "description": "sent by the driver and otherwise ignored; a value that is not a postgres URL is refused",
        "schema": {"type": "string", "pattern": "^postgres(ql)?:"},
    },
    {"name": "Neon-Raw-Text-Output", "in": "header", "schema": FLAG},
    {"name": "Neon-Array-Mode", "in": "header", "schema": FLAG},
    {"name": "Neon-Batch-Isolation-Level", "in": "header", "schema": {"enum": list(ISOLATION_LEVELS)}},
    {"name": "Neon-Batch-Read-Only", "in": "header", "schema": FLAG},
    {"name": "Neon-Batch-Deferrable", "in": "header", "schema": FLAG},
)


def decode(headers: Headers, body: Any, max_depth: int) -> NeonRequest:
    """A single query `{query, params, arrayMode?}` or a batch `{queries: [...]}` (tried in
    that order, as the proxy does), shaped by the Neon headers; parameters nest at most
    `max_depth` levels."""
    check_connection_string(headers.get("neon-connection-string"))
    array_mode = _flag(headers, "neon-array-mode")
    raw_text = _flag(headers, "neon-raw-text-output")
    transaction, echo = _batch_options(headers)
    if isinstance(body, dict) and "query" in body:
        return NeonRequest([_query(body, array_mode, max_depth, "body")], False, raw_text, TransactionOptions(), {})
    if isinstance(body, dict) and isinstance(body.get("queries"), list):
        queries = [_query(item, array_mode, max_depth, f"queries[{i}]") for i, item in enumerate(body["queries"])]
        return NeonRequest(queries, True, raw_text, transaction, echo)
    raise bad_request('could not parse the HTTP request body: expected {"query", "params"} or {"queries": [...]}')


def _query(item: Any, array_mode: bool, max_depth: int, where: str) -> NeonQuery:
    statement = statement_from(item, max_depth, where, sql_key="query")
    mode = item.get("arrayMode", array_mode)
    if not isinstance(mode, bool):
        raise bad_request(f'{where}: "arrayMode" must be true or false')
    return NeonQuery(Statement(statement.sql, [json_to_pg_text(value) for value in statement.params]), mode)


def check_connection_string(value: str | None) -> None:
    """The driver always sends its connection string; the gateway takes nothing from it. The
    user and password are not credentials here (the bearer token is), and the database is the
    configured one whatever it names, so none of it is decoded. A value that is not a
    postgres URL is refused as the proxy refuses it: a client misconfigured against the
    gateway fails as it would against Neon. Absent is fine (curl)."""
    if value is None:
        return
    try:
        scheme = urlsplit(value).scheme
    except ValueError:
        scheme = ""
    if scheme not in ("postgres", "postgresql"):
        raise bad_request("invalid connection string: expected a postgres:// or postgresql:// URL")


def _flag(headers: Headers, name: str) -> bool:
    """Only the exact value `true` is true, as in the proxy."""
    return headers.get(name) == "true"


def _batch_options(headers: Headers) -> tuple[TransactionOptions, dict[str, str]]:
    level = headers.get("neon-batch-isolation-level")
    if level is not None and level not in ISOLATION_LEVELS:
        raise bad_request("invalid isolation level")
    read_only = _flag(headers, "neon-batch-read-only")
    deferrable = _flag(headers, "neon-batch-deferrable")
    options = TransactionOptions(read_only=read_only, deferrable=deferrable)
    echo = {}
    if level is not None:
        options = TransactionOptions(ISOLATION_LEVELS[level], read_only, deferrable)
        echo["Neon-Batch-Isolation-Level"] = level
    if read_only:
        echo["Neon-Batch-Read-Only"] = "true"
    if deferrable:
        echo["Neon-Batch-Deferrable"] = "true"
    return options, echo


# ---------------------------------------------------------------------------- endpoint


async def sql(request: Request) -> Response:
    return await answer(request, PATH, _sql, on_error=error_response)


async def _sql(request: Request, scope: RequestScope) -> Response:
    neon = decode(request.headers, await read_json(request), scope.pipeline.config.server.max_param_depth)
    statements = [query.statement for query in neon.queries]
    call = Call(request.headers.get("authorization"), statements, neon.transaction, may_hold=False)
    results = ResultEncoder(scope, neon.raw_text, [query.array_mode for query in neon.queries])
    await until_disconnect(request, scope.execute(call, results))
    parts = results.parts
    body = results_body(parts) if neon.batch else memoryview(parts[0])  # sent as it is, not copied
    scope.record.bytes += len(body)
    return Response(body, media_type=JSON, headers={**_headers(scope), **neon.echo})


async def preflight(request: Request) -> Response:
    """`OPTIONS /sql` answers 200, as the proxy's does. The CORS headers are the app's CORS
    middleware's, for the configured origins only (README: "/sql and CORS")."""
    return Response(status_code=200)


# ---------------------------------------------------------------------------- results


FIELD_SCHEMA = {
    "type": "object",
    "required": ["name", "dataTypeID", "tableID", "columnID", "dataTypeSize", "dataTypeModifier", "format"],
    "properties": {
        "name": {"type": "string"},
        **{
            key: {"type": "integer"}
            for key in ("dataTypeID", "tableID", "columnID", "dataTypeSize", "dataTypeModifier")
        },
        "format": {"const": "text"},
    },
}
RESULT_SCHEMA = {
    "type": "object",
    "required": ["fields", "rows", "command", "rowCount", "rowAsArray"],
    "properties": {
        "fields": {"type": "array", "items": FIELD_SCHEMA},
        "rows": {"type": "array", "items": {"type": ["object", "array"]}},
        "command": {"type": "string"},
        "rowCount": {"type": ["integer", "null"]},
        "rowAsArray": {"type": "boolean"},
    },
}


class ResultEncoder:
    """Results as the proxy writes them, each read whole: the driver knows no truncation, so
    more rows in one result than the identity's `max_rows`, or more bytes in the whole answer
    than its `max_response_bytes`, is a 507."""

    def __init__(self, scope: RequestScope, raw_text: bool, array_modes: list[bool]) -> None:
        self.scope = scope
        self.raw_text = raw_text
        self.array_modes = array_modes  # one per query, in order
        self.parts: list[bytearray] = []
        self.size = 0

    async def take(self, judged: Judged, run: StatementRun) -> bool:
        assert self.scope.caller is not None  # the pipeline runs nothing before authenticating
        identity = self.scope.caller.identity
        array_mode = self.array_modes[len(self.parts)]
        self.parts.append(await self.encode(run, array_mode, identity.max_rows, identity.max_response_bytes))
        return False

    async def encode(self, run: StatementRun, array_mode: bool, max_rows: int, max_bytes: int) -> bytearray:
        """One result, grown in place batch by batch: a large result is held once, not once
        in pieces and again joined."""
        names = [column.name for column in run.columns]
        # Every value is PostgreSQL's text output already: raw text sends it as it is.
        values_of = row_converter(
            [None if self.raw_text else neon_json_converter(column.type) for column in run.columns],
            None if array_mode else names,
        )
        fields = [_field(field) for field in row_description(run)]
        result = bytearray()
        self._append(result, max_bytes, b'{"fields":' + orjson.dumps(fields) + b',"rows":[')
        rows = 0
        async for batch in run.batches():
            rows += len(batch)
            if rows > max_rows:
                raise response_too_large(max_rows, "rows")
            if batch:
                encoded = orjson.dumps(list(map(values_of, batch)))
                if rows > len(batch):
                    self._append(result, max_bytes, b",")
                self._append(result, max_bytes, memoryview(encoded)[1:-1])
        command, count = parse_command_tag(run.command_tag)
        summary = {"command": command, "rowCount": count, "rowAsArray": array_mode}
        self._append(result, max_bytes, b"]," + orjson.dumps(summary)[1:])
        self.scope.record.rows += rows
        return result

    def _append(self, result: bytearray, max_bytes: int, chunk: bytes | memoryview) -> None:
        """The proxy's limit is on the whole answer, a batch's results together."""
        self.size += len(chunk)
        if self.size > max_bytes:
            raise response_too_large(max_bytes)
        result += chunk


def _field(field: RowField) -> dict[str, Any]:
    return {
        "name": field.name.decode(),
        "dataTypeID": field.type_oid,
        "tableID": field.table_oid,
        "columnID": field.column_number,
        "dataTypeSize": field.type_size,
        "dataTypeModifier": field.type_modifier,
        "format": "text",
    }


# ---------------------------------------------------------------------------- errors


def status_of(error: GatewayError | ErrorKind) -> int:
    return 400 if error.status in STATEMENT_FAILURES or error.code == "policy_denied" else error.status


def error_json(error: GatewayError) -> bytes:
    """A 400's body has every key of the proxy's PostgreSQL error (`position` and `line`
    strings; `code` and `severity` empty for an error that is not PostgreSQL's), with
    PostgreSQL's own message where PostgreSQL raised it (a parameter that does not fit is
    named in `where`, PostgreSQL's context); any other status gets a short
    `{"message", "code"}` with the gateway's stable code."""
    if status_of(error) != 400:
        return orjson.dumps({"message": error.message, "code": error.code})
    code = INSUFFICIENT_PRIVILEGE if error.code == "policy_denied" else error.sqlstate or ""
    body = {"message": error.pg_fields.get("message") or error.message, "code": code}
    body.update({key: error.pg_fields.get(name) for key, name in ERROR_KEYS.items()})
    body["severity"] = body["severity"] or ("ERROR" if code else "")
    return orjson.dumps(body)


STATEMENT_ERROR_SCHEMA = {
    "type": "object",
    "required": ["message", "code", *ERROR_KEYS],
    "properties": {
        "message": {"type": "string"},
        "code": {"type": "string", "description": "the SQLSTATE; 42501 for a policy denial"},
        **{key: NULLABLE_STRING for key in ERROR_KEYS},
    },
}


def error_answers(kinds: Sequence[ErrorKind]) -> dict[int, Answer]:
    """`/sql`'s errors as `error_json` writes them: a statement's failures are the 400s the
    driver reads, in PostgreSQL's shape; the others keep their status, with a short body."""
    answers = {}
    for status, group in by_status(kinds, status_of).items():
        short = {
            "type": "object",
            "required": ["message", "code"],
            "properties": {"message": {"type": "string"}, "code": {"enum": [kind.code for kind in group]}},
        }
        schema: Schema = STATEMENT_ERROR_SCHEMA if status == 400 else short
        answers[status] = Answer.json(describe(group), schema, (*shared_headers(group), "Neon-Request-Id"))
    return answers


OPERATION = Operation(
    "The Neon serverless driver's HTTP protocol: one query, or a batch in one transaction",
    {
        200: Answer.json(
            "the result, or {results: [...]} for a batch",
            {
                "anyOf": [
                    RESULT_SCHEMA,
                    listed("results", RESULT_SCHEMA),
                ]
            },
            ("Neon-Request-Id",),
        )
    },
    (*STATEMENT_ERRORS, "response_too_large"),
    request=REQUEST_SCHEMA,
    parameters=HEADERS,
    error_shape=error_answers,
)


def error_response(scope: RequestScope, error: GatewayError) -> Response:
    scope.fail(error)
    status = scope.record.status = status_of(error)
    headers = {**_headers(scope), **error.headers}
    return Response(error_json(error), status_code=status, media_type=JSON, headers=headers)


def _headers(scope: RequestScope) -> dict[str, str]:
    """The proxy's `Neon-Request-Id` too, on every answer from `/sql`."""
    return {**scope_headers(scope), "Neon-Request-Id": scope.request_id}

"""The MCP endpoint's tools — `query`, `explain`, `list_tables`, `describe_table` — as an
agent sees them (descriptions that teach this gateway's SQL, input schemas) and as they run:
arguments decoded into pipeline statements, the pipeline's results and errors encoded as
tool results. A denial, a database error or a limit is a tool error (`isError`) whose text
is `/v1`'s error body, so an agent reads why and can correct its statement.

Each call runs in the request scope of the POST that carries it (`gateway.api.mcp`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import mcp_types as types
import orjson

from gateway.api.exchange import CUT_BY_SERVER, WholeResults, statement_from, unforeseen
from gateway.api.results import error_body
from gateway.catalog import CatalogSnapshot
from gateway.errors import GatewayError, bad_request, not_found
from gateway.identity import Identity
from gateway.pipeline import Call, RequestScope, Statement
from gateway.policy.readable import ReadableRelation, readable_relation, readable_relations

INSTRUCTIONS = """\
A PostgreSQL database behind edge-sql-gateway. Every call runs as the identity your bearer token \
maps to: its database role, the tables and columns its rules allow, its row limits; every call is \
audited. Start with list_tables (what you may read), then describe_table; check a statement with \
explain; run it with query. Write one PostgreSQL statement per call, with $1, $2, ... placeholders \
and the values in params — never values inside the SQL text."""

SQL_GUIDE = """\
Write exactly one statement in PostgreSQL's dialect. Never put values into the SQL text: write \
placeholders $1, $2, ... $n — numbered from 1, none skipped, each used — and pass the values in \
"params" in that order, exactly n of them. A JSON string fits a parameter of any type (PostgreSQL \
reads it: "2024-05-01", "12.50"); numbers, booleans and null go as they are, \
arrays for array types, objects for json/jsonb. Example: {"sql": "select id, total from orders \
where status = $1 and created_at >= $2 order by id limit $3", "params": ["new", "2024-05-01", 20]}.

Use only the tables list_tables shows. Where it shows some columns of a table, name those columns: \
SELECT *, whole-row references (select o from orders o, row_to_json(o)) and other columns are \
refused. Never allowed, for anyone: several statements in one call, SET, BEGIN/COMMIT/ROLLBACK, \
COPY, DO, CALL, LISTEN/NOTIFY, LOCK, VACUUM, PREPARE/EXECUTE. Functions outside a list of safe \
built-ins (aggregates, string, math, date/time, json builders, arrays) are refused unless your \
identity allows them."""

QUERY = f"""\
Run one SQL statement and get its result. Each call is a transaction of its own, committed when \
it succeeds.

{SQL_GUIDE}

The result: {{"columns": [{{"name", "type"}}], "rows": [{{column: value}}], "command", "rowCount", \
"truncated"}}. bigint and numeric come back as strings (exact), json as JSON, timestamps as ISO \
8601. Rows past your identity's max_rows or max_response_bytes are cut and "truncated" is true: \
narrow the query (WHERE, fewer columns, LIMIT/OFFSET) to see the rest. A refused statement or a \
database error is a tool error whose text is {{"error": {{"code", "message", "sqlstate", \
"detail", "hint", "position"}}}}: "message" says why (a refusal names the rule that would allow \
it); correct the statement and call again. "rate_limited" and "overloaded" errors say when to \
retry ("retryAfter", in seconds). A statement a rule holds for approval is not run, and not an \
error: the result is {{"approval": {{"id", "status": "pending", "expiresAt", "statement", \
"identity"}}, "message"}}; it runs once an approver approves it."""

EXPLAIN = f"""\
The gateway's decision on one statement, without running it: {{"allowed", "reason" (why not, or \
null), "kind", "tables", "columns", "functions", "approval" (null, or who must approve it before \
it runs: query then answers with a pending approval's id)}}. The same arguments and the same checks as \
query, up to the database: a statement explain allows may still fail there (a constraint, a \
value that does not fit its type).

{SQL_GUIDE}"""

LIST_TABLES = """\
The tables and views your identity may read, each with the columns it may read: {"tables": \
[{"name": "schema.table", "kind", "columns": [...]}]}. Nothing else exists for you; where only \
some columns of a table are listed, only those may be used. describe_table gives column types \
and keys."""

DESCRIBE_TABLE = """\
One table or view that list_tables shows: {"name", "kind", "columns": [{"name", "type", \
"nullable"}], "primaryKey": [...], "foreignKeys": [{"columns", "references", \
"referencedColumns"}]}. "table" is "schema.table" as list_tables writes it, or a table name alone \
(resolved as PostgreSQL resolves it for you). Columns and keys you may not read are left out; a \
table you may not read is not found."""

STATEMENT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "sql": {"type": "string", "description": "one PostgreSQL statement with $1..$n placeholders"},
        "params": {"type": "array", "items": {}, "description": "the values of $1..$n, in order"},
    },
    "required": ["sql"],
}
READS = types.ToolAnnotations(read_only_hint=True, open_world_hint=False)

Run = Callable[[RequestScope, str | None, dict[str, Any]], Awaitable[bytes]]  # -> the result as JSON


@dataclass(frozen=True)
class Tool:
    definition: types.Tool
    run: Run


async def run_tool(
    scope: RequestScope, authorization: str | None, tool: Tool, arguments: dict[str, Any]
) -> types.CallToolResult:
    """One tool call in `scope`: its result, or its failure as a tool error. The audit record
    names the tool; its status is the one `/v1` would answer."""
    scope.record.mcpTool = tool.definition.name
    try:
        body = await tool.run(scope, authorization, arguments)
    except GatewayError as error:
        return _tool_error(scope, error)
    except asyncio.CancelledError:  # the shutdown's grace period ran out
        scope.record.status = CUT_BY_SERVER
        raise
    except Exception:
        return _tool_error(scope, unforeseen(scope))
    scope.record.status = scope.record.status or 200  # 202: held for approval
    return types.CallToolResult(content=[types.TextContent(text=body.decode())], structured_content=orjson.loads(body))


def _tool_error(scope: RequestScope, error: GatewayError) -> types.CallToolResult:
    """`/v1`'s error body, and a limit's Retry-After as `retryAfter`."""
    scope.fail(error)
    body = error_body(error, scope.request_id)
    if "Retry-After" in error.headers:
        body["retryAfter"] = int(error.headers["Retry-After"])
    return types.CallToolResult(content=[types.TextContent(text=orjson.dumps({"error": body}).decode())], is_error=True)


def _statement(scope: RequestScope, arguments: dict[str, Any]) -> Statement:
    return statement_from(arguments, scope.pipeline.config.server.max_param_depth, "arguments")


# ---------------------------------------------------------------------------- query and explain


async def _query(scope: RequestScope, authorization: str | None, arguments: dict[str, Any]) -> bytes:
    # Read whole within the caller's limits (cut short, it says `truncated`), in /v1/query's
    # JSON shape; committed before the tool answers.
    results = WholeResults(scope, array_rows=False)
    pending = await scope.execute(Call(authorization, [_statement(scope, arguments)]), results)
    if pending is not None:
        # Not an error: the statement is held, and runs once an approver approves it.
        message = (
            f"The statement awaits approval (id {pending.id}) by {', '.join(pending.approvers)}; it runs once "
            f"approved, before {pending.expires_at}. Its requester fetches the result with "
            f"GET /v1/approvals/{pending.id}."
        )
        return orjson.dumps({"approval": pending.summary(), "message": message})
    return results.parts[0]


async def _explain(scope: RequestScope, authorization: str | None, arguments: dict[str, Any]) -> bytes:
    await scope.authenticate(authorization)
    judged = await scope.explain(_statement(scope, arguments))
    return orjson.dumps(judged.verdict())


# ---------------------------------------------------------------------------- the catalog


async def _readable_catalog(scope: RequestScope, authorization: str | None) -> tuple[Identity, CatalogSnapshot]:
    """The caller's identity and the catalog snapshot, never older than DDL the gateway committed."""
    caller = await scope.authenticate(authorization)
    keeper = scope.pipeline.catalog
    await keeper.settled()
    assert keeper.snapshot is not None  # read at start, before the first request
    return caller.identity, keeper.snapshot


async def _list_tables(scope: RequestScope, authorization: str | None, arguments: dict[str, Any]) -> bytes:
    identity, catalog = await _readable_catalog(scope, authorization)
    return orjson.dumps({"tables": [_listing(relation) for relation in readable_relations(identity, catalog)]})


async def _describe_table(scope: RequestScope, authorization: str | None, arguments: dict[str, Any]) -> bytes:
    name = arguments.get("table")
    if not isinstance(name, str):
        raise bad_request('arguments: "table" must be a string, a name list_tables gives')
    identity, catalog = await _readable_catalog(scope, authorization)
    relation = readable_relation(identity, catalog, name)
    if relation is None:  # whether it exists is not told
        raise not_found(f'no table "{name}" among those identity "{identity.name}" may read; list_tables names them')
    scope.record.tables = [relation.name]
    return orjson.dumps(_description(relation))


def _listing(relation: ReadableRelation) -> dict[str, Any]:
    return {
        "name": relation.name,
        "kind": relation.shape.kind,
        "columns": [column.name for column in relation.shape.columns],
    }


def _description(relation: ReadableRelation) -> dict[str, Any]:
    shape = relation.shape
    return {
        "name": relation.name,
        "kind": shape.kind,
        "columns": [
            {"name": column.name, "type": column.type, "nullable": column.nullable} for column in shape.columns
        ],
        "primaryKey": list(shape.primary_key),
        "foreignKeys": [
            {
                "columns": list(key.columns),
                "references": ".".join(key.references),
                "referencedColumns": list(key.referenced_columns),
            }
            for key in shape.foreign_keys
        ],
    }


# ---------------------------------------------------------------------------- the tool list


TOOLS: dict[str, Tool] = {
    tool.definition.name: tool
    for tool in (
        Tool(
            types.Tool(
                name="query",
                description=QUERY,
                input_schema=STATEMENT_SCHEMA,
                annotations=types.ToolAnnotations(read_only_hint=False, open_world_hint=False),
            ),
            _query,
        ),
        Tool(
            types.Tool(name="explain", description=EXPLAIN, input_schema=STATEMENT_SCHEMA, annotations=READS),
            _explain,
        ),
        Tool(
            types.Tool(
                name="list_tables",
                description=LIST_TABLES,
                input_schema={"type": "object", "properties": {}},
                annotations=READS,
            ),
            _list_tables,
        ),
        Tool(
            types.Tool(
                name="describe_table",
                description=DESCRIBE_TABLE,
                input_schema={
                    "type": "object",
                    "properties": {"table": {"type": "string", "description": '"schema.table", or a table name'}},
                    "required": ["table"],
                },
                annotations=READS,
            ),
            _describe_table,
        ),
    )
}

"""The MCP endpoint (`POST /mcp`): the official MCP Python client over Streamable HTTP against
a real `gateway serve` and PostgreSQL. The same identities, policy, limits and audit as `/v1`:
no token, no session; a session is its caller's; each identity sees only what it may read;
denials and database errors come back as tool errors an agent can act on.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import httpx2
import mcp_types as types
import orjson
import pytest
from mcp.client.client import Client
from mcp.client.session import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from conftest import GatewayProcess, eventually, run

# Beside the suite's identities: one whose rules narrow a table's columns, one that may run a
# statement a minute.
IDENTITIES = """
[[identities]]
name = "clerk"
issuer = "dev"
match = { sub = "clerk" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders", "public.customers"]
  columns = { "public.customers" = ["id", "name"] }

[[identities]]
name = "hasty"
issuer = "dev"
match = { sub = "hasty" }
role = "demo_reader"
rate = "1/m"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]
"""
SESSION = "mcp-session-id"


@pytest.fixture(scope="module")
def gateway(launch_gateway: Callable[..., GatewayProcess], gateway_config: Callable[..., str]) -> GatewayProcess:
    return launch_gateway(config_text=gateway_config(IDENTITIES))


@asynccontextmanager
async def mcp_session(gateway: GatewayProcess, token: str | None, client: str = "test-agent",
                      request_id: str | None = None) -> AsyncIterator[tuple[ClientSession, dict[str, str]]]:
    """An initialized MCP session as the official client opens it, and the headers of the
    gateway's answers (the session id among them)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if request_id:
        headers["X-Request-Id"] = request_id
    answered: dict[str, str] = {}

    async def keep_headers(response: httpx2.Response) -> None:
        answered.update(response.headers)

    async with (
        httpx2.AsyncClient(headers=headers, event_hooks={"response": [keep_headers]}) as http,
        streamable_http_client(f"{gateway.url}/mcp", http_client=http) as (read, write),
        ClientSession(read, write, client_info=types.Implementation(name=client, version="1.0")) as session,
    ):
        await session.initialize()
        yield session, answered


def call(gateway: GatewayProcess, token: str | None, tool: str, arguments: dict[str, Any] | None = None,
         **options: Any) -> types.CallToolResult:
    async def calling() -> types.CallToolResult:
        async with mcp_session(gateway, token, **options) as (session, _):
            return await session.call_tool(tool, arguments or {})

    return run(calling())


def error_of(result: types.CallToolResult) -> dict[str, Any]:
    assert result.is_error, result
    (content,) = result.content
    assert isinstance(content, types.TextContent)
    return orjson.loads(content.text)["error"]


def audit_records(gateway: GatewayProcess, request_id: str) -> list[dict[str, Any]]:
    lines = [line for line in gateway.output().splitlines() if f'"requestId":"{request_id}"' in line]
    return [orjson.loads(line) for line in lines]


def tool_record(gateway: GatewayProcess, request_id: str) -> dict[str, Any]:
    def found() -> list[dict[str, Any]]:
        return [record for record in audit_records(gateway, request_id) if record["mcpTool"]]

    (record,) = eventually(found, "the tool call's audit record")
    return record


# ---------------------------------------------------------------------------- the caller


def test_initialize_names_the_gateway_and_opens_a_session(gateway, mint):
    async def initialize() -> tuple[types.InitializeResult, dict[str, str]]:
        async with mcp_session(gateway, mint("writer")) as (session, headers):
            assert session.initialize_result is not None
            return session.initialize_result, headers

    result, headers = run(initialize())
    assert result.server_info.name == "edge-sql-gateway"
    assert result.capabilities.tools is not None
    assert headers[SESSION].startswith("gw1.")


def test_without_a_token_the_official_client_gets_no_session(gateway):
    async def initialize() -> None:
        async with mcp_session(gateway, None):
            pass

    with pytest.RaisesGroup(MCPError, flatten_subgroups=True):
        run(initialize())


@pytest.mark.parametrize(("subject", "status", "code"),
                         [(None, 401, "unauthenticated"), ("nobody", 403, "no_identity")])
def test_a_caller_without_an_identity_is_refused_before_the_sdk_in_the_v1_error_shape(
    gateway, http, mint, subject, status, code
):
    headers = {"Accept": "application/json, text/event-stream", "X-Request-Id": f"mcp-refused-{status}"}
    if subject:
        headers["Authorization"] = f"Bearer {mint(subject)}"
    body = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}
    response = http.post(f"{gateway.url}/mcp", json=body, headers=headers)
    assert response.status_code == status
    assert response.json()["error"]["code"] == code
    if status == 401:
        assert response.headers["www-authenticate"].startswith("Bearer ")
    (record,) = eventually(lambda: audit_records(gateway, f"mcp-refused-{status}"), "the audit record")
    assert (record["channel"], record["status"]) == ("mcp", status)


def test_a_session_is_not_usable_with_the_token_of_another_identity(gateway, http, mint):
    writer = mint("writer")

    async def open_session() -> str:
        async with mcp_session(gateway, writer) as (_, headers):
            return headers[SESSION]

    session_id = run(open_session())
    body = {"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "list_tables", "arguments": {}}}

    def post_as(token: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json, text/event-stream",
                   "Mcp-Session-Id": session_id, "Mcp-Protocol-Version": "2025-11-25"}
        return http.post(f"{gateway.url}/mcp", json=body, headers=headers)

    assert post_as(writer).status_code == 200
    refused = post_as(mint("reader"))
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found"


def test_a_body_over_the_limit_is_refused_in_the_v1_error_shape(gateway, http, mint):
    def chunks():  # no Content-Length: refused while it is read
        yield b'{"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {"pad": "'
        for _ in range(1100):
            yield b"x" * 1024
        yield b'"}}'

    headers = {"Authorization": f"Bearer {mint('writer')}", "Accept": "application/json, text/event-stream"}
    response = http.post(f"{gateway.url}/mcp", content=chunks(), headers=headers)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


# ---------------------------------------------------------------------------- the tools


def test_the_tools_teach_parameterized_sql(gateway, mint):
    async def tools() -> list[types.Tool]:
        async with mcp_session(gateway, mint("writer")) as (session, _):
            return (await session.list_tools()).tools

    listed = {tool.name: tool for tool in run(tools())}
    assert set(listed) == {"query", "explain", "list_tables", "describe_table"}
    for name in ("query", "explain"):
        assert "$1" in listed[name].description and '"params"' in listed[name].description
        assert listed[name].input_schema["required"] == ["sql"]
    assert listed["list_tables"].annotations.read_only_hint
    assert not listed["query"].annotations.read_only_hint


def test_query_runs_a_parameterized_statement_as_the_caller(gateway, mint):
    result = call(gateway, mint("writer", tenant="acme"), "query",
                  {"sql": "select id, status from orders where status = $1 order by id", "params": ["shipped"]})
    assert not result.is_error
    assert result.structured_content == {
        "columns": [{"name": "id", "type": "int8"}, {"name": "status", "type": "text"}],
        "rows": [{"id": "1", "status": "shipped"}],  # row-level security: acme's only
        "command": "SELECT", "rowCount": 1, "truncated": False,
    }
    (text,) = result.content
    assert isinstance(text, types.TextContent) and orjson.loads(text.text) == result.structured_content


def test_query_rows_stop_at_the_identity_limit_and_say_truncated(gateway, mint):
    result = call(gateway, mint("limited", tenant="acme"), "query", {"sql": "select g from generate_series(1, 50) g"})
    assert result.structured_content["truncated"] is True
    assert result.structured_content["rowCount"] == 5 == len(result.structured_content["rows"])


def test_a_denial_is_a_tool_error_carrying_the_policy_reason(gateway, mint):
    result = call(gateway, mint("writer"), "query", {"sql": "delete from orders where id = $1", "params": [1]})
    error = error_of(result)
    assert error["code"] == "policy_denied"
    assert error["message"].startswith('DELETE on public.orders is not allowed for identity "writer"')


def test_a_database_error_is_a_tool_error_carrying_sqlstate_and_message(gateway, mint):
    result = call(gateway, mint("writer", tenant="acme"), "query", {"sql": "select 1 / (id - id) from orders"})
    error = error_of(result)
    assert (error["code"], error["sqlstate"], error["postgresMessage"]) == ("sql_error", "22012", "division by zero")


def test_a_rate_limit_is_a_tool_error_saying_when_to_retry(gateway, mint):
    async def twice() -> list[types.CallToolResult]:
        async with mcp_session(gateway, mint("hasty", tenant="acme")) as (session, _):
            return [await session.call_tool("query", {"sql": "select id from orders"}) for _ in range(2)]

    first, second = run(twice())
    assert not first.is_error
    error = error_of(second)
    assert error["code"] == "rate_limited"
    assert 1 <= error["retryAfter"] <= 60


def test_explain_gives_the_verdict_of_v1_explain(gateway, mint, http):
    token = mint("writer")
    statement = {"sql": "update orders set note = $1 where id = $2", "params": ["x", 1]}
    result = call(gateway, token, "explain", statement)
    v1 = http.post(f"{gateway.url}/v1/explain", json=statement, headers={"Authorization": f"Bearer {token}"})
    assert result.structured_content == v1.json()
    assert result.structured_content["allowed"] is True
    denied = call(gateway, token, "explain", {"sql": "delete from orders"}).structured_content
    assert denied["allowed"] is False and "DELETE on public.orders" in denied["reason"]


def tables(gateway: GatewayProcess, token: str) -> dict[str, list[str]]:
    listed = call(gateway, token, "list_tables").structured_content["tables"]
    return {table["name"]: table["columns"] for table in listed}


def test_list_tables_shows_only_what_the_identity_may_read(gateway, mint):
    assert set(tables(gateway, mint("writer"))) == {"public.customers", "public.ledger", "public.moods",
                                                    "public.orders"}
    assert "public.secrets" in tables(gateway, mint("reader"))  # another identity, other tables


def test_list_tables_shows_only_the_columns_a_rule_narrows_to(gateway, mint):
    listed = tables(gateway, mint("clerk"))
    assert listed["public.customers"] == ["id", "name"]
    assert "created_at" in listed["public.orders"]


def test_describe_table_gives_types_and_keys(gateway, mint):
    described = call(gateway, mint("writer"), "describe_table", {"table": "orders"}).structured_content
    assert described["name"] == "public.orders"
    assert {"name": "total", "type": "numeric(12,2)", "nullable": False} in described["columns"]
    assert described["primaryKey"] == ["id"]
    assert described["foreignKeys"] == [
        {"columns": ["customer_id"], "references": "public.customers", "referencedColumns": ["id"]}
    ]
    narrowed = call(gateway, mint("clerk"), "describe_table", {"table": "public.customers"}).structured_content
    assert [column["name"] for column in narrowed["columns"]] == ["id", "name"]


def test_a_table_the_identity_may_not_read_is_not_found_like_one_that_does_not_exist(gateway, mint):
    token = mint("writer")
    hidden = error_of(call(gateway, token, "describe_table", {"table": "public.secrets"}))
    missing = error_of(call(gateway, token, "describe_table", {"table": "public.nowhere"}))
    assert hidden["code"] == missing["code"] == "not_found"
    assert hidden["message"].replace("secrets", "nowhere") == missing["message"]


# ---------------------------------------------------------------------------- the audit


def test_a_tool_call_is_audited_with_channel_mcp_and_the_client_name(gateway, mint):
    request_id = f"mcp-audit-{secrets.token_hex(4)}"
    call(gateway, mint("writer", tenant="acme"), "query", {"sql": "select id from orders where id = $1", "params": [1]},
         client="audit-agent", request_id=request_id)
    record = tool_record(gateway, request_id)
    assert (record["channel"], record["mcpClient"], record["mcpMethod"], record["mcpTool"]) == (
        "mcp", "audit-agent", "tools/call", "query")
    assert (record["identity"], record["kind"], record["tables"], record["decision"]) == (
        "writer", "select", ["public.orders"], "allow")
    assert (record["status"], record["rows"]) == (200, 1)


def test_a_denied_tool_call_is_audited_as_v1_would_audit_it(gateway, mint):
    request_id = f"mcp-denied-{secrets.token_hex(4)}"
    call(gateway, mint("writer"), "query", {"sql": "delete from orders"}, request_id=request_id)
    record = tool_record(gateway, request_id)
    assert (record["status"], record["decision"], record["mcpTool"]) == (403, "deny", "query")
    assert record["reason"].startswith("DELETE on public.orders")


def test_a_client_of_the_stateless_protocol_names_itself_on_every_request(gateway, mint):
    request_id = f"mcp-modern-{secrets.token_hex(4)}"

    async def list_tables() -> types.CallToolResult:
        headers = {"Authorization": f"Bearer {mint('reader')}", "X-Request-Id": request_id}
        async with (
            httpx2.AsyncClient(headers=headers) as http,
            Client(streamable_http_client(f"{gateway.url}/mcp", http_client=http),
                   client_info=types.Implementation(name="modern-agent", version="2.0")) as client,
        ):
            return await client.call_tool("list_tables", {})

    result = run(list_tables())
    assert "public.secrets" in {table["name"] for table in result.structured_content["tables"]}
    record = tool_record(gateway, request_id)
    assert (record["mcpClient"], record["mcpTool"], record["identity"]) == ("modern-agent", "list_tables", "reader")

"""The native API over HTTP: /v1/query row modes and response shape, command tags,
the headers every response carries, /v1/explain, /v1/whoami, health, and JSON answers for
unknown paths and methods."""

from __future__ import annotations

import re
import uuid

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

SERVER_TIMING_PART = re.compile(r"^(\w+);dur=(\d+(?:\.\d+)?)$")
# Each example is two requests to the shared gateway; derandomised, so a failure reproduces.
PARITY_SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                           suppress_health_check=[HealthCheck.too_slow])


def server_timing(response) -> dict[str, float]:
    parts = [SERVER_TIMING_PART.match(part.strip()) for part in response.headers["server-timing"].split(",")]
    assert all(parts), response.headers["server-timing"]
    return {match.group(1): float(match.group(2)) for match in parts}


# ---------------------------------------------------------------------------- /v1/query


def test_query_returns_rows_as_objects_by_default(writer):
    response = writer.query("select id, status, total from orders where id in (1, 2) order by id")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {
        "command": "SELECT",
        "rowCount": 2,
        "columns": [{"name": "id", "type": "int8"}, {"name": "status", "type": "text"},
                    {"name": "total", "type": "numeric"}],
        "rows": [{"id": "1", "status": "shipped", "total": "12.50"}, {"id": "2", "status": "new", "total": "3.00"}],
        "truncated": False,
    }


def test_query_returns_rows_as_arrays_in_array_mode(writer):
    response = writer.query("select id, status from orders where id in (1, 2) order by id", rowMode="array")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rows"] == [["1", "shipped"], ["2", "new"]]
    assert body["columns"] == [{"name": "id", "type": "int8"}, {"name": "status", "type": "text"}]


def test_array_mode_keeps_columns_with_the_same_name(writer):
    response = writer.query("select 1 as n, 2 as n", rowMode="array")
    assert response.json()["rows"] == [[1, 2]]
    assert [column["name"] for column in response.json()["columns"]] == ["n", "n"]


def test_query_with_no_rows_has_an_empty_row_list(writer):
    response = writer.query("select id from orders where id = -1")
    assert response.status_code == 200, response.text
    assert response.json() == {"command": "SELECT", "rowCount": 0, "columns": [{"name": "id", "type": "int8"}],
                               "rows": [], "truncated": False}


def test_query_binds_parameters(writer):
    response = writer.query("select status from orders where id = $1 and status = $2", 1, "shipped")
    assert response.json()["rows"] == [{"status": "shipped"}]


def test_params_may_be_omitted_for_a_statement_without_parameters(writer):
    response = writer.post("/v1/query", {"sql": "select 1 as one"})
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"one": 1}]


def test_insert_row_count_comes_from_the_command_tag(writer):
    notes = [f"query-insert-{uuid.uuid4()}" for _ in range(3)]
    response = writer.query("insert into ledger (note) values ($1), ($2), ($3)", *notes)
    assert response.status_code == 200, response.text
    assert response.json() == {"command": "INSERT", "rowCount": 3, "columns": [], "rows": [], "truncated": False}


def test_insert_returning_returns_the_new_rows(writer):
    note = f"query-returning-{uuid.uuid4()}"
    response = writer.query("insert into ledger (note) values ($1) returning note", note)
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["command"], body["rowCount"], body["rows"]) == ("INSERT", 1, [{"note": note}])


def test_update_row_count_comes_from_the_command_tag(writer):
    response = writer.query("update orders set status = status where id in (1, 2)")
    assert response.status_code == 200, response.text
    assert response.json() == {"command": "UPDATE", "rowCount": 2, "columns": [], "rows": [], "truncated": False}


# ---------------------------------------------------------------------------- headers on every response


def test_a_sane_request_id_is_echoed(writer):
    response = writer.post("/v1/query", {"sql": "select 1"}, headers={"X-Request-Id": "edge-42.a_b:c-d"})
    assert response.headers["x-request-id"] == "edge-42.a_b:c-d"


@pytest.mark.parametrize("insane", ["has spaces", "x" * 65, "quote\"d", "semi;colon", ""])
def test_an_insane_request_id_is_replaced(writer, insane):
    response = writer.post("/v1/query", {"sql": "select 1"}, headers={"X-Request-Id": insane})
    assert response.status_code == 200, response.text
    assert re.fullmatch(r"[0-9a-f]{16}", response.headers["x-request-id"])


def test_a_request_without_an_id_gets_a_new_one_each_time(writer):
    first = writer.query("select 1").headers["x-request-id"]
    second = writer.query("select 1").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{16}", first) and first != second


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/query", {"sql": "select 1"}),
        ("POST", "/v1/query", {"sql": "delete from orders"}),
        ("POST", "/v1/query", {"sql": 1}),
        ("POST", "/v1/batch", {"statements": [{"sql": "select 1"}]}),
        ("POST", "/v1/explain", {"sql": "select 1"}),
        ("GET", "/v1/whoami", None),
        ("GET", "/healthz", None),
        ("GET", "/readyz", None),
        ("GET", "/no/such/path", None),
        ("GET", "/v1/query", None),
    ],
)
def test_every_response_carries_the_request_id(writer, method, path, body):
    headers = {"Authorization": f"Bearer {writer.token}", "X-Request-Id": "every-response-1"}
    response = writer.client.request(method, writer.base + path, json=body, headers=headers)
    assert response.headers.get("x-request-id") == "every-response-1", (response.status_code, response.headers)


def test_an_unauthenticated_response_carries_the_request_id(api_as):
    response = api_as(None).post("/v1/query", {"sql": "select 1"}, headers={"X-Request-Id": "no-token-1"})
    assert response.status_code == 401
    assert response.headers["x-request-id"] == "no-token-1"
    assert response.json()["error"]["requestId"] == "no-token-1"


def test_the_error_body_names_the_request_id(writer):
    response = writer.post("/v1/query", {"sql": "delete from orders"}, headers={"X-Request-Id": "denied-1"})
    assert response.json()["error"]["requestId"] == "denied-1"


@pytest.mark.parametrize("path", ["/v1/query", "/v1/explain"])
def test_server_timing_names_auth_policy_db_and_total(writer, path):
    response = writer.post(path, {"sql": "select 1"})
    assert response.status_code == 200, response.text
    assert {"auth", "policy", "db", "total"} <= set(server_timing(response))


def test_server_timing_is_sent_with_errors_too(writer):
    response = writer.query("select 1/0")
    assert response.status_code == 400
    assert {"auth", "policy", "db", "total"} <= set(server_timing(response))


# ---------------------------------------------------------------------------- /v1/explain


def test_explain_of_an_allowed_statement(writer):
    response = writer.post("/v1/explain", {"sql": "select lower(status) from orders where id = $1", "params": [1]})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "allowed": True,
        "identity": "writer",
        "kind": "select",
        "tables": ["public.orders"],
        "columns": ["public.orders.id", "public.orders.status"],
        "functions": ["lower"],
        "reason": None,
        "approval": None,
    }


def test_explain_of_a_denied_statement_says_why(writer):
    response = writer.post("/v1/explain", {"sql": "delete from orders where id = 1"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["allowed"], body["identity"], body["kind"], body["tables"]) == (
        False, "writer", "delete", ["public.orders"])
    assert "DELETE on public.orders" in body["reason"] and '"writer"' in body["reason"]


def test_explain_does_not_run_the_statement(writer, superuser):
    note = f"explain-only-{uuid.uuid4()}"
    response = writer.post("/v1/explain", {"sql": "insert into ledger (note) values ($1)", "params": [note]})
    assert response.json()["allowed"] is True
    assert superuser.fetchval("select count(*) from public.ledger where note = $1", note) == 0


@pytest.mark.parametrize(
    ("sql", "params"),
    [("select $2::int4 as b", [1, 2]), ("select $1::int4 as a, $3::int4 as c", [1, 2, 3]),
     ("select $1::int4 as a", [1, 2]), ("select $1::int4 + $2::int4 as s", [1]), ("select $1::int4 as a", [])],
)  # fmt: skip
def test_explain_refuses_parameters_as_query_does_with_its_reason(writer, sql, params):
    query = writer.query(sql, *params)
    assert query.status_code == 400, query.text
    explained = writer.post("/v1/explain", {"sql": sql, "params": params}).json()
    assert (explained["allowed"], explained["reason"]) == (False, query.json()["error"]["message"])


def test_explain_of_a_denied_statement_gives_the_reason_query_is_refused_with(writer):
    sql = "delete from orders where id = $2"  # denied before its parameters are looked at
    query = writer.query(sql, 1)
    assert query.status_code == 403, query.text
    explained = writer.post("/v1/explain", {"sql": sql, "params": [1]}).json()
    assert (explained["allowed"], explained["reason"]) == (False, query.json()["error"]["message"])


@PARITY_SETTINGS
@given(
    placeholders=st.lists(st.integers(1, 4), max_size=4),
    sent=st.integers(0, 4),
    source=st.sampled_from(["", " from orders where id = 1", " from secrets", " from orders where id = 1 / 0"]),
)
def test_explain_allows_exactly_what_query_does_not_refuse_before_running(api_as, placeholders, sent, source):
    """Refused before running: an error PostgreSQL did not raise (no `postgresMessage`); the
    parameters sent always fit their types, so no such error comes from reading their values.
    Anything else (rows, or PostgreSQL's own error) is what explain allows."""
    writer = api_as("writer")
    columns = ", ".join(f"${number}::int4 as p{index}" for index, number in enumerate(placeholders)) or "1 as one"
    sql, params = f"select {columns}{source}", list(range(1, sent + 1))
    explained = writer.post("/v1/explain", {"sql": sql, "params": params})
    query = writer.query(sql, *params)
    assert explained.status_code == 200, explained.text
    error = query.json().get("error") if query.status_code != 200 else None
    refused = error is not None and error["postgresMessage"] is None
    verdict = explained.json()
    assert verdict["allowed"] is not refused, (sql, params, query.text)
    assert verdict["reason"] == (error["message"] if refused else None), (sql, params, query.text)


def test_explain_needs_a_token(api_as):
    response = api_as(None).post("/v1/explain", {"sql": "select 1"})
    assert response.status_code == 401
    assert response.json()["error"]["code"] == "unauthenticated"


# ---------------------------------------------------------------------------- /v1/whoami and health


def test_whoami_describes_the_identity_the_token_resolves_to(writer):
    response = writer.get("/v1/whoami")
    assert response.status_code == 200, response.text
    assert response.json() == {
        "identity": "writer",
        "role": "demo_writer",
        "issuer": "dev",
        "subject": "writer",
        "schemas": ["public"],
        "limits": {
            "readOnly": False,
            "maxRows": 300000,
            "maxResponseBytes": 100_000_000,
            "statementTimeoutMs": 5000,
            "ratePerSecond": None,
            "concurrency": 8,
        },
    }


def test_whoami_shows_the_identitys_limits(api_as):
    limits = api_as("limited").get("/v1/whoami").json()["limits"]
    assert limits == {"readOnly": False, "maxRows": 5, "maxResponseBytes": 2000, "statementTimeoutMs": 5000,
                      "ratePerSecond": 3.0, "concurrency": 1}


def test_whoami_shows_a_read_only_identity(api_as):
    body = api_as("reader").get("/v1/whoami").json()
    assert (body["identity"], body["role"], body["limits"]["readOnly"]) == ("reader", "demo_reader", True)


def test_healthz_answers_without_a_token(api_as):
    response = api_as(None).get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_readyz_reports_the_database_and_issuers(api_as):
    response = api_as(None).get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json() == {"status": "ready", "checks": {"database": "ok", "issuers": {"dev": "ok"}}}


# ---------------------------------------------------------------------------- unknown paths and methods


def test_an_unknown_path_is_a_json_404(writer):
    response = writer.get("/v1/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "not_found"


def test_a_wrong_method_is_a_json_405_that_names_the_allowed_one(writer):
    response = writer.get("/v1/query")
    assert response.status_code == 405
    assert response.headers["content-type"].startswith("application/json")
    assert response.json()["error"]["code"] == "method_not_allowed"
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize("accept", ["application/json", "application/x-ndjson"])
def test_a_column_name_given_twice_keeps_the_later_value_converted_by_its_own_type(writer, accept):
    """Objects are keyed by column name: the later of two columns wins, and neither's value is
    converted as the other's type would be (int4 becomes a number, text stays text)."""
    for sql, expected in (("select 7::int4 as a, 'x' as a", {"a": "x"}), ("select 'x' as a, 7::int4 as a", {"a": 7}),
                          ("select 1::int4 as a, 'y' as b", {"a": 1, "b": "y"})):
        response = writer.post("/v1/query", {"sql": sql}, headers={"Accept": accept})
        assert response.status_code == 200, response.text
        rows = ([orjson.loads(line) for line in response.text.splitlines()[1:-1]] if "ndjson" in accept
                else response.json()["rows"])
        assert rows == [expected], sql

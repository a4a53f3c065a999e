"""`POST /sql`, the Neon serverless driver's HTTP protocol, over plain HTTP:
the request and response shapes, PostgreSQL's text output (arrays checked against
PostgreSQL's own `::text`), batches, every error status, and CORS. The real driver and
drizzle run against it in tests/test_neon_compat.py."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from test_observability import records_for
from test_openapi import assert_documented

from conftest import Api, GatewayProcess, Superuser
from gateway.api.neon import error_json, status_of
from gateway.errors import (
    GatewayError,
    database_unavailable,
    policy_denied,
    query_cancelled,
    rate_limited,
    response_too_large,
)

DRIVER_HEADERS = {
    # What @neondatabase/serverless 1.2.0 sends: a rewritten connection string, both modes on,
    # and fetch's Content-Type.
    "Neon-Connection-String": "postgresql://alice:s3cr%40t@gateway.local/any%20db?sslmode=require"
    "&application_name=pkg%3Anpm%2F%2540neondatabase%2Fserverless%401.2.0",
    "Neon-Raw-Text-Output": "true",
    "Neon-Array-Mode": "true",
    "Content-Type": "text/plain;charset=UTF-8",
}
# PostgreSQL's context for the parameter Bind could not read, as Neon's proxy (which binds the
# unnamed portal too) passes it on; the value, cut to the server's limit, follows when the
# server is set to log it.
BIND_CONTEXT = re.compile(r"unnamed portal parameter \$1(?: = '.*)?", re.DOTALL)
ERROR_KEYS = [
    "message", "code", "detail", "hint", "position", "internalPosition", "internalQuery", "severity", "where",
    "table", "column", "schema", "dataType", "constraint", "file", "line", "routine",
]  # fmt: skip


def neon(api: Api, body: Any, **headers: str) -> httpx.Response:
    return api.post("/sql", content=orjson.dumps(body), headers={**DRIVER_HEADERS, **headers})


def rows_of(api: Api, sql: str, *params: Any, **headers: str) -> list:
    response = neon(api, {"query": sql, "params": list(params)}, **headers)
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def sql_error(response: httpx.Response, code: str) -> dict:
    """A 400 in the proxy's PostgreSQL error shape: every key, in its order."""
    assert response.status_code == 400, response.text
    body = response.json()
    assert list(body) == ERROR_KEYS
    assert body["code"] == code, body
    assert_documented(response)
    return body


# ---------------------------------------------------------------------------- results


def test_a_single_query_answers_in_the_proxys_shape_and_key_order(writer):
    response = neon(writer, {"query": "select $1::int as x", "params": ["1"]})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.content == (
        b'{"fields":[{"name":"x","dataTypeID":23,"tableID":0,"columnID":0,"dataTypeSize":4,'
        b'"dataTypeModifier":-1,"format":"text"}],"rows":[["1"]],"command":"SELECT","rowCount":1,"rowAsArray":true}'
    )


def test_fields_carry_the_row_description_of_table_columns(writer, superuser: Superuser):
    response = neon(writer, {"query": "select id, status, total, 1::int8 as n from orders order by id limit 1"})
    fields = response.json()["fields"]
    table = superuser.fetchval("select 'public.orders'::regclass::oid")
    expected = [
        {"name": row["attname"], "dataTypeID": int(row["atttypid"]), "tableID": int(table),
         "columnID": int(row["attnum"]), "dataTypeSize": int(row["typlen"]), "dataTypeModifier": int(row["atttypmod"]),
         "format": "text"}
        for row in superuser.fetch(
            "select a.attname, a.atttypid, a.attnum, t.typlen, a.atttypmod from pg_attribute a "
            "join pg_type t on t.oid = a.atttypid where a.attrelid = 'public.orders'::regclass "
            "and a.attname in ('id', 'total', 'status') order by a.attnum")
    ]  # fmt: skip
    assert fields[:3] == expected
    assert expected[2]["dataTypeModifier"] == (12 << 16 | 2) + 4  # numeric(12, 2)
    assert fields[3] == {"name": "n", "dataTypeID": 20, "tableID": 0, "columnID": 0, "dataTypeSize": 8,
                         "dataTypeModifier": -1, "format": "text"}  # fmt: skip


def test_values_are_postgres_text_output_as_json_strings(writer):
    (row,) = rows_of(
        writer,
        "select true as b, 9007199254740993::int8 as big, 1.50::numeric as n, 'NaN'::float8 as nan, "
        "'\\x4142'::bytea as bytes, '{\"a\": [1, 2]}'::jsonb as j, '2024-01-02 03:04:05+02'::timestamptz as ts, "
        "'1 day 02:00'::interval as i, null::text as nothing, ''::text as empty",
    )
    assert row == ["t", "9007199254740993", "1.50", "NaN", "\\x4142", '{"a": [1, 2]}', "2024-01-02 01:04:05+00",
                   "1 day 02:00:00", None, ""]  # fmt: skip


ARRAYS = [
    "array[1, null, 3]::int4[]",
    "array['a b', '', 'NULL', 'null', null, 'x\"y', 'back\\slash', '{braces}', 'com,ma', ' lead', 'tab\t']::text[]",
    "array[array['1', null], array['', 'two words']]::text[]",
    "'{{{1,2},{3,4}},{{5,6},{7,8}}}'::int4[]",
    "array[]::text[]",
    "array[null]::text[]",
    "array['{\"a\": \"b c\"}'::json, '[1, \"x\"]'::json, 'null'::json]",
    "array['{\"k\": [1, {\"n\": null}]}'::jsonb]",
    "array['\\x00ff'::bytea, ''::bytea]",
    "array['NaN'::float8, 'Infinity', '-Infinity', 0.1]",
    "array['2024-01-02 03:04:05.25+05:30'::timestamptz, null]",
    "array[true, false]",
    "array['héllo ☃'::varchar, 'ünï']",
    "array['1 day'::interval, '-01:30']",
    "array['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid]",
    "array['10.0.0.1/8'::inet, '::1']",
    "array[12.50::numeric, 'NaN']",
    "array['2024-02-29'::date, 'infinity']",
]


@pytest.mark.parametrize("array", ARRAYS)
def test_arrays_are_written_as_postgres_writes_them(writer, array):
    (row,) = rows_of(writer, f"select {array} as a, ({array})::text as t")
    assert row[0] == row[1]


# Values whose text the gateway must not rebuild: records (asyncpg reads them in binary),
# arrays with lower bounds other than 1 (asyncpg's lists drop them), arrays of records, and
# ranges. PostgreSQL's own `::text` over a direct connection is the oracle.
TEXT_OUTPUT = [
    "row(1, 'x')",
    "row(1, row(2, 'a b', row(null, '')), 'x')",
    "row(null, '', 'q\"uote', 'back\\slash', 'com,ma', '(paren)', ' lead', 'x''y')",
    "(select c from customers c order by id limit 1)",
    "'[0:2]={1,2,3}'::int4[]",
    "'[-2:-1][1:2]={{1,2},{3,4}}'::int4[]",
    "'[5:6]={\"a b\",NULL}'::text[]",
    "'{{{1},{2}},{{3},{4}}}'::int4[]",
    "array[row(1, 'a'), row(2, null), null]",
    "array[array[row(1, 'a b')], array[row(2, '\"')]]",
    "array[]::int4[]",
    "'{}'::text[]",
    "array['a b', '', 'NULL', null, 'x\"y', 'back\\slash', '{braces}', 'com,ma', '(paren)']",
    "int4range(1, 3)",
    "array[int4range(1, 3), 'empty']",
]


@pytest.mark.parametrize("expression", TEXT_OUTPUT)
def test_records_bounded_arrays_and_ranges_are_postgres_text_output(writer, superuser: Superuser, expression):
    assert rows_of(writer, f"select {expression} as v") == [[superuser.fetchval(f"select ({expression})::text")]]


def test_an_enum_array_is_postgres_text(writer):
    assert rows_of(writer, "select array_agg(mood order by id) as m from moods") == [["{happy,sad}"]]


def test_rows_are_objects_without_array_mode(writer):
    rows = rows_of(writer, "select 1 as a, 'x' as b", **{"Neon-Array-Mode": "false"})
    assert rows == [{"a": "1", "b": "x"}]


def test_only_the_exact_value_true_turns_a_header_on(writer):
    response = neon(writer, {"query": "select 1 as a"}, **{"Neon-Array-Mode": "True"})
    assert response.json()["rows"] == [{"a": "1"}]
    assert response.json()["rowAsArray"] is False


def test_array_mode_in_the_body_overrides_the_header(writer):
    response = neon(writer, {"query": "select 1 as a", "arrayMode": False})
    assert response.json()["rows"] == [{"a": "1"}]
    assert response.json()["rowAsArray"] is False


def test_without_raw_text_output_values_are_json_as_the_proxy_makes_them(writer):
    (row,) = rows_of(
        writer,
        "select true as b, 7::int2 as s, 8::int4 as i, 9::int8 as big, 1.5::numeric as n, 2.5::float8 as f, "
        "'NaN'::float4 as nan, '{\"a\": 1}'::json as j, array[1, null]::int4[] as ia, array['x', null] as ta, "
        "'2024-01-02'::date as d",
        **{"Neon-Raw-Text-Output": "false"},
    )
    assert row == [True, 7, 8, "9", "1.5", 2.5, "NaN", {"a": 1}, [1, None], ["x", None], "2024-01-02"]


def test_without_raw_text_output_values_with_no_json_form_stay_postgres_text(writer, superuser):
    """The proxy's JSON arrays have no place for lower bounds: such an array, like a record,
    is PostgreSQL's text."""
    expressions = ["'[0:1]={1,2}'::int4[]", "row(1, 'a b')", "int4range(1, 3)"]
    (row,) = rows_of(writer, "select " + ", ".join(expressions), **{"Neon-Raw-Text-Output": "false"})
    assert row == [superuser.fetchval(f"select ({expression})::text") for expression in expressions]


def test_parameters_of_any_json_kind_become_postgres_text(writer):
    (row,) = rows_of(
        writer,
        "select $1::int as i, $2::bool as b, $3::jsonb as j, $4::int[] as a, $5::text[] as t, $6::int[] as m, "
        "$7::text as s, $8::text as n",
        41, True, {"k": [1, None]}, [1, None, 3], ["a\\b", 'q"', "", None], [[1, 2], [3, 4]], "as is", None,
    )  # fmt: skip
    assert row == ["41", "t", '{"k": [1, null]}', "{1,NULL,3}", '{"a\\\\b","q\\"","",NULL}', "{{1,2},{3,4}}",
                   "as is", None]  # fmt: skip


def test_insert_counts_rows_with_the_third_word_of_its_tag(writer):
    notes = [f"neon-insert-{uuid.uuid4()}" for _ in range(2)]
    response = neon(writer, {"query": "insert into ledger (note) values ($1), ($2)", "params": notes})
    assert response.json() == {"fields": [], "rows": [], "command": "INSERT", "rowCount": 2, "rowAsArray": True}


def test_a_tag_without_a_count_has_a_null_row_count(solo_as):
    response = neon(solo_as("scratch"), {"query": "create table pg_temp.neon_scratch (x int)"})
    assert response.json() == {"fields": [], "rows": [], "command": "CREATE", "rowCount": None, "rowAsArray": True}


def test_the_body_is_json_whatever_the_content_type(writer):
    response = neon(writer, {"query": "select 2 as x"}, **{"Content-Type": "application/sql"})
    assert response.json()["rows"] == [["2"]]


# ---------------------------------------------------------------------------- headers


@pytest.mark.parametrize(
    "connection_string",
    ["postgres://u@h/db", "postgresql://we%20ird:p%3Ass@[::1]:5/d%2Fb?options=-c%20x%3Dy&channel_binding=require"],
)
def test_any_postgres_connection_string_is_accepted_and_none_is_needed(writer, connection_string):
    assert rows_of(writer, "select 1", **{"Neon-Connection-String": connection_string}) == [["1"]]
    response = writer.post("/sql", {"query": "select 1"})
    assert response.status_code == 200, response.text


def test_a_connection_string_that_is_not_a_postgres_url_is_refused(writer):
    response = neon(writer, {"query": "select 1"}, **{"Neon-Connection-String": "mysql://u@h/db"})
    assert sql_error(response, "")["message"].startswith("invalid connection string")


def test_every_answer_carries_neon_request_id(writer, http, gateway):
    ok = neon(writer, {"query": "select 1"}, **{"X-Request-Id": "neon-id-1"})
    assert ok.headers["neon-request-id"] == ok.headers["x-request-id"] == "neon-id-1"
    failed = neon(writer, {"query": "select nope"})
    assert failed.headers["neon-request-id"] == failed.headers["x-request-id"]
    unauthenticated = http.post(gateway.url + "/sql", content=b'{"query": "select 1"}')
    assert unauthenticated.headers["neon-request-id"]


# ---------------------------------------------------------------------------- batches


def test_a_batch_answers_one_result_per_query(writer):
    response = neon(writer, {"queries": [{"query": "select 1 as a"}, {"query": "select $1 as b", "params": ["z"]}]})
    assert response.status_code == 200, response.text
    first, second = response.json()["results"]
    assert first["rows"] == [["1"]]
    assert second["rows"] == [["z"]]
    assert second["fields"][0]["dataTypeID"] == 25


def test_a_batch_runs_with_the_isolation_and_flags_of_its_headers_and_echoes_them(solo_as):
    settings = ("select current_setting('transaction_isolation'), current_setting('transaction_read_only'), "
                "current_setting('transaction_deferrable')")  # fmt: skip
    headers = {"Neon-Batch-Isolation-Level": "Serializable", "Neon-Batch-Read-Only": "true",
               "Neon-Batch-Deferrable": "true"}  # fmt: skip
    response = neon(solo_as("inspector"), {"queries": [{"query": settings}]}, **headers)
    assert response.json()["results"][0]["rows"] == [["serializable", "on", "on"]]
    for name, value in headers.items():
        assert response.headers[name] == value


def test_false_batch_flags_are_not_echoed_and_a_single_query_ignores_them(solo_as):
    headers = {"Neon-Batch-Isolation-Level": "RepeatableRead", "Neon-Batch-Read-Only": "false"}
    inspector = solo_as("inspector")
    batch = neon(inspector, {"queries": [{"query": "select current_setting('transaction_isolation')"}]}, **headers)
    assert batch.json()["results"][0]["rows"] == [["repeatable read"]]
    assert "neon-batch-read-only" not in batch.headers
    single = neon(inspector, {"query": "select current_setting('transaction_isolation')"}, **headers)
    assert single.json()["rows"] == [["read committed"]]


def test_an_unknown_isolation_level_is_refused(writer):
    response = neon(writer, {"queries": []}, **{"Neon-Batch-Isolation-Level": "serializable"})
    assert sql_error(response, "")["message"] == "invalid isolation level"


def test_a_failing_query_fails_the_batch_with_its_error_and_rolls_everything_back(writer, superuser):
    note = f"neon-rollback-{uuid.uuid4()}"
    queries = [{"query": "insert into ledger (note) values ($1)", "params": [note]}, {"query": "select 1 / 0"}]
    error = sql_error(neon(writer, {"queries": queries}), "22012")
    assert error["message"] == "division by zero"
    assert superuser.fetchval("select count(*) from ledger where note = $1", note) == 0


# ---------------------------------------------------------------------------- errors


def test_a_postgres_error_carries_every_field_with_strings_for_position_and_line(writer):
    error = sql_error(neon(writer, {"query": "select nope from orders"}), "42703")
    assert error["message"] == 'column "nope" does not exist'
    assert error["position"] == "8"
    assert error["severity"] == "ERROR"
    assert isinstance(error["line"], str) and error["line"].isdigit()
    assert error["file"] and error["routine"]


def test_a_syntax_error_is_postgres_own_with_its_position(writer):
    error = sql_error(neon(writer, {"query": "select id from orders wher id = 1"}), "42601")
    assert error["message"] == 'syntax error at or near "id"'
    assert (error["position"], error["severity"]) == ("28", "ERROR")


def test_a_constraint_violation_names_its_table_and_constraint(writer):
    note = f"neon-unique-{uuid.uuid4()}"
    insert = {"query": "insert into ledger (note) values ($1)", "params": [note]}
    error = sql_error(neon(writer, {"queries": [insert, insert]}), "23505")
    assert (error["schema"], error["table"], error["constraint"]) == ("public", "ledger", "ledger_note_key")
    assert note in error["detail"]


def test_a_policy_denial_is_a_400_insufficient_privilege_with_the_reason(writer, gateway):
    response = neon(writer, {"query": "select * from secrets"}, **{"X-Request-Id": "neon-denied"})
    error = sql_error(response, "42501")
    assert "public.secrets is not allowed" in error["message"]
    assert error["severity"] == "ERROR"
    (record,) = records_for(gateway, "neon-denied")
    assert (record["endpoint"], record["decision"], record["status"]) == ("/sql", "deny", 400)


@pytest.mark.parametrize(
    ("query", "value", "literal"),
    [("select $1::int as n", "abc", "'abc'::int"), ("select $1::int2 as n", "70000", "'70000'::int2"),
     ("select $1::int[] as a", "{1,2", "'{1,2'::int[]"), ("select $1::date as d", "2024-02-30", "'2024-02-30'::date")],
)  # fmt: skip
def test_a_bad_parameter_has_postgres_message_exactly_and_is_named_in_where(writer, superuser, query, value, literal):
    response = neon(writer, {"query": query, "params": [value]})
    assert response.status_code == 400, response.text
    error, expected = response.json(), superuser.error_of(f"select {literal}")
    assert (error["message"], error["code"]) == (expected.message, expected.sqlstate)
    assert BIND_CONTEXT.fullmatch(error["where"]), error["where"]


def test_a_malformed_body_is_a_400(writer):
    assert sql_error(neon(writer, {"sql": "select 1"}), "")["message"].startswith("could not parse")
    response = writer.post("/sql", content=b"{not json", headers=DRIVER_HEADERS)
    assert sql_error(response, "")["severity"] == ""


def test_an_invalid_token_stays_401_with_a_short_readable_body(gateway, http):
    response = http.post(gateway.url + "/sql", content=b'{"query": "select 1"}', headers=DRIVER_HEADERS)
    assert response.status_code == 401
    assert response.json() == {"message": "token rejected: missing_token", "code": "unauthenticated"}
    assert response.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize("chunked", [False, True])
def test_a_body_over_the_limit_is_413(writer, http, gateway, chunked):
    body = orjson.dumps({"query": "select $1", "params": ["x" * 1_100_000]})
    content = iter([body]) if chunked else body
    response = http.post(gateway.url + "/sql", content=content,
                         headers={**DRIVER_HEADERS, "Authorization": f"Bearer {writer.token}"})  # fmt: skip
    assert response.status_code == 413
    assert response.json() == {"message": "request is too large (max is 1048576 bytes)", "code": "payload_too_large"}


def test_more_rows_than_max_rows_is_507(solo_as):
    response = neon(solo_as("capped"), {"query": "select generate_series(1, 6) as n"})
    assert response.status_code == 507, response.text
    assert response.json() == {"message": "response is too large (max is 5 rows)", "code": "response_too_large"}
    assert_documented(response)


def test_more_bytes_than_max_response_bytes_in_a_batch_is_507(solo_as):
    query = {"query": "select repeat('x', 800) as filler"}
    capped = solo_as("capped")
    assert neon(capped, {"queries": [query, query]}).status_code == 200
    response = neon(capped, {"queries": [query, query, query]})
    assert response.status_code == 507, response.text
    assert response.json()["message"] == "response is too large (max is 2000 bytes)"
    assert_documented(response)


@pytest.mark.parametrize(
    ("error", "status", "code"),
    [
        (GatewayError("canceled", status=504, code="statement_timeout", sqlstate="57014"), 400, "57014"),
        (GatewayError("could not serialize", status=409, code="serialization_failure", sqlstate="40001"), 400, "40001"),
        (query_cancelled(), 400, "08P01"),
        (policy_denied("no"), 400, "42501"),
        (rate_limited("slow down", 1), 429, "rate_limited"),
        (database_unavailable(), 503, "database_unavailable"),
        (response_too_large(10), 507, "response_too_large"),
    ],
)
def test_statement_failures_are_400s_and_capacity_failures_keep_their_status(error, status, code):
    assert status_of(error) == status
    assert orjson.loads(error_json(error))["code"] == code


def test_a_cancelled_query_reads_as_the_proxys():
    body = orjson.loads(error_json(query_cancelled()))
    assert (body["message"], body["code"]) == ("Query cancelled, connection was terminated", "08P01")


# ---------------------------------------------------------------------------- CORS

ORIGIN = "https://app.example"


@pytest.fixture(scope="module")
def cors_gateway(launch_gateway: Callable[..., GatewayProcess], gateway_config: Callable[..., str]) -> GatewayProcess:
    config = gateway_config().replace("[server]\n", f'[server]\ncors_origins = ["{ORIGIN}"]\n', 1)
    return launch_gateway(config_text=config)


def preflight(http: httpx.Client, gateway: GatewayProcess, origin: str) -> httpx.Response:
    return http.options(gateway.url + "/sql", headers={
        "Origin": origin, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type,neon-connection-string,neon-array-mode,"
                                          "neon-raw-text-output,neon-batch-isolation-level,neon-batch-read-only",
    })  # fmt: skip


def test_preflight_from_a_configured_origin_allows_the_neon_headers(cors_gateway, http):
    response = preflight(http, cors_gateway, ORIGIN)
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ORIGIN
    allowed = response.headers["access-control-allow-headers"].lower()
    assert "neon-connection-string" in allowed and "neon-batch-isolation-level" in allowed


def test_preflight_from_another_origin_is_not_allowed(cors_gateway, http):
    response = preflight(http, cors_gateway, "https://evil.example")
    assert "access-control-allow-origin" not in response.headers


def test_a_request_from_a_configured_origin_may_read_the_answer(cors_gateway, call_as):
    api = call_as(cors_gateway, "writer")
    allowed = neon(api, {"query": "select 1"}, Origin=ORIGIN)
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    assert "neon-request-id" in allowed.headers["access-control-expose-headers"].lower()
    other = neon(api, {"query": "select 1"}, Origin="https://evil.example")
    assert other.status_code == 200
    assert "access-control-allow-origin" not in other.headers


def test_without_configured_origins_options_answers_200_and_nothing_is_open(gateway, writer, http):
    response = preflight(http, gateway, ORIGIN)
    assert response.status_code == 200
    assert "access-control-allow-origin" not in response.headers
    assert "access-control-allow-origin" not in neon(writer, {"query": "select 1"}, Origin=ORIGIN).headers



def test_object_rows_keep_the_later_of_two_columns_with_one_name(writer):
    """Each value converted as its own column's type (Neon's JSON values without raw text)."""
    headers = {"Neon-Array-Mode": "false", "Neon-Raw-Text-Output": "false"}
    assert rows_of(writer, "select 7::int4 as a, 'x' as a", **headers) == [{"a": "x"}]
    assert rows_of(writer, "select 'x' as a, 7::int4 as a", **headers) == [{"a": 7}]

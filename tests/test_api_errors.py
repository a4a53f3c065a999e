"""Every status code the native API produces (the one error table, `gateway/errors.py`), each with its stable
`error.code`, the JSON error shape and no internals in the body; and the process keeps
serving after each of them."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from test_openapi import assert_documented

from conftest import LOGIN_ROLE, SLOW_SQL, eventually

ERROR_KEYS = {"code", "message", "postgresMessage", "requestId", "sqlstate", "detail", "hint", "position"}
LOCKED_SQL = "select count(*) from customers"


def assert_error(response, status: int, code: str) -> dict:
    """The response is the JSON error shape with this status and code, and tells nothing
    about the gateway's internals."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == ERROR_KEYS, error
    assert error["code"] == code, error
    assert error["message"]
    assert error["requestId"] == response.headers["x-request-id"]
    for leak in ("Traceback", 'File "', "asyncpg", "gateway/", LOGIN_ROLE):
        assert leak not in response.text, response.text
    assert_documented(response)
    return error


@pytest.fixture(scope="module")
def patient_gateway(launch_gateway):
    """A gateway whose statements wait for locks as long as a test holds them, with one
    connection and a short wait for it."""
    return launch_gateway(pool_max=1, acquire_timeout="300ms", lock_timeout="30s")


@pytest.fixture(autouse=True)
def keeps_serving(writer) -> Iterator[None]:
    """After every error, the shared gateway still answers."""
    yield
    response = writer.query("select 1 as alive")
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"alive": 1}]


# ---------------------------------------------------------------------------- 400 bad_request


def test_malformed_json_is_a_bad_request(writer):
    error = assert_error(writer.post("/v1/query", content=b'{"sql": "select 1"'), 400, "bad_request")
    assert "not valid JSON" in error["message"]


@pytest.mark.parametrize("body", [b"[1, 2]", b'"select 1"', b"42", b"null"])
def test_a_body_that_is_not_an_object_is_a_bad_request(writer, body):
    error = assert_error(writer.post("/v1/query", content=body), 400, "bad_request")
    assert "JSON object" in error["message"]


@pytest.mark.parametrize("sql", [1, None, ["select 1"], {"text": "select 1"}])
def test_sql_that_is_not_a_string_is_a_bad_request(writer, sql):
    error = assert_error(writer.post("/v1/query", {"sql": sql}), 400, "bad_request")
    assert '"sql" must be a string' in error["message"]


def test_a_missing_sql_is_a_bad_request(writer):
    assert_error(writer.post("/v1/query", {"params": []}), 400, "bad_request")


@pytest.mark.parametrize("params", [{"1": 1}, "1", 1])
def test_params_that_are_not_an_array_is_a_bad_request(writer, params):
    error = assert_error(writer.post("/v1/query", {"sql": "select $1::int4", "params": params}), 400, "bad_request")
    assert '"params" must be an array' in error["message"]


def test_too_few_parameters_is_a_bad_request(writer):
    error = assert_error(writer.query("select $1::int4 + $2::int4"), 400, "bad_request")
    assert "2 parameters but 0 were sent" in error["message"]


def test_too_many_parameters_is_a_bad_request(writer):
    error = assert_error(writer.query("select $1::int4", 1, 2), 400, "bad_request")
    assert "1 parameters but 2 were sent" in error["message"]


def test_a_skipped_parameter_number_is_a_bad_request(writer):
    error = assert_error(writer.query("select $2::int4", 1, 2), 400, "bad_request")
    assert "$1" in error["message"]


def test_a_parameter_that_does_not_fit_its_type_is_named(writer):
    error = assert_error(writer.query("select $1::int4", "abc"), 400, "bad_request")
    assert error["message"].startswith("parameter $1:"), error
    assert error["sqlstate"] == "22P02"


def test_a_parameter_error_keeps_postgres_message_unchanged_beside_the_named_one(writer, superuser):
    expected = superuser.error_of("select 'abc'::int4").message
    error = assert_error(writer.query("select $1::int4", "abc"), 400, "bad_request")
    assert (error["message"], error["postgresMessage"]) == (f"parameter $1: {expected}", expected)


def test_the_parameter_that_does_not_fit_is_named_not_another_with_the_same_text(writer):
    error = assert_error(writer.query("select $1::text as a, $2::int4 as b", "abc", "abc"), 400, "bad_request")
    assert error["message"].startswith("parameter $2:"), error


def test_an_out_of_range_number_names_the_parameter(writer):
    error = assert_error(writer.query("select $1::text as a, $2::int2 as b", "x", 100000), 400, "bad_request")
    assert error["message"].startswith("parameter $2:"), error
    assert error["sqlstate"] == "22003"


def test_a_boolean_for_an_integer_parameter_is_named(writer):
    error = assert_error(writer.query("select $1::int4 as n", True), 400, "bad_request")
    assert error["message"].startswith("parameter $1:"), error


def test_a_bad_array_element_names_the_parameter(writer):
    error = assert_error(writer.query("select $1::int4[] as a", [1, "x"]), 400, "bad_request")
    assert error["message"].startswith("parameter $1:"), error


@pytest.mark.parametrize("value", [[[1, 2], [3]], [[1], 2], "{{1,2},{3}}"])
def test_a_ragged_array_names_the_parameter(writer, value):
    error = assert_error(writer.query("select $1::int4[] as a", value), 400, "bad_request")
    assert error["message"].startswith("parameter $1: "), error


def test_an_object_inside_an_array_parameter_is_a_bad_request(writer):
    error = assert_error(writer.query("select $1::int4[] as a", [{"a": 1}]), 400, "bad_request")
    assert error["message"] == "parameter $1: an object does not fit type int4[]"


def test_a_malformed_array_literal_names_the_parameter(writer):
    error = assert_error(writer.query("select $1::int4[] as a", "{1,2"), 400, "bad_request")
    assert error["message"].startswith("parameter $1:"), error


def test_an_object_for_an_integer_parameter_is_a_bad_request(writer):
    error = assert_error(writer.query("select $1::int4 as n", {"a": 1}), 400, "bad_request")
    assert error["message"] == "parameter $1: an object does not fit type int4"


def test_an_array_for_a_scalar_parameter_is_a_bad_request(writer):
    error = assert_error(writer.query("select $1::int4 as n", [1]), 400, "bad_request")
    assert error["message"].startswith("parameter $1:")


@pytest.mark.parametrize("mode", ["objects", "ARRAY", 1, None])
def test_a_bad_row_mode_is_a_bad_request(writer, mode):
    error = assert_error(writer.post("/v1/query", {"sql": "select 1", "rowMode": mode}), 400, "bad_request")
    assert "rowMode" in error["message"]


@pytest.mark.parametrize("isolation", ["snapshot", "SERIALIZABLE ", 3, {"level": "serializable"}, ["serializable"]])
def test_a_bad_isolation_level_is_a_bad_request(writer, isolation):
    body = {"statements": [{"sql": "select 1"}], "isolation": isolation}
    error = assert_error(writer.post("/v1/batch", body), 400, "bad_request")
    assert "isolation" in error["message"]


@pytest.mark.parametrize("statements", [[], None, "select 1", [{"sql": 1}]])
def test_a_malformed_batch_is_a_bad_request(writer, statements):
    assert_error(writer.post("/v1/batch", {"statements": statements}), 400, "bad_request")


def test_a_non_boolean_read_only_is_a_bad_request(writer):
    body = {"statements": [{"sql": "select 1"}], "readOnly": "yes"}
    assert_error(writer.post("/v1/batch", body), 400, "bad_request")


# ---------------------------------------------------------------------------- 400 sql_error


def test_an_unknown_column_is_an_sql_error_with_sqlstate_and_position(writer):
    sql = "select nosuchcolumn from orders"
    error = assert_error(writer.query(sql), 400, "sql_error")
    assert error["sqlstate"] == "42703"
    assert sql[error["position"] - 1:].startswith("nosuchcolumn")


def test_the_error_position_matches_the_callers_text(writer):
    sql = "select 'é and ü' as accents,\n       id,\n       nosuchcolumn\n  from orders"
    error = assert_error(writer.query(sql), 400, "sql_error")
    assert sql[error["position"] - 1:].startswith("nosuchcolumn"), error


def test_a_division_by_zero_is_an_sql_error(writer):
    error = assert_error(writer.query("select 1 / 0 as x"), 400, "sql_error")
    assert error["sqlstate"] == "22012"
    assert error["message"] == error["postgresMessage"] == "division by zero"


def test_an_error_postgres_never_saw_has_no_postgres_message(writer):
    error = assert_error(writer.query("select $1::int4", 1, 2), 400, "bad_request")
    assert error["postgresMessage"] is None


def test_an_sql_error_carries_detail_and_hint_when_postgres_gives_them(writer):
    error = assert_error(writer.query("insert into ledger (id, note) values (1, $1)", str(uuid.uuid4())),
                         400, "sql_error")
    assert error["sqlstate"] == "428C9"
    assert "identity column" in error["detail"] and "OVERRIDING SYSTEM VALUE" in error["hint"]


def test_a_unique_violation_is_an_sql_error_with_detail(writer):
    note = f"errors-unique-{uuid.uuid4()}"
    assert writer.query("insert into ledger (note) values ($1)", note).status_code == 200
    error = assert_error(writer.query("insert into ledger (note) values ($1)", note), 400, "sql_error")
    assert error["sqlstate"] == "23505"
    assert note in error["detail"]


def test_a_privilege_the_role_lacks_is_an_sql_error(api_as):
    # The policy allows the overreaching identity to delete; its database role cannot.
    error = assert_error(api_as("overreach").query("delete from ledger where id = -1"), 400, "sql_error")
    assert error["sqlstate"] == "42501"


# ---------------------------------------------------------------------------- 401


def assert_unauthenticated(response, reason: str) -> None:
    error = assert_error(response, 401, "unauthenticated")
    assert reason in error["message"]
    challenge = response.headers["www-authenticate"]
    assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge and reason in challenge


def test_a_missing_token_is_401(api_as):
    assert_unauthenticated(api_as(None).query("select 1"), "missing_token")


def test_a_garbage_token_is_401(writer):
    response = writer.client.post(writer.base + "/v1/query", json={"sql": "select 1"},
                                  headers={"Authorization": "Bearer not.a.token"})
    assert_unauthenticated(response, "malformed_token")


def test_a_token_in_another_scheme_is_401(writer):
    response = writer.client.post(writer.base + "/v1/query", json={"sql": "select 1"},
                                  headers={"Authorization": f"Basic {writer.token}"})
    assert_unauthenticated(response, "not_bearer")


def test_an_expired_token_is_401(writer, mint):
    expired = replace(writer, token=mint("writer", ttl=-60, tenant="acme"))
    assert_unauthenticated(expired.query("select 1"), "expired")


def test_a_token_for_another_audience_is_401(writer, mint):
    elsewhere = replace(writer, token=mint("writer", aud="some-other-service", tenant="acme"))
    assert_unauthenticated(elsewhere.query("select 1"), "wrong_audience")


def test_a_token_signed_with_another_secret_is_401(writer):
    header, payload, _ = writer.token.split(".")
    forged = replace(writer, token=f"{header}.{payload}.c2lnbmVkIGJ5IHNvbWVvbmUgZWxzZQ")
    assert_unauthenticated(forged.query("select 1"), "bad_signature")


# ---------------------------------------------------------------------------- 403


def test_a_valid_token_for_no_identity_is_403_no_identity(api_as):
    error = assert_error(api_as("stranger").query("select 1"), 403, "no_identity")
    assert "matches no configured identity" in error["message"]


def test_a_denied_statement_is_403_policy_denied_with_the_reason(writer):
    error = assert_error(writer.query("delete from orders where id = 1"), 403, "policy_denied")
    assert "DELETE on public.orders" in error["message"] and '"writer"' in error["message"]


def test_a_denied_function_is_403_policy_denied(writer):
    error = assert_error(writer.query("select pg_sleep(1)"), 403, "policy_denied")
    assert "pg_sleep" in error["message"]


def test_a_denied_statement_in_a_batch_runs_nothing(writer, superuser):
    note = f"errors-denied-batch-{uuid.uuid4()}"
    body = {"statements": [{"sql": "insert into ledger (note) values ($1)", "params": [note]},
                           {"sql": "delete from orders"}]}
    assert_error(writer.post("/v1/batch", body), 403, "policy_denied")
    assert superuser.fetchval("select count(*) from public.ledger where note = $1", note) == 0


# ---------------------------------------------------------------------------- 409


def test_a_serialization_failure_is_409(patient_gateway, call_as, superuser):
    writer = call_as(patient_gateway, "writer", tenant="acme")
    update = "update orders set note = note where id = 1"
    batch = {"isolation": "serializable",
             "statements": [{"sql": "select count(*) from orders"}, {"sql": update}]}
    superuser.execute("begin")
    superuser.execute("update public.orders set note = note where id = 1")
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(writer.post, "/v1/batch", batch)
        # The batch took its snapshot and now waits for the row the superuser changed.
        eventually(lambda: superuser.backends_running(update, waiting_on_lock=True), "the update to wait")
        superuser.execute("commit")
        response = pending.result()
    error = assert_error(response, 409, "serialization_failure")
    assert error["sqlstate"] == "40001"
    assert writer.query("select 1").status_code == 200


# ---------------------------------------------------------------------------- 413


def oversized_body(size: int) -> bytes:
    return b'{"sql": "select 1", "padding": "' + b"x" * size + b'"}'


def test_a_body_over_the_limit_is_413(writer):
    response = writer.post("/v1/query", content=oversized_body(1_100_000), headers={"X-Request-Id": "big-1"})
    error = assert_error(response, 413, "payload_too_large")
    assert error["requestId"] == "big-1"
    assert "1048576" in error["message"]


def test_a_chunked_body_over_the_limit_is_413(writer):
    def chunks() -> Iterator[bytes]:
        body = oversized_body(1_100_000)
        for start in range(0, len(body), 65536):
            yield body[start:start + 65536]

    response = writer.post("/v1/query", content=chunks())
    assert_error(response, 413, "payload_too_large")


def test_a_body_over_the_limit_on_an_unknown_path_is_413_too(writer):
    response = writer.client.post(writer.base + "/v1/nothing", content=oversized_body(1_100_000))
    assert_error(response, 413, "payload_too_large")


# ---------------------------------------------------------------------------- 429


def test_requests_over_the_rate_are_429_with_retry_after(api_as):
    limited = api_as("limited")
    responses = [limited.query("select 1") for _ in range(8)]
    refused = [response for response in responses if response.status_code == 429]
    assert refused, [response.status_code for response in responses]
    error = assert_error(refused[0], 429, "rate_limited")
    assert "rate" in error["message"]
    assert int(refused[0].headers["retry-after"]) >= 1


def admitted(api, sql: str):
    """The response once the rate limit lets the request in, retrying as a polite client does."""
    for _ in range(10):
        response = api.query(sql)
        if response.status_code != 429:
            return response
        time.sleep(float(response.headers["retry-after"]))
    pytest.fail("the rate limit never let the request in")


def test_statements_over_the_concurrency_are_429(patient_gateway, call_as, superuser):
    limited = call_as(patient_gateway, "limited")
    superuser.execute("begin")
    superuser.execute("lock table public.customers in access exclusive mode")
    with ThreadPoolExecutor(1) as pool:
        blocked = pool.submit(admitted, limited, LOCKED_SQL)
        eventually(lambda: superuser.backends_running(LOCKED_SQL, waiting_on_lock=True), "the select to wait")

        def refused_for_concurrency():
            response = limited.query("select 1")
            return response if "in flight" in response.text else None

        response = eventually(refused_for_concurrency, "a 429 for concurrency")
        superuser.execute("commit")
        assert blocked.result().status_code == 200
    error = assert_error(response, 429, "rate_limited")
    assert "concurrency is 1" in error["message"]
    assert int(response.headers["retry-after"]) >= 1
    assert admitted(limited, "select 1").status_code == 200


# ---------------------------------------------------------------------------- 503


def test_no_free_connection_within_the_acquire_timeout_is_503_overloaded(patient_gateway, call_as, superuser):
    writer, reader = call_as(patient_gateway, "writer", tenant="acme"), call_as(patient_gateway, "reader")
    superuser.execute("begin")
    superuser.execute("lock table public.customers in access exclusive mode")
    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(writer.query, LOCKED_SQL)
        eventually(lambda: superuser.backends_running(LOCKED_SQL, waiting_on_lock=True), "the select to wait")
        response = reader.query("select 1")  # another identity: the writer's own share is the whole pool
        superuser.execute("commit")
        assert holding.result().status_code == 200
    assert_error(response, 503, "overloaded")
    assert int(response.headers["retry-after"]) >= 1
    assert reader.query("select 1").status_code == 200


def test_a_database_that_is_down_is_503_and_the_gateway_recovers(launch_gateway, call_as, needs_local_server):
    gateway = launch_gateway()
    writer = call_as(gateway, "writer", tenant="acme")
    assert writer.query("select 1").status_code == 200
    needs_local_server.stop()
    try:
        response = writer.query("select 1")
        assert_error(response, 503, "database_unavailable")
        assert int(response.headers["retry-after"]) >= 1
        ready = writer.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["checks"]["database"] == "unreachable"
    finally:
        needs_local_server.start()
    eventually(lambda: writer.query("select 1").status_code == 200, "the gateway to reconnect")
    # Its answer is kept for a second (server.readyz_cache): then it is checked again.
    eventually(lambda: writer.get("/readyz").status_code == 200, "/readyz to see the database back")


# ---------------------------------------------------------------------------- 504


def test_a_statement_past_its_timeout_is_504_and_cancelled(launch_gateway, call_as, superuser):
    gateway = launch_gateway(statement_timeout="300ms")
    writer = call_as(gateway, "writer", tenant="acme")
    error = assert_error(writer.query(SLOW_SQL), 504, "statement_timeout")
    assert error["sqlstate"] == "57014"
    eventually(lambda: not superuser.backends_running(SLOW_SQL), "the backend to stop the statement")
    assert writer.query("select 1").status_code == 200

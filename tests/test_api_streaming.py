"""Large results stream: JSON and NDJSON bodies read incrementally, row and byte
limits that stop at a row boundary and say `truncated`, failures after the first rows, and
clients that leave: mid-stream (the connection goes back to the pool) or while the
statement runs (the backend stops running it)."""

from __future__ import annotations

import hashlib
import socket
from urllib.parse import urlparse

import orjson
import pytest

from conftest import SLOW_SQL, eventually

NDJSON = "application/x-ndjson"
BIG_SQL = "select g, md5(g::text) as h from generate_series(1, 200000) g"
# Wider than any socket buffer between the gateway and a client that stopped reading.
HUGE_SQL = "select g, repeat(md5(g::text), 10) as filler from generate_series(1, 300000) g"


def stream(api, sql: str, *, ndjson: bool = False, request_id: str | None = None, **options):
    """The response and its whole body, read chunk by chunk as it streams."""
    headers = {"Authorization": f"Bearer {api.token}"}
    if ndjson:
        headers["Accept"] = NDJSON
    if request_id:
        headers["X-Request-Id"] = request_id
    with api.client.stream("POST", api.base + "/v1/query", json={"sql": sql, **options}, headers=headers) as response:
        body = b"".join(response.iter_bytes())
    return response, body


def ndjson_lines(body: bytes) -> list:
    assert body.endswith(b"\n")
    return [orjson.loads(line) for line in body.split(b"\n")[:-1]]


def rows_and_summary(body: bytes, ndjson: bool) -> tuple[list, dict]:
    """The rows, and what says how the result ended (the NDJSON last line, or the JSON body)."""
    if ndjson:
        lines = ndjson_lines(body)
        return lines[1:-1], lines[-1]
    result = orjson.loads(body)
    return result["rows"], result


def md5(number: int) -> str:
    return hashlib.md5(str(number).encode()).hexdigest()


def gateway_backends(superuser, tag: str) -> list[dict]:
    """The gateway's backends whose request tag (application_name) carries `tag`."""
    return superuser.activity("application_name LIKE $1", f"%{tag}%")


# ---------------------------------------------------------------------------- whole results


def test_200000_rows_stream_as_one_json_body(writer):
    response, body = stream(writer, BIG_SQL)
    assert response.status_code == 200, body[:500]
    assert response.headers["content-type"].startswith("application/json")
    assert "content-length" not in response.headers  # streamed, not built in memory
    result = orjson.loads(body)
    assert (result["command"], result["rowCount"], result["truncated"]) == ("SELECT", 200000, False)
    assert result["columns"] == [{"name": "g", "type": "int4"}, {"name": "h", "type": "text"}]
    assert len(result["rows"]) == 200000
    assert result["rows"][0] == {"g": 1, "h": md5(1)}
    assert result["rows"][-1] == {"g": 200000, "h": md5(200000)}
    assert [row["g"] for row in result["rows"][4998:5003]] == [4999, 5000, 5001, 5002, 5003]


def test_200000_rows_stream_as_ndjson(writer):
    response, body = stream(writer, BIG_SQL, ndjson=True)
    assert response.status_code == 200, body[:500]
    assert response.headers["content-type"].startswith(NDJSON)
    lines = ndjson_lines(body)
    assert lines[0] == {"columns": [{"name": "g", "type": "int4"}, {"name": "h", "type": "text"}]}
    assert lines[-1] == {"command": "SELECT", "rowCount": 200000, "truncated": False}
    rows = lines[1:-1]
    assert len(rows) == 200000
    assert rows[0] == {"g": 1, "h": md5(1)} and rows[-1] == {"g": 200000, "h": md5(200000)}


def test_ndjson_rows_in_array_mode(writer):
    _, body = stream(writer, "select g, g * 2 as twice from generate_series(1, 3) g", ndjson=True,
                     rowMode="array")
    assert ndjson_lines(body)[1:-1] == [[1, 2], [2, 4], [3, 6]]


def test_a_small_ndjson_result_has_the_same_three_parts(writer):
    _, body = stream(writer, "select id from orders where id = 1", ndjson=True)
    assert ndjson_lines(body) == [{"columns": [{"name": "id", "type": "int8"}]}, {"id": "1"},
                                  {"command": "SELECT", "rowCount": 1, "truncated": False}]


def test_an_ndjson_error_before_any_row_is_a_plain_error_response(writer):
    response, body = stream(writer, "select nosuchcolumn from orders", ndjson=True)
    assert response.status_code == 400
    assert orjson.loads(body)["error"]["sqlstate"] == "42703"


# ---------------------------------------------------------------------------- limits


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
def test_a_result_over_max_rows_is_truncated(solo_as, ndjson):
    response, body = stream(solo_as("capped"), "select g from generate_series(1, 100) g", ndjson=ndjson)
    assert response.status_code == 200, body
    rows, summary = rows_and_summary(body, ndjson)
    assert rows == [{"g": g} for g in range(1, 6)]
    assert (summary["rowCount"], summary["truncated"]) == (5, True)


def test_a_result_of_exactly_max_rows_is_not_truncated(solo_as):
    _, body = stream(solo_as("capped"), "select g from generate_series(1, 5) g")
    result = orjson.loads(body)
    assert (result["rowCount"], result["truncated"]) == (5, False)


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
def test_a_result_over_max_response_bytes_stops_at_a_row_boundary(solo_as, ndjson):
    sql = "select g, repeat(md5(g::text), 20) as filler from generate_series(1, 5) g"
    response, body = stream(solo_as("capped"), sql, ndjson=ndjson)
    assert response.status_code == 200, body
    rows, summary = rows_and_summary(body, ndjson)
    assert 0 < len(rows) < 5
    assert rows == [{"g": g, "filler": md5(g) * 20} for g in range(1, len(rows) + 1)]
    assert sum(len(orjson.dumps(row)) + 1 for row in rows) <= 2000
    assert (summary["rowCount"], summary["truncated"]) == (len(rows), True)


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
def test_a_streamed_result_over_max_rows_is_truncated(solo_as, ndjson):
    response, body = stream(solo_as("bounded"), "select g from generate_series(1, 200000) g", ndjson=ndjson)
    assert response.status_code == 200
    rows, summary = rows_and_summary(body, ndjson)
    assert rows == [{"g": g} for g in range(1, 12346)]
    assert (summary["rowCount"], summary["truncated"]) == (12345, True)


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
def test_a_streamed_result_over_max_response_bytes_is_truncated_at_a_row_boundary(solo_as, ndjson):
    sql = "select g, repeat(md5(g::text), 4) as filler from generate_series(1, 200000) g"
    response, body = stream(solo_as("bounded"), sql, ndjson=ndjson)
    assert response.status_code == 200
    rows, summary = rows_and_summary(body, ndjson)
    assert 5000 < len(rows) < 12345
    assert rows[-1] == {"g": len(rows), "filler": md5(len(rows)) * 4}
    assert sum(len(orjson.dumps(row)) + 1 for row in rows) <= 1_000_000
    assert (summary["rowCount"], summary["truncated"]) == (len(rows), True)


# ---------------------------------------------------------------------------- failures after the first rows


def test_a_failure_mid_stream_ends_the_ndjson_body_with_the_error(writer):
    sql = "select g, 1 / (g - 150000) as x from generate_series(1, 200000) g"
    response, body = stream(writer, sql, ndjson=True, request_id="mid-stream-1")
    assert response.status_code == 200
    lines = ndjson_lines(body)
    assert lines[0] == {"columns": [{"name": "g", "type": "int4"}, {"name": "x", "type": "int4"}]}
    assert lines[-1]["error"]["code"] == "sql_error" and lines[-1]["error"]["sqlstate"] == "22012"
    assert lines[-1]["error"]["requestId"] == "mid-stream-1"
    assert 5000 <= len(lines) - 2 < 150000


def test_a_failure_mid_stream_ends_the_json_body_with_the_error(writer):
    sql = "select g, 1 / (g - 150000) as x from generate_series(1, 200000) g"
    response, body = stream(writer, sql)
    assert response.status_code == 200
    result = orjson.loads(body)
    assert result["error"]["sqlstate"] == "22012"
    assert "command" not in result
    assert 5000 <= len(result["rows"]) < 150000


# ---------------------------------------------------------------------------- clients that leave


def test_a_client_that_leaves_mid_stream_gives_the_connection_back(solo_as, superuser):
    writer = solo_as("writer", tenant="acme")
    headers = {"Authorization": f"Bearer {writer.token}", "X-Request-Id": "leaves-mid-stream"}
    with writer.client.stream("POST", writer.base + "/v1/query", json={"sql": HUGE_SQL}, headers=headers) as response:
        assert response.status_code == 200
        next(response.iter_bytes())
        (backend,) = gateway_backends(superuser, "leaves-mid-stream")
        assert backend["state"] in ("active", "idle in transaction")
    eventually(lambda: not gateway_backends(superuser, "leaves-mid-stream"), "the transaction to end")
    response = writer.query("select count(*) as n from orders")
    assert response.status_code == 200, response.text


def audit_records(gateway, request_id: str) -> list[dict]:
    lines = [line for line in gateway.output().splitlines() if line.startswith("{") and request_id in line]
    return [record for record in map(orjson.loads, lines) if record.get("requestId") == request_id]


def test_a_client_that_leaves_mid_stream_is_audited_as_499(solo_gateway, solo_as):
    writer = solo_as("writer", tenant="acme")
    headers = {"Authorization": f"Bearer {writer.token}", "X-Request-Id": "audited-leaver"}
    with writer.client.stream("POST", writer.base + "/v1/query", json={"sql": HUGE_SQL}, headers=headers) as response:
        next(response.iter_bytes())
    (record,) = eventually(lambda: audit_records(solo_gateway, "audited-leaver"), "the audit record")
    assert record["status"] == 499
    assert 0 < record["rows"] < 300000


def http_request(url: str, token: str, body: dict) -> bytes:
    payload = orjson.dumps(body)
    host = urlparse(url).netloc
    return (f"POST /v1/query HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n").encode() + payload


def test_a_client_that_leaves_during_a_long_statement_has_it_cancelled(solo_as, superuser):
    writer = solo_as("writer", tenant="acme")
    address = urlparse(writer.base)
    with socket.create_connection((address.hostname, address.port)) as client:
        client.sendall(http_request(writer.base, writer.token, {"sql": SLOW_SQL}))
        eventually(lambda: superuser.backends_running(SLOW_SQL), "the statement to start")
    eventually(lambda: not superuser.backends_running(SLOW_SQL), "the backend to stop the statement")
    response = writer.query("select 1 as alive")
    assert response.status_code == 200, response.text

"""Errors that carry row data (issue 9, item 7): for an identity whose rules narrow columns,
PostgreSQL's DETAIL (`Key (email)=(...) already exists`, `Failing row contains (...)`) and
the fields that can quote rows (`where`, `internalQuery`) are withheld on every wire format;
the message and the SQLSTATE are kept. An identity without column rules gets them all.

PostgreSQL is the oracle: each statement runs once more over a direct superuser connection,
and what the gateway passes on must be exactly what PostgreSQL said there. Every statement
here fails, so nothing is ever written and the tables stay empty.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import asyncpg
import orjson
import pytest
from test_neon_sql import BIND_CONTEXT

from conftest import Api, GatewayProcess, PgServer, Superuser

SCHEMA = """
CREATE TABLE public.redaction_people (
    id     int PRIMARY KEY,
    email  text NOT NULL UNIQUE,
    name   text NOT NULL,
    salary int CHECK (salary >= 0),
    secret text NOT NULL DEFAULT 'salt-and-pepper'
);
-- Checked at COMMIT: a long result streams first, then the commit fails.
CREATE TABLE public.redaction_events (
    id  int,
    tag text CONSTRAINT redaction_events_tag_key UNIQUE DEFERRABLE INITIALLY DEFERRED
);
-- A trigger that quotes a column the caller may not read in the SQL it runs, which
-- PostgreSQL then repeats in the error's context.
CREATE TABLE public.redaction_notes (id int PRIMARY KEY, secret text NOT NULL DEFAULT 'salt-and-pepper');
CREATE TABLE public.redaction_copies (note text UNIQUE);
CREATE FUNCTION public.redaction_copy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('insert into public.redaction_copies (note) values (%L)', NEW.secret);
    RETURN NEW;
END $$;
CREATE TRIGGER redaction_copy BEFORE INSERT ON public.redaction_notes
    FOR EACH ROW EXECUTE FUNCTION public.redaction_copy();
GRANT SELECT, INSERT ON public.redaction_people, public.redaction_events, public.redaction_notes,
    public.redaction_copies TO demo_writer;
"""

TABLES = ["public.redaction_people", "public.redaction_events", "public.redaction_notes"]
IDENTITIES = """
[[identities]]
name = "narrowed"
issuer = "dev"
match = {{ sub = "narrowed" }}
role = "demo_writer"

  [[identities.rules]]
  allow = ["select"]
  tables = {tables}
  columns = {{ "public.redaction_people" = ["id", "name"], "public.redaction_events" = ["id"] }}

  [[identities.rules]]
  allow = ["insert"]
  tables = {tables}
  columns = {{ "public.redaction_people" = ["id", "email", "name", "salary"] }}

[[identities]]
name = "unnarrowed"
issuer = "dev"
match = {{ sub = "unnarrowed" }}
role = "demo_writer"

  [[identities.rules]]
  allow = ["select", "insert"]
  tables = {tables}
""".format(tables=orjson.dumps(TABLES).decode())

# Constraint violations whose DETAIL quotes the row: the key, or the whole failing row with
# its `secret` default, a column neither identity selects.
VIOLATIONS = {
    "unique": ("insert into redaction_people (id, email, name) values ($1, $3, 'a'), ($2, $3, 'b')",
               [1, 2, "ada@example.com"]),
    "not_null": ("insert into redaction_people (id, email, name) values ($1, $2, null)", [1, "ada@example.com"]),
    "check": ("insert into redaction_people (id, email, name, salary) values ($1, $2, 'a', -1)",
              [1, "ada@example.com"]),
}  # fmt: skip
TRIGGER_SQL = "insert into redaction_notes (id) values ($1), ($2)"
STREAMED_SQL = "insert into redaction_events (id, tag) select g, $1 from generate_series(1, 6000) g returning id"
# The fields of the Neon error that can quote rows, beside `detail`.
ROW_QUOTING_KEYS = ("detail", "where", "internalQuery", "internalPosition")


@pytest.fixture(scope="module")
def redaction_tables(database: PgServer) -> Iterator[None]:
    connection = Superuser(database)
    connection.execute(SCHEMA)
    yield
    connection.execute("DROP TABLE public.redaction_people, public.redaction_events, public.redaction_notes, "
                       "public.redaction_copies; DROP FUNCTION public.redaction_copy()")  # fmt: skip
    connection.close()


@pytest.fixture(scope="module")
def redaction_gateway(redaction_tables: None, launch_gateway: Callable[..., GatewayProcess],
                      gateway_config: Callable[..., str]) -> GatewayProcess:  # fmt: skip
    return launch_gateway(config_text=gateway_config(IDENTITIES))


@pytest.fixture(scope="module")
def postgres(database: PgServer) -> Iterator[Callable[..., asyncpg.PostgresError]]:
    """`postgres(sql, *params)` -> the error PostgreSQL answers over a direct connection."""
    connection = Superuser(database)
    yield connection.error_of
    connection.close()


@pytest.fixture
def narrowed(redaction_gateway: GatewayProcess, call_as: Callable[..., Api]) -> Api:
    return call_as(redaction_gateway, "narrowed")


@pytest.fixture
def unnarrowed(redaction_gateway: GatewayProcess, call_as: Callable[..., Api]) -> Api:
    return call_as(redaction_gateway, "unnarrowed")


def failure(api: Api, wire: str, sql: str, params: list[Any]) -> dict[str, Any]:
    """The error as the wire format carries it: `message`, `sqlstate`, `detail` and, on
    `/sql`, the proxy's other fields."""
    if wire == "query":
        response = api.query(sql, *params)
    elif wire == "batch":
        response = api.post("/v1/batch", {"statements": [{"sql": "select 1 as warm"}, {"sql": sql, "params": params}]})
    else:
        response = api.post("/sql", content=orjson.dumps({"query": sql, "params": params}),
                            headers={"Neon-Raw-Text-Output": "true", "Neon-Array-Mode": "true"})  # fmt: skip
    assert response.status_code == 400, response.text
    body = response.json()
    if wire == "sql":
        return {**body, "sqlstate": body["code"]}
    return body["error"]


WIRES = ["query", "batch", "sql"]


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("violation", list(VIOLATIONS))
def test_an_identity_with_column_rules_gets_no_detail(narrowed, postgres, wire, violation):
    sql, params = VIOLATIONS[violation]
    expected = postgres(sql, *params)
    assert expected.detail  # PostgreSQL quotes the row: there is something to withhold
    error = failure(narrowed, wire, sql, params)
    assert (error["message"], error["sqlstate"]) == (expected.message, expected.sqlstate)
    assert error["detail"] is None
    if wire == "sql":
        assert [error[key] for key in ROW_QUOTING_KEYS] == [None] * len(ROW_QUOTING_KEYS)
        assert (error["table"], error["constraint"]) == (expected.table_name, expected.constraint_name)


@pytest.mark.parametrize("wire", WIRES)
@pytest.mark.parametrize("violation", list(VIOLATIONS))
def test_an_identity_without_column_rules_gets_postgres_detail(unnarrowed, postgres, wire, violation):
    sql, params = VIOLATIONS[violation]
    expected = postgres(sql, *params)
    error = failure(unnarrowed, wire, sql, params)
    expected_fields = (expected.message, expected.sqlstate, expected.detail)
    assert (error["message"], error["sqlstate"], error["detail"]) == expected_fields


def test_a_trigger_context_quoting_a_row_is_withheld_from_an_identity_with_column_rules(narrowed, postgres):
    expected = postgres(TRIGGER_SQL, 1, 2)
    assert "salt-and-pepper" in expected.context
    error = failure(narrowed, "sql", TRIGGER_SQL, [1, 2])
    assert (error["message"], error["sqlstate"]) == (expected.message, expected.sqlstate)
    assert [error[key] for key in ROW_QUOTING_KEYS] == [None] * len(ROW_QUOTING_KEYS)


def test_a_trigger_context_reaches_an_identity_without_column_rules(unnarrowed, postgres):
    expected = postgres(TRIGGER_SQL, 1, 2)
    error = failure(unnarrowed, "sql", TRIGGER_SQL, [1, 2])
    assert (error["detail"], error["where"]) == (expected.detail, expected.context)


def stream(api: Api, ndjson: bool) -> tuple[list[Any], dict[str, Any]]:
    """A result longer than the first batch, whose COMMIT fails: the rows, and the error the
    body ends with."""
    headers = {"Authorization": f"Bearer {api.token}", **({"Accept": "application/x-ndjson"} if ndjson else {})}
    response = api.client.post(api.base + "/v1/query", json={"sql": STREAMED_SQL, "params": ["one tag"]},
                               headers=headers)  # fmt: skip
    assert response.status_code == 200, response.text[:300]
    if ndjson:
        lines = [orjson.loads(line) for line in response.text.splitlines()]
        return lines[1:-1], lines[-1]["error"]
    body = response.json()
    return body["rows"], body["error"]


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
def test_a_failure_after_streamed_rows_ends_without_detail_for_an_identity_with_column_rules(
    narrowed, postgres, ndjson
):
    expected = postgres(STREAMED_SQL, "one tag")
    assert expected.detail
    rows, error = stream(narrowed, ndjson)
    assert len(rows) >= 5000
    assert (error["message"], error["sqlstate"], error["detail"]) == (expected.message, expected.sqlstate, None)


@pytest.mark.parametrize("ndjson", [False, True], ids=["json", "ndjson"])
def test_a_failure_after_streamed_rows_keeps_its_detail_for_an_identity_without_column_rules(
    unnarrowed, postgres, ndjson
):
    expected = postgres(STREAMED_SQL, "one tag")
    _, error = stream(unnarrowed, ndjson)
    assert (error["message"], error["detail"]) == (expected.message, expected.detail)


def test_a_bad_parameter_stays_named_in_where_for_an_identity_with_column_rules(narrowed):
    """Bind fails before any row is read: PostgreSQL's context names the caller's own
    parameter and quotes nothing else."""
    error = failure(narrowed, "sql", "select id from redaction_people where id = $1", ["abc"])
    assert BIND_CONTEXT.fullmatch(error["where"]), error["where"]

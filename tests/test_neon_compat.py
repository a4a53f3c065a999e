"""The real `@neondatabase/serverless` driver and drizzle-orm's `neon-http` against `/sql`
(the scripts in tests/node/), and the type matrix checked against node-postgres connected
straight to the same database: what the driver makes of the gateway's answers must equal
what it makes of PostgreSQL's own."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from test_neon_sql import BIND_CONTEXT

from conftest import TEST_DATABASE, GatewayProcess, PgServer, Superuser, TlsFiles

NEON_APP = """
[[identities]]
name = "neon-app"
issuer = "dev"
match = { sub = "neon-app" }
role = "demo_writer"
functions = ["current_setting"]

  [[identities.rules]]
  allow = ["select", "insert", "update"]
  tables = ["public.neon_authors", "public.neon_books"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.moods"]
"""

SCHEMA = """
CREATE TABLE public.neon_authors (id serial PRIMARY KEY, name text NOT NULL UNIQUE);
CREATE TABLE public.neon_books (
    id        serial PRIMARY KEY,
    author_id int NOT NULL REFERENCES public.neon_authors (id),
    title     text NOT NULL,
    published date,
    tags      text[] NOT NULL DEFAULT '{}',
    meta      jsonb
);
GRANT SELECT, INSERT, UPDATE ON public.neon_authors, public.neon_books TO demo_writer;
GRANT USAGE ON SEQUENCE public.neon_authors_id_seq, public.neon_books_id_seq TO demo_writer;
"""


@pytest.fixture(scope="module")
def neon_tables(database: PgServer) -> Iterator[None]:
    """The tables the driver and drizzle scripts write, for this module only."""
    connection = Superuser(database)
    connection.execute(SCHEMA)
    yield
    connection.execute("DROP TABLE public.neon_books, public.neon_authors")
    connection.close()


@pytest.fixture(scope="module")
def neon_gateway(neon_tables: None, launch_gateway: Callable[..., GatewayProcess],
                 gateway_config: Callable[..., str]) -> GatewayProcess:
    return launch_gateway(config_text=gateway_config(NEON_APP))


@pytest.fixture(scope="module")
def neon_env(neon_gateway: GatewayProcess, mint: Callable[..., str]) -> dict[str, str]:
    # A time zone away from UTC, so the driver's Date parsing of timestamps shows.
    return {"GATEWAY_SQL_URL": neon_gateway.url + "/sql", "GATEWAY_TOKEN": mint("neon-app"), "TZ": "Asia/Kolkata"}


@pytest.fixture(scope="module")
def driver(node_script: Callable[..., Any], neon_env: dict[str, str]) -> dict[str, Any]:
    return node_script("driver.mjs", **neon_env)


@pytest.fixture(scope="module")
def drizzle(node_script: Callable[..., Any], neon_env: dict[str, str]) -> dict[str, Any]:
    return node_script("drizzle.mjs", **neon_env)


@pytest.fixture(scope="module")
def type_matrix(node_script: Callable[..., Any], neon_env: dict[str, str], database: PgServer,
                tls_files: TlsFiles) -> dict[str, Any]:
    """node-postgres logs in as the superuser over TLS (verified against the test CA)."""
    if database.local is None:
        pytest.skip("the oracle needs the suite's own PostgreSQL and CA (TEST_DATABASE_URL is set)")
    direct = (f"postgresql://{database.superuser}:{quote(database.superuser_password, safe='')}"
              f"@{database.host}:{database.port}/{TEST_DATABASE}")
    return node_script("types.mjs", PG_URL=direct, PG_CA=str(tls_files.ca), **neon_env)


# ---------------------------------------------------------------------------- the driver


def test_tagged_templates_bind_values_as_parameters(driver):
    assert driver["template"] == [{"one": 1, "letter": "x", "big": "10", "yes": True}]


def test_composed_templates_renumber_their_parameters(driver):
    assert driver["composed"] == [{"id": 1}]


def test_sql_query_takes_text_and_parameters(driver):
    assert driver["query"] == [{"answer": 42}]


def test_array_mode_returns_rows_as_arrays(driver):
    assert driver["arrayMode"] == [[1, "b"]]


def test_full_results_carry_fields_command_and_row_count(driver):
    full = driver["fullResults"]
    assert full["rows"] == [[1, "x"]]
    assert (full["command"], full["rowCount"]) == ("SELECT", 1)
    assert [(f["name"], f["dataTypeID"], f["dataTypeSize"]) for f in full["fields"]] == [("a", 21, 2), ("b", 25, -1)]


def test_an_insert_reports_its_command_and_count(driver):
    insert = driver["insert"]
    assert (insert["command"], insert["rowCount"]) == ("INSERT", 1)
    assert insert["rows"][0]["name"].startswith("driver-")


def test_a_transaction_answers_each_query_in_order(driver):
    assert driver["transaction"] == [[{"a": 1}], [{"b": "z"}]]


def test_a_transaction_runs_with_its_isolation_read_only_and_deferrable_options(driver):
    assert driver["serializable"] == [[{"isolation": "serializable", "read_only": "on", "deferrable": "on"}]]
    assert driver["repeatableRead"] == [[{"isolation": "repeatable read", "read_only": "off", "deferrable": "off"}]]


def test_a_read_only_transaction_refuses_writes(driver):
    assert driver["readOnlyWrite"]["code"] == "25006"


def test_a_failing_transaction_raises_its_error_and_rolls_back(driver):
    error = driver["rollback"]
    assert (error["name"], error["code"], error["message"]) == ("NeonDbError", "22012", "division by zero")
    assert driver["afterRollback"] == [{"n": 0}]


def test_a_sql_error_is_a_neon_db_error_with_postgres_fields(driver):
    error = driver["sqlError"]
    assert (error["name"], error["code"], error["severity"]) == ("NeonDbError", "42703", "ERROR")
    assert (error["message"], error["position"]) == ('column "nope" does not exist', "8")


def test_a_policy_denial_is_a_neon_db_error_with_insufficient_privilege(driver):
    error = driver["policyDenial"]
    assert (error["name"], error["code"]) == ("NeonDbError", "42501")
    assert "public.secrets is not allowed" in error["message"]


def test_a_bad_parameter_is_postgres_error_with_the_parameter_named_in_where(driver, superuser):
    error, expected = driver["badParameter"], superuser.error_of("select 'abc'::int")
    assert (error["name"], error["code"], error["message"]) == ("NeonDbError", expected.sqlstate, expected.message)
    assert BIND_CONTEXT.fullmatch(error["where"]), error["where"]


def test_a_bad_token_is_a_server_error_naming_the_status(driver):
    error = driver["badToken"]
    assert error["name"] == "NeonDbError"
    assert error["message"].startswith("Server error (HTTP status 401): ")
    assert "unauthenticated" in error["message"]


# ---------------------------------------------------------------------------- drizzle


def test_drizzle_inserts_and_selects_with_a_join(drizzle):
    run = drizzle["run"]
    assert drizzle["beforeBatch"] == [
        {"title": f"Compiler {run}", "author": f"Grace {run}", "published": None, "tags": [],
         "meta": {"lang": "A-0", "bugs": [None]}},
        {"title": f"Notes {run}", "author": f"Ada {run}", "published": "1843-09-01", "tags": ["math", "engines"],
         "meta": {"pages": 65}},
    ]  # fmt: skip


def test_drizzle_batch_commits_every_statement(drizzle):
    run = drizzle["run"]
    assert drizzle["hedy"] == [{"name": f"Hedy {run}"}]
    assert drizzle["renamed"] == [{"title": f"Notes, 2nd ed. {run}"}]
    assert drizzle["bookCount"] == [{"n": 2}]
    assert [row["title"] for row in drizzle["afterBatch"]] == [f"Compiler {run}", f"Notes, 2nd ed. {run}"]


def test_drizzle_batch_that_fails_rolls_back_whole(drizzle):
    assert drizzle["failedBatch"]["code"] == "23505"
    assert drizzle["failedBatch"]["constraint"] == "neon_authors_name_key"
    assert drizzle["alanRows"] == 0


# ---------------------------------------------------------------------------- the type matrix


def test_every_type_reads_as_it_does_over_a_direct_connection(type_matrix):
    assert type_matrix["errors"] == []
    mismatches = type_matrix["mismatches"]
    assert not mismatches, "\n".join(f"{m['name']}\ngateway: {m['gateway']}\noracle: {m['oracle']}" for m in mismatches)
    assert len(type_matrix["kinds"]) == type_matrix["cases"] == 55


@pytest.mark.parametrize(
    ("case", "kinds"),
    [
        ("int8", ["String", "String"]),
        ("float8", ["Number"] * 6),
        ("jsonb", ["Object", "null", "String"]),
        ("bytea", ["Buffer", "Buffer"]),
        ("timestamptz", ["Date"] * 4 + ["Number"]),  # -infinity: pg-types makes it -Infinity
        ("int4[]", ["Array", "Array"]),
        ("null", ["null", "null", "null"]),
        ("bytea parameter", ["Buffer"]),
        ("record", ["String", "String"]),
        ("record[]", ["String"]),
        ("lower bounds", ["Array", "Array", "Array"]),
    ],
)
def test_the_driver_parses_values_by_their_type(type_matrix, case, kinds):
    """The matrix compares like with like: values are parsed, not strings on both sides."""
    assert type_matrix["kinds"][case] == kinds

"""The policy against a real PostgreSQL: the catalog snapshot read from the
database at start and refreshed, a function planted in `public` that must not run in place
of the built-in, session settings that cannot poison the next request on a pooled
connection, column rules on live statements, the rate of new statement texts per identity,
and `gateway check --database` / `gateway catalog dump`.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import pytest

from conftest import LOGIN_ROLE, Api, GatewayProcess, PgServer, Superuser, eventually, run
from gateway.catalog import load_snapshot
from gateway.cli import main
from gateway.config import load_config
from gateway.db.catalog import read_catalog
from gateway.pipeline import Pipeline

POLICY_IDENTITIES = """
[policy]
analysis_rate = "20/s"
catalog_refresh = "1h"

[[identities]]
name = "tinkerer"
issuer = "dev"
match = { sub = "tinkerer" }
role = "demo_writer"
functions = ["set_config", "current_setting", "pg_backend_pid"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.*"]

[[identities]]
name = "observer"
issuer = "dev"
match = { sub = "observer" }
role = "demo_writer"
functions = ["current_setting", "pg_backend_pid"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.*"]

[[identities]]
name = "narrowed"
issuer = "dev"
match = { sub = "narrowed" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders", "public.customers"]
  columns = { "public.customers" = ["id", "name"] }

[[identities]]
name = "burster"
issuer = "dev"
match = { sub = "burster" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.*"]
"""


@pytest.fixture(scope="module")
def policy_gateway(launch_gateway, gateway_config) -> GatewayProcess:
    """One connection (so consecutive requests share a backend), a low rate of new statement
    texts, and a catalog snapshot re-read only on SIGHUP."""
    return launch_gateway(config_text=gateway_config(POLICY_IDENTITIES, pool_max=1))


@pytest.fixture(scope="module")
def policy_as(policy_gateway: GatewayProcess, call_as) -> Callable[..., Api]:
    def make(subject: str, **claims) -> Api:
        return call_as(policy_gateway, subject, **claims)

    return make


# Unqualified columns of two tables: only the catalog tells which table each comes from.
COLUMN_SQL = "select status, name from orders join customers on customers.id = customer_id"


def explain(api: Api, sql: str) -> dict:
    response = api.post("/v1/explain", {"sql": sql})
    assert response.status_code == 200, response.text
    return response.json()


def only_row(response) -> dict:
    assert response.status_code == 200, response.text
    (row,) = response.json()["rows"]
    return row


def refresh_catalog(gateway: GatewayProcess) -> None:
    gateway.process.send_signal(signal.SIGHUP)


# ---------------------------------------------------------------------------- the snapshot


async def _read_as(database: PgServer, user: str, password: str) -> object:
    connection = await asyncpg.connect(database.url(user), password=password, ssl="prefer")
    try:
        return await read_catalog(connection, ["demo_reader", "demo_writer"])
    finally:
        await connection.close()


def test_the_snapshot_holds_relations_with_their_columns_and_functions_by_schema(database):
    snapshot = run(_read_as(database, LOGIN_ROLE, database.login_password))
    assert {"id", "tenant", "name", "country", "ctid"} <= snapshot.columns("public", "customers")
    assert snapshot.columns("pg_catalog", "pg_class") is not None
    assert snapshot.find_relation("customers", ("public",)) == "public"
    assert snapshot.defines_function("pg_catalog", "lower")
    assert not snapshot.defines_function("public", "lower")
    assert snapshot.database == "gw_test"


def test_the_snapshot_describes_user_relations_with_column_types_and_keys(database):
    snapshot = run(_read_as(database, LOGIN_ROLE, database.login_password))
    orders = snapshot.shape("public", "orders")
    assert orders is not None and orders.kind == "table"
    assert [column.name for column in orders.columns] == [
        "id", "tenant", "customer_id", "status", "total", "note", "created_at"
    ]
    total = next(column for column in orders.columns if column.name == "total")
    assert (total.type, total.nullable) == ("numeric(12,2)", False)
    assert next(column for column in orders.columns if column.name == "note").nullable
    assert orders.primary_key == ("id",)
    (key,) = orders.foreign_keys
    assert (key.columns, key.references, key.referenced_columns) == (("customer_id",), ("public", "customers"), ("id",))
    moods = snapshot.shape("public", "moods")
    assert moods is not None and moods.columns[1].type == "public.mood"
    assert snapshot.shape("pg_catalog", "pg_class") is None


def test_the_snapshot_knows_where_identity_roles_can_create(database, superuser):
    superuser.execute("CREATE SCHEMA creatable_probe; GRANT CREATE ON SCHEMA creatable_probe TO demo_writer")
    try:
        snapshot = run(_read_as(database, LOGIN_ROLE, database.login_password))
        assert snapshot.can_create("demo_writer", "creatable_probe")
        assert not snapshot.can_create("demo_reader", "creatable_probe")
        assert not snapshot.can_create("demo_writer", "public")
    finally:
        superuser.execute("DROP SCHEMA creatable_probe")


def test_the_login_role_reads_the_same_catalog_as_the_superuser(database):
    as_login = run(_read_as(database, LOGIN_ROLE, database.login_password))
    as_superuser = run(_read_as(database, database.superuser, database.superuser_password))
    assert as_login == as_superuser


def test_the_pipeline_reads_the_snapshot_at_start_and_refreshes_it(database, gateway_config, gateway_env,
                                                                  tmp_path, monkeypatch):
    for name, value in gateway_env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config('[policy]\ncatalog_refresh = "50ms"\n'))
    table = f"refresh_probe_{uuid.uuid4().hex[:8]}"

    async def scenario() -> tuple[bool, bool]:
        pipeline = Pipeline.from_config(load_config(path))
        admin = await database.connect()
        await pipeline.start()
        try:
            at_start = pipeline.policy.catalog.columns("public", "customers") is not None
            await admin.execute(f"CREATE TABLE public.{table} (id int)")
            for _ in range(200):
                await asyncio.sleep(0.05)
                if pipeline.policy.catalog.columns("public", table) is not None:
                    return at_start, True
            return at_start, False
        finally:
            await pipeline.stop()
            await admin.execute(f"DROP TABLE IF EXISTS public.{table}")
            await admin.close()

    assert run(scenario()) == (True, True)


# ---------------------------------------------------------------------------- search_path hijack


@pytest.fixture
def planted_lower(superuser: Superuser, policy_gateway: GatewayProcess) -> Iterator[None]:
    """`public.lower(varchar)`, created by a role of its own: what another tenant of the
    database could plant. Dropped afterwards, and the gateway's snapshot refreshed."""
    superuser.execute(
        "DROP FUNCTION IF EXISTS public.lower(varchar); DROP ROLE IF EXISTS planter; CREATE ROLE planter; "
        "GRANT CREATE, USAGE ON SCHEMA public TO planter; SET ROLE planter; "
        "CREATE FUNCTION public.lower(varchar) RETURNS text LANGUAGE sql AS $$ SELECT 'planted' $$; "
        "GRANT EXECUTE ON FUNCTION public.lower(varchar) TO PUBLIC; RESET ROLE"
    )
    refresh_catalog(policy_gateway)
    try:
        yield
    finally:
        superuser.execute(
            "DROP FUNCTION IF EXISTS public.lower(varchar); REVOKE ALL ON SCHEMA public FROM planter; "
            "DROP ROLE IF EXISTS planter"
        )
        refresh_catalog(policy_gateway)


def test_a_planted_function_would_win_on_the_pinned_search_path(planted_lower, superuser):
    """The attack is real: PostgreSQL picks the better type match across the schemas."""
    superuser.execute("SET search_path = pg_catalog, public, pg_temp")
    try:
        assert superuser.fetchval("SELECT lower('ABC'::varchar)") == "planted"
    finally:
        superuser.execute("RESET search_path")


def test_a_function_planted_in_public_is_denied_in_place_of_the_builtin(planted_lower, policy_as):
    reader = policy_as("reader")
    sql = "select lower(name) from customers"
    # A snapshot read while the previous test's function was being dropped may know the name
    # without its arguments; the refresh after this fixture's SIGHUP has both.
    eventually(lambda: "(character varying)" in (explain(reader, sql)["reason"] or ""), "the snapshot to see it")
    response = reader.query(sql)
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "policy_denied"
    assert "public.lower(character varying)" in error["message"]
    assert "pg_catalog.lower" in error["message"]


def test_the_builtin_by_its_qualified_name_still_runs(planted_lower, policy_as):
    reader = policy_as("reader")
    eventually(lambda: not explain(reader, "select lower(name) from customers")["allowed"], "the refreshed snapshot")
    response = reader.query("select pg_catalog.lower(name) as n from customers order by id limit 1")
    assert only_row(response) == {"n": "ada lovelace"}


# ---------------------------------------------------------------------------- session poisoning

OBSERVE_SQL = (
    "select pg_backend_pid() as pid, current_user as role, "
    "current_setting('standard_conforming_strings') as scs, current_setting('DateStyle') as datestyle, "
    "current_setting('TimeZone') as timezone, "
    "current_setting('request.jwt.claims', true)::jsonb ->> 'tenant' as tenant"
)
POISON_SQL = (
    "select pg_backend_pid() as pid, "
    "set_config('DateStyle', 'SQL, DMY', false) as datestyle, "
    "set_config('TimeZone', 'Pacific/Kiritimati', false) as timezone"
)


def test_session_settings_are_denied(policy_as):
    response = policy_as("observer").query("select set_config('DateStyle', 'SQL, DMY', false)")
    assert response.status_code == 403, response.text
    assert "set_config is on the deny list" in response.json()["error"]["message"]


@pytest.mark.parametrize(
    "sql",
    [
        "select set_config('standard_conforming_strings', 'off', false)",
        "select set_config('role', 'demo_reader', false)",
        "select set_config('ROLE', 'demo_reader', true)",
        """select set_config('request.jwt.claims', '{"tenant": "globex"}', true)""",
        "select set_config('search_path', 'public', true)",
        "select set_config($1, 'demo_reader', true)",
    ],
)
def test_an_identity_allowed_set_config_cannot_touch_what_the_gateway_sets(policy_as, sql):
    response = policy_as("tinkerer").query(sql, "role") if "$1" in sql else policy_as("tinkerer").query(sql)
    assert response.status_code == 403, response.text
    assert "set_config" in response.json()["error"]["message"]


def test_settings_that_slipped_through_do_not_reach_the_next_request(policy_as):
    before = only_row(policy_as("observer", tenant="acme").query(OBSERVE_SQL))
    poisoned = only_row(policy_as("tinkerer", tenant="acme").query(POISON_SQL))
    after = only_row(policy_as("observer", tenant="acme").query(OBSERVE_SQL))
    assert before["pid"] == poisoned["pid"] == after["pid"]
    assert poisoned["timezone"] == "Pacific/Kiritimati"
    assert after == before
    assert (after["role"], after["scs"], after["tenant"]) == ("demo_writer", "on", "acme")


# ---------------------------------------------------------------------------- columns, live


def test_listed_columns_of_a_narrowed_table_are_served(policy_as):
    response = policy_as("narrowed", tenant="acme").query("select id, name from customers order by id limit 1")
    assert only_row(response) == {"id": "1", "name": "Ada Lovelace"}


@pytest.mark.parametrize(
    "sql",
    ["select * from customers", "select c from customers c", "select row_to_json(c) from customers c",
     "select (c).country from customers c", "select name from customers where country = 'GB'"],
)
def test_narrowed_tables_refuse_every_other_column(policy_as, sql):
    response = policy_as("narrowed").query(sql)
    assert response.status_code == 403, response.text
    assert "public.customers" in response.json()["error"]["message"]


def test_explain_lists_the_columns_the_snapshot_resolves(policy_as):
    body = explain(policy_as("narrowed"), COLUMN_SQL)
    assert body["allowed"] is True, body["reason"]
    assert body["columns"] == [
        "public.customers.id",
        "public.customers.name",
        "public.orders.customer_id",
        "public.orders.status",
    ]


# ---------------------------------------------------------------------------- the rate of new texts


def test_new_statement_texts_over_the_rate_are_429_while_known_ones_are_served(policy_as):
    burster = policy_as("burster")
    assert burster.query("select 0 as n").status_code == 200
    statuses = [burster.query(f"select {n} as n").status_code for n in range(1, 60)]
    assert 429 in statuses
    limited = burster.query(f"select {uuid.uuid4().int % 1000 + 100} as n")
    if limited.status_code == 200:  # a token came back in the meantime: spend it
        limited = burster.query(f"select {uuid.uuid4().int % 1000 + 2000} as n")
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"]["code"] == "rate_limited"
    assert int(limited.headers["retry-after"]) >= 1
    assert burster.query("select 0 as n").status_code == 200


# ---------------------------------------------------------------------------- the command line


@pytest.fixture
def cli_config(gateway_config, gateway_env, tmp_path, monkeypatch) -> Path:
    for name, value in gateway_env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config(POLICY_IDENTITIES))
    return path


def check(capsys, *argv: str) -> tuple[int, dict]:
    code = main(["check", *argv])
    return code, json.loads(capsys.readouterr().out)


def test_check_with_the_database_resolves_columns_with_its_catalog(capsys, cli_config):
    code, decision = check(capsys, "--config", str(cli_config), "--identity", "narrowed", "--sql", COLUMN_SQL,
                           "--database")
    assert code == 0, decision["reason"]
    assert "public.orders.status" in decision["columns"]


def test_check_without_a_snapshot_fails_closed_and_says_so(capsys, cli_config):
    code = main(["check", "--config", str(cli_config), "--identity", "narrowed", "--sql", COLUMN_SQL])
    captured = capsys.readouterr()
    assert code == 1
    assert json.loads(captured.out)["allowed"] is False
    assert "no catalog snapshot" in captured.err


def test_a_dumped_snapshot_decides_as_the_database_does(capsys, cli_config, tmp_path):
    assert main(["catalog", "dump", "--config", str(cli_config)]) == 0
    snapshot = tmp_path / "snapshot.json"
    snapshot.write_text(capsys.readouterr().out)
    assert load_snapshot(snapshot).columns("public", "orders") is not None
    code, decision = check(capsys, "--config", str(cli_config), "--identity", "narrowed", "--sql", COLUMN_SQL,
                           "--snapshot", str(snapshot))
    assert code == 0, decision["reason"]


def test_catalog_dump_without_the_database_password_exits_1(capsys, cli_config, monkeypatch):
    monkeypatch.delenv("TEST_DB_PASSWORD")
    assert main(["catalog", "dump", "--config", str(cli_config)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert "TEST_DB_PASSWORD" in captured.err

"""The statement policy end to end, against PostgreSQL through a running gateway.

A corpus of everyday and hostile statements on the demo schema: every statement the
analyser allows really runs, and PostgreSQL's own plan (`EXPLAIN (VERBOSE)`, as superuser,
with the parameters bound) touches exactly the relations `/v1/explain` reports; every
statement it denies gets 403 `policy_denied` with a reason. Writes smuggled into a SELECT or
an upsert are refused for an identity without the write kind although its database role could
make them, and the rows are shown unchanged.

The module owns a role (`policy_e2e`, with write grants the policy must hold back), rows with
ids from 9001 on, and one gateway; all are removed when the module ends.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
import pytest

from conftest import LOGIN_ROLE, Api, GatewayProcess, PgServer, Superuser

ROLE = "policy_e2e"
CUSTOMER = 9001  # the module's customer, tenant acme like the token
# The module's orders, one per purpose, so no test depends on another having run.
ORDER_READ, ORDER_UPDATE, ORDER_DELETE, ORDER_DELETE_IN_CTE, ORDER_MERGE = 9101, 9102, 9103, 9104, 9105
ORDER_SMUGGLE_DENIED, ORDER_SMUGGLE_ALLOWED = 9106, 9107
MODULE_ORDERS = (ORDER_READ, ORDER_UPDATE, ORDER_DELETE, ORDER_DELETE_IN_CTE, ORDER_MERGE, ORDER_SMUGGLE_DENIED,
                 ORDER_SMUGGLE_ALLOWED)
MODULE_LEDGER_NOTES = ("e2e-duplicate", "e2e-upsert-denied", "e2e-upsert-allowed", "e2e-delete-denied",
                       "e2e-delete-allowed")

SETUP_SQL = f"""
CREATE ROLE {ROLE} NOLOGIN;
GRANT USAGE ON SCHEMA public TO {ROLE};
GRANT SELECT, INSERT, UPDATE, DELETE ON public.orders, public.customers, public.ledger TO {ROLE};
GRANT SELECT ON public.moods TO {ROLE};
GRANT {ROLE} TO {LOGIN_ROLE};
INSERT INTO public.customers (id, tenant, name, country) OVERRIDING SYSTEM VALUE
    VALUES ({CUSTOMER}, 'acme', 'E2E Customer', 'NL');
INSERT INTO public.orders (id, tenant, customer_id, status, total, note) OVERRIDING SYSTEM VALUE
    SELECT id, 'acme', {CUSTOMER}, 'new', 1.00, 'e2e' FROM unnest(ARRAY{list(MODULE_ORDERS)}) AS id;
INSERT INTO public.ledger (note) SELECT unnest(ARRAY{list(MODULE_LEDGER_NOTES)});
"""

# The role may write orders, customers and ledger; the identities hold it back.
IDENTITIES = f"""
[[identities]]
name = "corpus"
issuer = "dev"
match = {{ sub = "corpus" }}
role = "{ROLE}"

  [[identities.rules]]
  allow = ["select", "insert", "update", "delete", "merge"]
  tables = ["public.orders", "public.customers", "public.ledger"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.moods", "pg_catalog.pg_class"]

[[identities]]
name = "corpus-selector"
issuer = "dev"
match = {{ sub = "corpus-selector" }}
role = "{ROLE}"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders", "public.customers", "public.ledger"]

[[identities]]
name = "corpus-appender"
issuer = "dev"
match = {{ sub = "corpus-appender" }}
role = "{ROLE}"

  [[identities.rules]]
  allow = ["select", "insert"]
  tables = ["public.ledger"]
"""


@dataclass(frozen=True)
class Allowed:
    sql: str
    params: tuple[Any, ...] = ()
    sqlstate: str | None = None  # PostgreSQL's expected refusal (a constraint), None for 200


@dataclass(frozen=True)
class Denied:
    sql: str
    params: tuple[Any, ...] = ()
    subject: str = "corpus"


def allowed(case_id: str, sql: str, *params: Any, sqlstate: str | None = None) -> Any:
    return pytest.param(Allowed(sql, params, sqlstate), id=case_id)


def denied(case_id: str, sql: str, *params: Any, subject: str = "corpus") -> Any:
    return pytest.param(Denied(sql, params, subject), id=case_id)


# ---------------------------------------------------------------------------- the corpus

ALLOWED = [
    allowed("select-by-param", "select id, total from orders where status = $1", "new"),
    allowed("in-list-params-without-spaces", "select * from orders where id in ($1,$2,$3)",
            ORDER_READ, ORDER_UPDATE, ORDER_MERGE),
    allowed("params-without-spaces", "select $1,$2", "a", "b"),
    allowed("param-casts", "select $1::int, $2::text[]", 1, ["a", "b"]),
    allowed("uppercase-names", "SELECT ID FROM ORDERS WHERE STATUS = $1", "new"),
    allowed("quoted-lower-case-name", 'select id from "orders"'),
    allowed("qualified-and-unqualified-names", "select o.id from orders o join public.customers c "
            "on c.id = o.customer_id where c.id = $1", CUSTOMER),
    allowed("param-after-non-ascii-text", "select id from customers where name <> 'Zoë' and id = $1", CUSTOMER),
    allowed("inner-join", "select o.id, c.name from orders o join customers c on c.id = o.customer_id where c.id = $1",
            CUSTOMER),
    allowed("left-join-lateral", "select o.id, c.name from orders o left join lateral "
            "(select name from customers c where c.id = o.customer_id limit 1) c on true"),
    allowed("subquery-in-where", "select id from orders where customer_id in "
            "(select id from customers where country = $1)", "NL"),
    allowed("not-exists", "select id from orders where not exists "
            "(select 1 from customers where customers.id = orders.customer_id)"),
    allowed("scalar-subquery", "select (select count(*) from customers), id from orders"),
    allowed("exists-param", "select exists (select 1 from orders where id = $1)", ORDER_READ),
    allowed("cte", "with recent as (select * from orders where created_at > now() - interval '1 day') "
            "select count(*) from recent"),
    allowed("recursive-cte-reads-no-table",
            "with recursive t(n) as (select 1 union all select n + 1 from t where n < 10) select n from t"),
    allowed("cte-named-like-a-table", "with orders as (select 1 as id) select id from orders"),
    allowed("window-function", "select id, row_number() over (partition by customer_id order by created_at desc) "
            "from orders"),
    allowed("aggregate-filter-and-order", "select count(*) filter (where status = 'new'), array_agg(id order by id) "
            "from orders"),
    allowed("group-by-rollup", "select status, count(*) from orders group by rollup (status)"),
    allowed("distinct-on", "select distinct on (customer_id) * from orders order by customer_id, created_at desc"),
    allowed("limit-offset-params", "select id from orders order by id desc nulls last limit $1 offset $2", 10, 0),
    allowed("union", "select id from orders union select id from customers"),
    allowed("except-all", "select id from orders except all select id from customers"),
    allowed("values", "values (1, 2), (3, 4)"),
    allowed("table-statement", "table customers"),
    allowed("tagged-dollar-quote", "select $tag$it's $1, not a param$tag$ from orders"),
    allowed("comment-hides-nothing", "select 1 /* ; delete from orders */"),
    allowed("trailing-semicolon", "select count(*) from customers;"),
    allowed("json-builders", "select jsonb_build_object('id', o.id, 'customer', c.name), row_to_json(o) "
            "from orders o join customers c on c.id = o.customer_id"),
    allowed("unnest-param", "select * from unnest($1::int[]) as t(x)", [1, 2, 3]),
    allowed("generate-series", "select * from generate_series(1, 3) g"),
    allowed("named-argument", "select id from orders where created_at > now() - make_interval(days => $1)", 1),
    allowed("coalesce-greatest-nullif", "select coalesce(note, ''), greatest(1, 2), nullif(status, '') from orders"),
    allowed("cast-enum-column-to-text", "select id, mood::text from moods"),
    allowed("exact-catalog-rule", "select relname from pg_class where relname = $1", "orders"),
    allowed("for-update-with-update-rule", "select id from orders where id = $1 for update", ORDER_READ),
    allowed("insert-returning", "insert into orders (customer_id, total, note) values ($1,$2,$3) returning id",
            CUSTOMER, "9.90", "e2e-insert"),
    allowed("insert-select", "insert into orders (customer_id, total, note) "
            "select customer_id, total, 'e2e-copy' from orders where id = $1", ORDER_READ),
    allowed("on-conflict-do-nothing", "insert into ledger (note) values ($1) on conflict do nothing", "e2e-duplicate"),
    allowed("on-conflict-do-update", "insert into ledger (note) values ($1) "
            "on conflict (note) do update set note = excluded.note returning id", "e2e-new-upsert"),
    allowed("update-returning", "update orders set status = $1 where id = $2 returning id, status",
            "paid", ORDER_UPDATE),
    allowed("update-row-assignment", "update orders set (status, note) = ($1, $2) where id = $3",
            "packed", "e2e-updated", ORDER_UPDATE),
    allowed("update-from", "update orders set status = c.country from customers c "
            "where c.id = orders.customer_id and orders.id = $1", ORDER_UPDATE),
    allowed("delete-returning", "delete from orders where id = $1 returning *", ORDER_DELETE),
    allowed("delete-using", "delete from orders using customers where customers.id = orders.customer_id "
            "and customers.name = $1 and orders.note = $2", "E2E Customer", "e2e-no-such-note"),
    allowed("delete-in-cte-with-delete-rule",
            "with d as (delete from orders where id = $1 returning id) select count(*) from d", ORDER_DELETE_IN_CTE),
    allowed("merge", "merge into orders o using customers c on o.customer_id = c.id and o.id = $1 "
            "when matched then update set status = 'merged'", ORDER_MERGE),
    # Allowed by the policy, refused by PostgreSQL's constraints: a 400 with the sqlstate.
    allowed("not-null-violation", "insert into orders default values", sqlstate="23502"),
    allowed("unique-violation", "insert into ledger (note) values ($1)", "e2e-duplicate", sqlstate="23505"),
    allowed("foreign-key-violation-on-insert", "insert into orders (customer_id, total) values ($1, 1)", 424242,
            sqlstate="23503"),
    allowed("foreign-key-violation-on-delete", "delete from customers where id = $1", CUSTOMER, sqlstate="23503"),
]

DENIED = [
    denied("unlisted-table", "select * from secrets"),
    denied("unlisted-table-in-subquery", "select id from orders where exists (select 1 from secrets)"),
    denied("two-statements", "select 1; delete from orders"),
    denied("params-then-second-statement", "select $1,$2; delete from orders", "a", "b"),
    denied("param-zero", "select $0", "a"),
    denied("nul-byte", "select 1\x00; delete from orders"),
    denied("unicode-escaped-identifier", 'select * from U&"\\006frders"'),
    denied("three-part-name", "select * from gw_test.public.orders"),
    denied("denied-function", "select pg_sleep(1)"),
    denied("current-setting", "select current_setting('is_superuser')"),
    denied("set-config", "select set_config('role', 'postgres', true)"),
    denied("file-read", "select pg_read_file('/etc/passwd')"),
    denied("table-function-in-lateral", "select * from orders o, lateral pg_ls_dir('.') f"),
    denied("mysql-alias", "select lcase(status) from orders"),
    denied("explicit-operator", "select 1 OPERATOR(pg_catalog.+) 2"),
    denied("cast-to-regclass", "select $1::regclass", "pg_authid"),
    denied("catalog-without-exact-rule", "select rolname from pg_authid"),
    denied("information-schema", "select * from information_schema.tables"),
    denied("select-into", "select * into e2e_copy from orders"),
    denied("read-only-table-written", "delete from moods"),
    denied("insert-into-read-only-table", "insert into moods values (3, 'ok')"),
    denied("ddl-without-rule", "create table e2e_scratch (id int)"),
    denied("truncate-without-rule", "truncate orders"),
    denied("set-role", "SET ROLE postgres"),
    denied("reset-all", "RESET ALL"),
    denied("begin", "BEGIN"),
    denied("listen", "LISTEN x"),
    denied("copy-to-stdout", "COPY orders TO STDOUT"),
    denied("do-block", "DO $$ begin perform 1; end $$"),
    denied("show", "SHOW search_path"),
    denied("for-update-without-update", "select * from customers for update", subject="corpus-selector"),
    denied("update-without-update", "update customers set name = 'x'", subject="corpus-selector"),
    denied("merge-without-merge", "merge into orders o using customers c on o.customer_id = c.id "
           "when matched then delete", subject="corpus-selector"),
]


# ---------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def superuser_session(database: PgServer) -> Iterator[Superuser]:
    """One superuser connection for the module, on the search path the gateway pins (§5)."""
    connection = Superuser(database)
    connection.execute("SET search_path = pg_catalog, public")
    yield connection
    connection.close()


@pytest.fixture(scope="module")
def e2e_gateway(superuser_session: Superuser, launch_gateway: Callable[..., GatewayProcess],
                gateway_config: Callable[..., str]) -> Iterator[GatewayProcess]:
    """The module's role, rows and gateway; every row the module adds is removed at the end."""
    baseline = {table: superuser_session.fetchval(f"SELECT coalesce(max(id), 0) FROM public.{table}")
                for table in ("orders", "customers", "ledger")}
    superuser_session.execute(f"DROP ROLE IF EXISTS {ROLE}")
    superuser_session.execute(SETUP_SQL)
    gateway = launch_gateway(config_text=gateway_config(IDENTITIES))
    yield gateway
    gateway.stop()  # before the role goes: its pool switches to it
    for table in ("orders", "customers", "ledger"):  # orders before the customers they reference
        superuser_session.fetch(f"DELETE FROM public.{table} WHERE id > $1", baseline[table])
    superuser_session.execute(f"DROP OWNED BY {ROLE}; DROP ROLE {ROLE}")


@pytest.fixture(scope="module")
def caller(e2e_gateway: GatewayProcess, call_as: Callable[..., Api]) -> Callable[[str], Api]:
    """`caller("corpus")` -> an Api calling the module's gateway as that subject, tenant acme."""
    return lambda subject: call_as(e2e_gateway, subject, tenant="acme")


# ---------------------------------------------------------------------------- PostgreSQL's view


def planned_relations(superuser: Superuser, sql: str, params: tuple[Any, ...]) -> set[str]:
    """`schema.table` for every relation in PostgreSQL's plan of the statement, parameters bound.
    EXPLAIN without ANALYZE runs nothing, writes included."""
    plan = orjson.loads(superuser.fetchval(f"EXPLAIN (VERBOSE, FORMAT JSON) {sql}", *params))
    found: set[str] = set()
    stack: list[Any] = [plan]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, dict):
            if "Relation Name" in node:
                found.add(f"{node['Schema']}.{node['Relation Name']}")
            stack.extend(node.values())
    return found


def explain(api: Api, sql: str, params: tuple[Any, ...]) -> dict[str, Any]:
    response = api.post("/v1/explain", {"sql": sql, "params": list(params)})
    assert response.status_code == 200, response.text
    return response.json()


def error_of(response: Any) -> dict[str, Any]:
    return response.json()["error"]


# ---------------------------------------------------------------------------- allowed statements


@pytest.mark.parametrize("case", ALLOWED)
def test_allowed_statement_runs(caller: Callable[[str], Api], case: Allowed) -> None:
    response = caller("corpus").query(case.sql, *case.params)
    if case.sqlstate is None:
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text
        assert error_of(response)["code"] == "sql_error"
        assert error_of(response)["sqlstate"] == case.sqlstate


@pytest.mark.parametrize("case", ALLOWED)
def test_postgres_plans_exactly_the_reported_tables(caller: Callable[[str], Api], superuser_session: Superuser,
                                                    case: Allowed) -> None:
    decision = explain(caller("corpus"), case.sql, case.params)
    assert decision["allowed"] is True, decision["reason"]
    assert planned_relations(superuser_session, case.sql, case.params) == set(decision["tables"])


def test_corpus_holds_at_least_forty_statements() -> None:
    assert len(ALLOWED) + len(DENIED) >= 40


# ---------------------------------------------------------------------------- denied statements


@pytest.mark.parametrize("case", DENIED)
def test_denied_statement_gets_403_with_a_reason(caller: Callable[[str], Api], case: Denied) -> None:
    api = caller(case.subject)
    response = api.query(case.sql, *case.params)
    assert response.status_code == 403, response.text
    error = error_of(response)
    assert error["code"] == "policy_denied"
    assert error["message"]
    decision = explain(api, case.sql, case.params)
    assert decision["allowed"] is False
    assert decision["reason"] == error["message"]


# ---------------------------------------------------------------------------- what PostgreSQL would refuse

# Statements PostgreSQL's own parser or catalog refuses: answered as PostgreSQL answers them,
# never sent, and never with advice to add a rule.
REFUSED_BY_POSTGRES = [
    pytest.param("select $1,$2$ from secrets $2$", ("a",), id="param-followed-by-dollar-tag"),
    pytest.param("select id from orders wher id = 1", (), id="syntax-error"),
    pytest.param("select id from orders where", (), id="syntax-error-at-end"),
    pytest.param("select 'é', id from orders wher id = 1", (), id="position-in-characters"),
    pytest.param("select 'unterminated", (), id="scanner-error"),
    pytest.param("select id from orders join nowhere on true", (), id="relation-does-not-exist"),
    pytest.param("select id from public.nowhere", (), id="qualified-relation-does-not-exist"),
]


@pytest.mark.parametrize(("sql", "params"), REFUSED_BY_POSTGRES)
def test_what_postgres_refuses_is_its_own_error(caller: Callable[[str], Api], superuser_session: Superuser,
                                                sql: str, params: tuple[Any, ...]) -> None:
    with pytest.raises(asyncpg.PostgresError) as raised:
        superuser_session.fetch(sql, *params)
    expected = raised.value
    api = caller("corpus")
    response = api.query(sql, *params)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert (error["code"], error["sqlstate"], error["message"], error["position"]) == (
        "sql_error", expected.sqlstate, expected.message, int(expected.position))
    assert "rule" not in error["message"]
    decision = explain(api, sql, params)
    assert decision["allowed"] is False
    assert decision["reason"] == expected.message


# ---------------------------------------------------------------------------- smuggled writes


@dataclass(frozen=True)
class Smuggled:
    """A write hidden in a statement of another kind; `probe` (same parameter) reads, as
    superuser, what the write would change."""

    sql: str
    probe: str
    subject: str  # an identity without the write kind, whose role could make the write
    denied_key: Any
    allowed_key: Any  # another row, for an identity that may make the write


SMUGGLED = [
    pytest.param(
        Smuggled("with u as (update orders set status = 'smuggled' where id = $1 returning id) select * from u",
                 "SELECT status FROM public.orders WHERE id = $1", "corpus-selector",
                 ORDER_SMUGGLE_DENIED, ORDER_SMUGGLE_ALLOWED),
        id="update-in-cte",
    ),
    pytest.param(
        Smuggled("with d as (delete from ledger where note = $1 returning id) select count(*) from d",
                 "SELECT count(*) FROM public.ledger WHERE note = $1", "corpus-selector",
                 "e2e-delete-denied", "e2e-delete-allowed"),
        id="delete-in-cte",
    ),
    pytest.param(
        Smuggled("insert into ledger (note) values ($1) "
                 "on conflict (note) do update set note = excluded.note || '-smuggled' returning id",
                 "SELECT array_agg(note ORDER BY note) FROM public.ledger WHERE note LIKE $1 || '%'",
                 "corpus-appender", "e2e-upsert-denied", "e2e-upsert-allowed"),
        id="on-conflict-do-update",
    ),
]


@pytest.mark.parametrize("case", SMUGGLED)
def test_smuggled_write_is_denied_and_changes_nothing(caller: Callable[[str], Api], superuser_session: Superuser,
                                                      case: Smuggled) -> None:
    before = superuser_session.fetchval(case.probe, case.denied_key)
    response = caller(case.subject).query(case.sql, case.denied_key)
    assert response.status_code == 403, response.text
    assert error_of(response)["code"] == "policy_denied"
    assert superuser_session.fetchval(case.probe, case.denied_key) == before


@pytest.mark.parametrize("case", SMUGGLED)
def test_smuggled_write_does_change_the_row_when_allowed(caller: Callable[[str], Api],
                                                         superuser_session: Superuser, case: Smuggled) -> None:
    """The denial above is the policy's doing: the same statement writes for "corpus"."""
    before = superuser_session.fetchval(case.probe, case.allowed_key)
    response = caller("corpus").query(case.sql, case.allowed_key)
    assert response.status_code == 200, response.text
    assert superuser_session.fetchval(case.probe, case.allowed_key) != before

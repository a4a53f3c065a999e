"""The policy with a catalog snapshot: unqualified names resolved exactly along the
pinned search path, column rules, functions a schema on the path shadows, the decision
cache across snapshots, and the rate of cache misses per identity.

No database: the snapshot is built here. `test_policy_database.py` reads a real one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.catalog import CatalogError, CatalogSnapshot, dump_snapshot, load_snapshot, snapshot_from_rows
from gateway.config import ConfigError, PolicyConfig, parse_config
from gateway.errors import GatewayError
from gateway.identity import Identity
from gateway.policy import PolicyEngine
from gateway.policy.analysis import SAFE_CAST_TYPES
from gateway.policy.functions import DENIED_FUNCTIONS, DENIED_PREFIXES, SAFE_FUNCTIONS

SYSTEM_COLUMNS = ["tableoid", "cmax", "xmax", "cmin", "xmin", "ctid"]
RELATIONS = {
    "pg_catalog": {"pg_class": ["oid", "relname"], "pg_authid": ["oid", "rolname", "rolpassword"]},
    "public": {
        "customers": ["id", "tenant", "name", "country", "email", *SYSTEM_COLUMNS],
        "orders": ["id", "tenant", "customer_id", "status", "total", "note", "created_at", *SYSTEM_COLUMNS],
        "payments": ["id", "order_id", "secret", *SYSTEM_COLUMNS],
        "pg_class": ["id"],  # a user table named like a catalog relation
        "recent_orders": ["id", "status"],  # a view: no system columns
    },
    "app": {"orders": ["id", "item", *SYSTEM_COLUMNS]},
}
# Built-ins are listed by name, as the gateway reads them.
BUILTINS = {"pg_catalog": {name: [] for name in ("lower", "set_config", "current_setting", "pg_sleep", "count")}}
CATALOG = snapshot_from_rows(
    RELATIONS, {**BUILTINS, "other": {"lower": ["text"]}}, taken_at="2026-01-01T00:00:00+00:00"
)
PLANTED = snapshot_from_rows(
    RELATIONS, {**BUILTINS, "public": {"lower": ["character varying"], "set_config": ["text, text, boolean"]}}
)
# What PostgreSQL calls on its own: a policy on orders (built-ins that leave the session alone),
# a trigger on orders, a view that calls set_config.
IMPLICIT = snapshot_from_rows(
    RELATIONS,
    BUILTINS,
    implicit_reads={
        "public": {
            "orders": ["pg_catalog.current_setting", "pg_catalog.texteq"],
            "recent_orders": ["pg_catalog.set_config"],
        }
    },
    implicit_writes={"public": {"orders": ["pg_catalog.current_setting", "pg_catalog.texteq", "public.audit"]}},
)

BASE: dict[str, Any] = {
    "name": "catalog-tests",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
}
IDENTITIES_CONFIG = [
    {
        "name": "narrowed",
        "issuer": "dev",
        "role": "app_reader",
        "rules": [
            {
                "allow": ["select"],
                "tables": ["public.orders", "public.customers"],
                "columns": {"public.customers": ["id", "name"]},
            },
            {
                "allow": ["insert", "update"],
                "tables": ["public.orders"],
                "columns": {"public.orders": ["status", "note"]},
            },
        ],
    },
    {
        # Narrowed by one rule, but another rule allows the whole table: rules add up.
        "name": "widened",
        "issuer": "dev",
        "role": "app_reader",
        "rules": [
            {"allow": ["select"], "tables": ["public.customers"], "columns": {"public.customers": ["id"]}},
            {"allow": ["select"], "tables": ["public.*"]},
        ],
    },
    {
        # Writes only `status`, reads nothing more of orders than it writes.
        "name": "status-writer",
        "issuer": "dev",
        "role": "app_writer",
        "rules": [{"allow": ["update"], "tables": ["public.orders"], "columns": {"public.orders": ["status"]}}],
    },
    {
        "name": "app",
        "issuer": "dev",
        "role": "app_reader",
        "schemas": ["app", "public"],
        "rules": [{"allow": ["select"], "tables": ["app.orders", "public.customers"]}],
    },
    {
        "name": "reader",
        "issuer": "dev",
        "role": "app_reader",
        "rules": [{"allow": ["select"], "tables": ["public.*"]}],
    },
    {
        "name": "trusting",
        "issuer": "dev",
        "role": "app_reader",
        "functions": ["public.lower", "set_config"],
        "rules": [{"allow": ["select"], "tables": ["public.*"]}],
    },
    {
        "name": "overreach",
        "issuer": "dev",
        "role": "app_writer",
        "rules": [{"allow": ["select", "update"], "tables": ["public.*"]}],
    },
    {
        "name": "configurer",
        "issuer": "dev",
        "role": "app_reader",
        "functions": ["set_config", "public.set_config"],
        "rules": [{"allow": ["select"], "tables": ["public.*"]}],
    },
]
IDENTITIES = {
    config.name: Identity.from_config(config)
    for config in parse_config({**BASE, "identities": IDENTITIES_CONFIG}).identities
}


def engine_with(catalog: CatalogSnapshot | None = CATALOG, **config: Any) -> PolicyEngine:
    return PolicyEngine(PolicyConfig(**config), catalog)


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return engine_with()


def decide(engine: PolicyEngine, identity: str, sql: str):
    return engine.decide(IDENTITIES[identity], sql)[1]


def case(case_id: str, sql: str, identity: str, allowed: bool, category: str | None = None) -> Any:
    return pytest.param(sql, identity, allowed, category, id=case_id)


def assert_decision(engine: PolicyEngine, sql: str, identity: str, allowed: bool, category: str | None) -> None:
    decision = decide(engine, identity, sql)
    assert decision.allowed is allowed, decision.reason
    assert decision.category == category, decision.reason
    if not allowed:
        assert decision.reason


# ---------------------------------------------------------------------------- tables on the search path

SEARCH_PATH = [
    case("first-schema-that-has-it", "select * from orders", "app", True),
    case("later-schema-when-the-first-lacks-it", "select * from customers", "app", True),
    case("catalog-relation-wins-over-a-user-table", "select * from pg_class", "reader", False, "table"),
    case("user-table-named-like-catalog-when-qualified", "select * from public.pg_class", "reader", True),
    # PostgreSQL's answer, not advice to add a rule for a relation that does not exist.
    case("unknown-name-is-a-missing-relation", "select * from nowhere", "app", False, "missing_relation"),
    case("qualified-name-taken-as-written", "select * from public.orders", "app", False, "table"),
]


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), SEARCH_PATH)
def test_unqualified_names_resolve_along_the_pinned_search_path(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


def test_decision_names_the_table_the_snapshot_resolves_to(engine):
    assert decide(engine, "app", "select * from orders").tables == ("app.orders",)
    assert decide(engine, "app", "select * from customers").tables == ("public.customers",)


def test_a_name_the_snapshot_lacks_may_be_any_schema_of_the_path(engine):
    assert decide(engine, "app", "select * from nowhere").tables == ("app.nowhere", "public.nowhere")


def test_without_a_snapshot_a_name_must_be_allowed_in_every_schema():
    decision = decide(engine_with(None), "app", "select * from orders")
    assert not decision.allowed
    assert decision.reason.startswith('SELECT on public.orders is not allowed for identity "app"')


# ---------------------------------------------------------------------------- column rules

COLUMNS = [
    case("listed-columns", "select id, name from customers where id = $1 order by name", "narrowed", True),
    case("unlisted-column-in-select-list", "select email from customers", "narrowed", False, "columns"),
    case("unlisted-column-in-where", "select id from customers where country = $1", "narrowed", False, "columns"),
    case("unlisted-column-in-order-by", "select id from customers order by country", "narrowed", False, "columns"),
    case("unlisted-column-in-group-by", "select count(*) from customers group by country", "narrowed", False,
         "columns"),
    case("unlisted-column-in-having", "select id from customers group by id having max(email) > ''", "narrowed",
         False, "columns"),
    case("unlisted-column-in-join", "select o.id from orders o join customers c on c.email = o.note", "narrowed",
         False, "columns"),
    case("unlisted-column-in-window", "select id, rank() over (order by country) from customers", "narrowed",
         False, "columns"),
    case("unlisted-column-in-subquery", "select id from orders where customer_id in "
         "(select id from customers where email = $1)", "narrowed", False, "columns"),
    case("unlisted-column-in-cte", "with c as (select email from customers) select 1 from c", "narrowed", False,
         "columns"),
    case("unlisted-column-in-lateral",
         "select x.e from orders o, lateral (select email as e from customers where id = o.customer_id) x",
         "narrowed", False, "columns"),
    case("unlisted-column-in-union", "select id from orders union select country from customers", "narrowed",
         False, "columns"),
    case("unqualified-column-found-in-the-other-table", "select status, name from orders join customers "
         "on customers.id = orders.customer_id", "narrowed", True),
    case("schema-qualified-column-reference", "select public.customers.email from customers", "narrowed", False,
         "columns"),
    case("correlated-reference-to-an-outer-table", "select id from customers c where exists "
         "(select 1 from orders o where o.customer_id = c.id and note = c.email)", "narrowed", False, "columns"),
    case("inner-table-shadows-the-outer-column", "select name from customers c where exists "
         "(select 1 from orders where status = 'x' and tenant = 'y')", "narrowed", True),
    case("output-alias-in-order-by", "select name as email from customers order by email", "narrowed", True),
    case("star", "select * from customers", "narrowed", False, "columns"),
    case("qualified-star", "select c.* from customers c", "narrowed", False, "columns"),
    case("star-through-a-join", "select * from orders join customers on customers.id = orders.customer_id",
         "narrowed", False, "columns"),
    case("star-inside-exists-reads-nothing", "select id from orders where exists (select * from customers)",
         "narrowed", True),
    case("count-star", "select count(*) from customers", "narrowed", True),
    case("star-of-a-derived-table-of-listed-columns", "select * from (select id, name from customers) c",
         "narrowed", True),
    case("whole-row-reference", "select c from customers c", "narrowed", False, "columns"),
    case("whole-row-by-table-name", "select customers from customers", "narrowed", False, "columns"),
    case("whole-row-in-a-function", "select row_to_json(c) from customers c", "narrowed", False, "columns"),
    case("whole-row-star-in-a-function", "select to_jsonb(c.*) from customers c", "narrowed", False, "columns"),
    case("composite-field-access", "select (c).email from customers c", "narrowed", False, "columns"),
    case("field-notation-function-of-the-row", "select c.nosuchcolumn from customers c", "narrowed", False,
         "columns"),
    case("natural-join", "select id from orders natural join customers", "narrowed", False, "columns"),
    case("join-using-reads-both-sides", "select status from orders join customers using (tenant)", "narrowed",
         False, "columns"),
    case("column-aliases-rename-the-columns", "select a, b from customers c(a, b)", "narrowed", False,
         "columns"),
    case("system-column", "select ctid from customers", "narrowed", False, "columns"),
    case("unknown-column-is-judged-against-the-table", "select nosuch from customers", "narrowed", False,
         "columns"),
    case("table-without-column-rules", "select * from orders", "narrowed", True),
    case("another-rule-allows-the-whole-table", "select * from customers", "widened", True),
]

WRITES = [
    case("listed-column-written", "update orders set status = $1 where id = $2", "narrowed", True),
    case("unlisted-column-written", "update orders set total = 0 where id = $1", "narrowed", False, "columns"),
    case("row-assignment", "update orders set (status, total) = ($1, $2)", "narrowed", False, "columns"),
    case("insert-listed-columns", "insert into orders (status, note) values ($1,$2) returning id", "narrowed",
         True),
    case("insert-unlisted-column", "insert into orders (status, total) values ($1,$2)", "narrowed", False,
         "columns"),
    case("insert-without-a-column-list", "insert into orders values ($1)", "narrowed", False, "columns"),
    case("insert-select-without-a-column-list", "insert into orders select * from orders", "narrowed", False,
         "columns"),
    case("insert-default-values", "insert into orders default values", "narrowed", True),
    case("upsert-writes-its-set-columns", "insert into orders (status) values ($1) on conflict (id) "
         "do update set total = excluded.total", "narrowed", False, "columns"),
    case("upsert-of-listed-columns", "insert into orders (status) values ($1) on conflict (id) "
         "do update set status = excluded.status", "narrowed", True),
    case("returning-reads-the-target", "update orders set status = $1 returning total", "status-writer", False,
         "columns"),
    case("where-of-an-update-reads-the-target", "update orders set status = $1 where id = $2", "status-writer",
         False, "columns"),
    # A write rule's columns govern what is written; every read is judged by the select rules.
    case("update-reading-only-its-columns", "update orders set status = $1 where status = $2", "status-writer",
         False, "columns"),
    case("returning-star", "update orders set status = $1 returning *", "status-writer", False, "columns"),
]


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), COLUMNS)
def test_column_rules_narrow_every_read(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), WRITES)
def test_column_rules_narrow_every_write(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


def test_column_reason_names_identity_column_and_the_rule_that_would_allow_it(engine):
    reason = decide(engine, "narrowed", "select email from customers").reason
    assert reason.startswith('reading column public.customers.email is not allowed for identity "narrowed"')
    assert "id, name" in reason
    assert 'allow = ["select"] and "email" in columns."public.customers"' in reason


def test_write_reason_names_the_write_kind(engine):
    reason = decide(engine, "narrowed", "update orders set total = 0").reason
    assert reason.startswith("writing column public.orders.total")
    assert 'allow = ["update"]' in reason


@pytest.mark.parametrize(
    ("sql", "said"),
    [
        ("select * from customers", "SELECT *"),
        ("select c.* from customers c", "c.*"),
        ("select c from customers c", "the whole-row reference c"),
        ("select id from orders natural join customers", "the NATURAL JOIN"),
    ],
)
def test_whole_row_reasons_say_what_used_every_column(engine, sql, said):
    reason = decide(engine, "narrowed", sql).reason
    assert reason.startswith(f"{said} uses every column of public.customers")
    assert "name the columns instead" in reason


def test_insert_without_columns_reason_says_to_list_them(engine):
    assert "without a column list" in decide(engine, "narrowed", "insert into orders values ($1)").reason


def test_decision_lists_the_columns_used(engine):
    decision = decide(engine, "narrowed", "select o.id, c.name from orders o join customers c on c.id = o.customer_id")
    assert decision.columns == (
        "public.customers.id",
        "public.customers.name",
        "public.orders.customer_id",
        "public.orders.id",
    )
    assert decision.as_json()["columns"] == list(decision.columns)


def test_decision_lists_every_column_of_a_star_as_table_star(engine):
    assert decide(engine, "reader", "select * from orders").columns == ("public.orders.*",)


def test_decision_lists_written_columns(engine):
    assert decide(engine, "narrowed", "update orders set status = $1").columns == ("public.orders.status",)


def test_without_a_snapshot_a_lone_table_still_owns_its_columns():
    engine = engine_with(None)
    assert decide(engine, "narrowed", "select id, name from customers").allowed
    assert decide(engine, "narrowed", "select email from customers").category == "columns"


def test_without_a_snapshot_an_unqualified_column_may_be_any_tables():
    decision = decide(engine_with(None), "narrowed", "select status from orders, customers")
    assert decision.category == "columns"  # status may be customers.status as far as anyone knows


# ---------------------------------------------------------------------------- functions on the search path


def test_a_function_a_schema_on_the_path_shadows_is_denied():
    decision = decide(engine_with(PLANTED), "reader", "select lower(name) from customers")
    assert decision.category == "function"
    assert "public.lower(character varying)" in decision.reason
    assert "pg_catalog.lower" in decision.reason
    assert '"public.lower"' in decision.reason


def test_the_built_in_called_by_its_qualified_name_is_allowed():
    assert decide(engine_with(PLANTED), "reader", "select pg_catalog.lower(name) from customers").allowed


def test_the_shadowing_function_allowed_by_qualified_name_may_run():
    decision = decide(engine_with(PLANTED), "trusting", "select lower(name) from customers")
    assert decision.allowed
    assert decision.resets_session


def test_a_function_in_a_schema_off_the_path_shadows_nothing(engine):
    assert decide(engine, "reader", "select lower(name) from customers").allowed  # other.lower exists


def test_a_deny_list_function_allowed_by_name_is_still_shadowed():
    assert decide(engine_with(PLANTED), "trusting", "select set_config('a.b', 'c', true)").category == "function"
    assert decide(engine_with(PLANTED), "configurer", "select set_config('a.b', 'c', true)").allowed


def test_without_a_snapshot_shadowing_cannot_be_seen():
    assert decide(engine_with(None), "reader", "select lower(name) from customers").allowed


@pytest.mark.parametrize(
    ("identity", "sql", "resets"),
    [
        ("reader", "select lower(name) from customers", False),
        ("trusting", "select set_config('a.b', 'c', true)", True),
        ("configurer", "select public.set_config('a.b', 'c', true)", True),
    ],
)
def test_a_function_beyond_the_safe_list_marks_the_session_for_a_reset(engine, identity, sql, resets):
    decision = decide(engine, identity, sql)
    assert decision.allowed, decision.reason
    assert decision.resets_session is resets


@pytest.mark.parametrize(
    ("sql", "resets"),
    [
        ("select status from orders", False),  # its policy calls built-ins that leave the session alone
        ("select id from recent_orders", True),  # the view calls set_config
        ("update orders set status = 'x' where id = 1", True),  # a trigger outside pg_catalog
        ("select name from customers", False),
    ],
)
def test_what_postgresql_calls_on_its_own_marks_the_session_for_a_reset(sql, resets):
    identity = IDENTITIES["overreach"]
    decision = engine_with(IMPLICIT).decide(identity, sql)[1]
    assert decision.allowed, decision.reason
    assert decision.resets_session is resets


# ---------------------------------------------------------------------------- caches and snapshots


def test_a_new_snapshot_drops_the_decisions_made_with_the_old_one():
    engine = engine_with(CATALOG)
    sql = "select lower(name) from customers"
    assert decide(engine, "reader", sql).allowed
    engine.use_catalog(PLANTED)
    assert not decide(engine, "reader", sql).allowed


def test_a_new_snapshot_keeps_the_analysis():
    engine = engine_with(CATALOG)
    facts, _ = engine.decide(IDENTITIES["reader"], "select id from orders")
    engine.use_catalog(PLANTED)
    again, _ = engine.decide(IDENTITIES["reader"], "select id from orders")
    assert again is facts


def test_cache_misses_over_the_identitys_rate_are_rate_limited():
    engine = PolicyEngine(PolicyConfig(analysis_rate=2), CATALOG, limit_misses=True)
    engine.decide(IDENTITIES["reader"], "select 1")
    engine.decide(IDENTITIES["reader"], "select 2")
    with pytest.raises(GatewayError) as raised:
        engine.decide(IDENTITIES["reader"], "select 3")
    assert (raised.value.status, raised.value.code) == (429, "rate_limited")
    assert int(raised.value.headers["Retry-After"]) >= 1
    assert '"reader"' in raised.value.message


def test_cached_decisions_are_not_rate_limited():
    engine = PolicyEngine(PolicyConfig(analysis_rate=1), CATALOG, limit_misses=True)
    engine.decide(IDENTITIES["reader"], "select 1")
    for _ in range(5):
        assert engine.decide(IDENTITIES["reader"], "select 1")[1].allowed


def test_a_text_analysed_for_another_identity_is_not_a_miss():
    engine = PolicyEngine(PolicyConfig(analysis_rate=1), CATALOG, limit_misses=True)
    engine.decide(IDENTITIES["reader"], "select 1")
    engine.decide(IDENTITIES["narrowed"], "select 2")
    assert engine.decide(IDENTITIES["narrowed"], "select 1")[1].allowed


def test_each_identity_has_its_own_budget_of_misses():
    engine = PolicyEngine(PolicyConfig(analysis_rate=1), CATALOG, limit_misses=True)
    engine.decide(IDENTITIES["reader"], "select 1")
    with pytest.raises(GatewayError):
        engine.decide(IDENTITIES["reader"], "select 2")
    assert engine.decide(IDENTITIES["narrowed"], "select 3")[1].allowed


def test_misses_are_not_limited_unless_asked():
    engine = PolicyEngine(PolicyConfig(analysis_rate=1), CATALOG)
    for n in range(5):
        engine.decide(IDENTITIES["reader"], f"select {n}")


# ---------------------------------------------------------------------------- bugs fixed


def test_mixed_qualified_and_unqualified_names_are_judged_not_raised(engine):
    decision = decide(engine, "reader", "select * from orders o join public.customers c on c.id = o.customer_id")
    assert decision.allowed, decision.reason


def test_non_ascii_text_before_a_parameter_is_analysed(engine):
    decision = decide(engine, "reader", "select id from customers where name = 'Zoë' and country = $1")
    assert decision.allowed, decision.reason


def test_a_failure_while_judging_is_a_denial_not_an_error(monkeypatch):
    def broken(self):
        raise KeyError("bug")

    monkeypatch.setattr("gateway.policy.resolution.ColumnResolver.uses", broken)
    decision = decide(engine_with(), "reader", "select id from orders")
    assert (decision.allowed, decision.category) == (False, "internal")
    assert "could not be judged" in decision.reason


def test_a_denied_decision_still_lists_the_columns_it_understood(engine):
    decision = decide(engine, "narrowed", "delete from orders where id = $1")
    assert decision.category == "table"
    assert decision.columns == ("public.orders.id",)


# ---------------------------------------------------------------------------- the snapshot file


def test_a_snapshot_survives_its_json_form(tmp_path: Path):
    path = tmp_path / "snapshot.json"
    path.write_bytes(dump_snapshot(PLANTED))
    loaded = load_snapshot(path)
    assert loaded == PLANTED
    assert loaded.columns("public", "customers") == frozenset(RELATIONS["public"]["customers"])
    assert loaded.signatures("public", "lower") == ("character varying",)


def test_the_functions_postgresql_calls_on_its_own_survive_the_json_form(tmp_path: Path):
    path = tmp_path / "snapshot.json"
    path.write_bytes(dump_snapshot(IMPLICIT))
    loaded = load_snapshot(path)
    assert loaded == IMPLICIT
    assert loaded.implicit_calls("public", "recent_orders", write=False) == {"pg_catalog.set_config"}
    assert "public.audit" in loaded.implicit_calls("public", "orders", write=True)


def test_the_shapes_of_relations_survive_the_json_form(tmp_path: Path):
    shaped = snapshot_from_rows(RELATIONS, BUILTINS, shapes={"public": {"orders": {
        "kind": "table",
        "columns": [["id", "bigint", False], ["customer_id", "bigint", True]],
        "primaryKey": ["id"],
        "foreignKeys": [[["customer_id"], ["public", "customers"], ["id"]]],
    }}})
    path = tmp_path / "snapshot.json"
    path.write_bytes(dump_snapshot(shaped))
    loaded = load_snapshot(path)
    assert loaded == shaped
    orders = loaded.shape("public", "orders")
    assert orders is not None and orders.columns[1].nullable
    assert orders.foreign_keys[0].references == ("public", "customers")
    assert loaded != snapshot_from_rows(RELATIONS, BUILTINS)  # a change of shape alone is a new snapshot


def test_snapshots_are_equal_whenever_they_were_taken():
    again = snapshot_from_rows(
        RELATIONS, {**BUILTINS, "other": {"lower": ["text"]}}, taken_at="2027-01-01T00:00:00+00:00"
    )
    assert again == CATALOG


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"{", "not valid JSON"),
        (b"[]", "format"),
        (b'{"format": 2, "relations": {"public": {"t": "id"}}, "functions": {}}', "relations.public.t"),
        (b'{"format": 2, "relations": {}}', "functions"),
        (b'{"format": 2, "relations": {}, "functions": {}, "creatable": {"r": "public"}}', "creatable.r"),
        (b'{"format": 2, "relations": {}, "functions": {}, "implicit_reads": {"public": {"v": "f"}}}',
         "implicit_reads.public.v"),
        (b'{"format": 2, "relations": {}, "functions": {}, "implicit_writes": []}', "implicit_writes"),
        (b'{"format": 2, "relations": {}, "functions": {}, "shapes": {"public": {"t": {"kind": "table"}}}}',
         "shapes.public.t"),
        (b'{"format": 1, "relations": {}, "functions": {}}', "dump it again"),
    ],
)
def test_a_bad_snapshot_file_is_refused_naming_the_problem(tmp_path: Path, content: bytes, problem: str):
    path = tmp_path / "snapshot.json"
    path.write_bytes(content)
    with pytest.raises(CatalogError) as raised:
        load_snapshot(path)
    assert str(path) in str(raised.value)
    assert problem in str(raised.value)


# ---------------------------------------------------------------------------- configuration


def test_column_rules_must_name_a_table_their_rule_covers():
    identity = {**IDENTITIES_CONFIG[0], "rules": [
        {"allow": ["select"], "tables": ["public.orders"], "columns": {"public.customers": ["id"]}},
    ]}
    with pytest.raises(ConfigError) as raised:
        parse_config({**BASE, "identities": [identity]})
    assert "identities[0].rules[0].columns.public.customers" in str(raised.value)


def test_column_rules_may_narrow_a_table_a_schema_wildcard_covers():
    identity = {**IDENTITIES_CONFIG[0], "rules": [
        {"allow": ["select"], "tables": ["public.*"], "columns": {"public.customers": ["id"]}},
    ]}
    parse_config({**BASE, "identities": [identity]})


def test_policy_settings_have_defaults_and_parse_rates_and_durations():
    assert (PolicyConfig().analysis_rate, PolicyConfig().catalog_refresh) == (200.0, 300.0)
    config = parse_config({**BASE, "policy": {"analysis_rate": "50/s", "catalog_refresh": "1m"}})
    assert (config.policy.analysis_rate, config.policy.catalog_refresh) == (50.0, 60.0)


def test_an_analysis_rate_of_zero_is_refused():
    with pytest.raises(ConfigError) as raised:
        parse_config({**BASE, "policy": {"analysis_rate": "0/s"}})
    assert "policy.analysis_rate" in str(raised.value)


# ---------------------------------------------------------------------------- the documentation

POLICY_DOC = Path(__file__).resolve().parent.parent / "docs" / "policy.md"


@pytest.mark.parametrize(
    "names",
    [
        pytest.param(sorted(SAFE_FUNCTIONS), id="safe-functions"),
        pytest.param(sorted(DENIED_FUNCTIONS) + list(DENIED_PREFIXES), id="deny-list"),
        pytest.param(sorted(SAFE_CAST_TYPES), id="safe-cast-types"),
    ],
)
def test_docs_list_every_name_of_the_safe_and_deny_lists(names):
    text = POLICY_DOC.read_text()
    assert [name for name in names if f"`{name}`" not in text] == []

"""Where the policy's model of a statement once differed from what PostgreSQL does, each
case as it was found: output names of casts and other expressions, reads inside writes, SQL
value functions, `set_config`, CASCADE, functions named by the name PostgreSQL resolves,
names the identity's own role could make resolve elsewhere, and what `/v1/explain` tells of
tables the identity may not read. Each test fails if its check alone is removed.

No database: the snapshot is built here; `test_policy_oracle.py` asks PostgreSQL itself.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.catalog import snapshot_from_rows
from gateway.config import ConfigError, PolicyConfig, parse_config
from gateway.db.session import TransactionSettings
from gateway.identity import Identity
from gateway.policy import Decision, PolicyEngine
from gateway.policy.analysis import analyze
from gateway.policy.functions import PROTECTED_SETTING_PREFIXES, PROTECTED_SETTINGS

SYSTEM_COLUMNS = ["tableoid", "cmax", "xmax", "cmin", "xmin", "ctid"]
RELATIONS = {
    "pg_catalog": {"pg_class": ["oid", "relname"]},
    "public": {
        "customers": ["id", "tenant", "name", "email", "ssn", *SYSTEM_COLUMNS],
        "orders": ["id", "customer_id", "status", "total", *SYSTEM_COLUMNS],
    },
    "scratch": {"notes": ["id", "body", *SYSTEM_COLUMNS]},
}
BUILTINS = {"pg_catalog": {name: [] for name in ("nullif", "lower", "set_config", "current_setting", "host")}}
CATALOG = snapshot_from_rows(RELATIONS, BUILTINS, {"scratch_owner": ["scratch"]})

BASE: dict[str, Any] = {
    "name": "exact-tests",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
}
SELECT_CUSTOMERS_NARROWED = {
    "allow": ["select"],
    "tables": ["public.customers", "public.orders"],
    "columns": {"public.customers": ["id", "tenant"]},
}
IDENTITIES_CONFIG = [
    {"name": "tenant-reader", "issuer": "dev", "role": "app_reader", "rules": [SELECT_CUSTOMERS_NARROWED]},
    {
        "name": "deleter",
        "issuer": "dev",
        "role": "app_writer",
        "rules": [
            {
                "allow": ["select"],
                "tables": ["public.customers", "public.orders"],
                "columns": {"public.customers": ["id", "name"]},
            },
            {"allow": ["delete", "update", "insert", "merge"], "tables": ["public.customers"]},
        ],
    },
    {
        "name": "blind-deleter",
        "issuer": "dev",
        "role": "app_writer",
        "rules": [{"allow": ["delete"], "tables": ["public.customers"]}],
    },
    {
        "name": "configurer",
        "issuer": "dev",
        "role": "app_reader",
        "functions": ["set_config"],
        "rules": [{"allow": ["select"], "tables": ["public.*"]}],
    },
    {
        "name": "setting-reader",
        "issuer": "dev",
        "role": "app_reader",
        "functions": ["pg_catalog.current_setting"],
        "rules": [{"allow": ["select"], "tables": ["public.*"]}],
    },
    {
        "name": "migrator",
        "issuer": "dev",
        "role": "app_owner",
        "rules": [{"allow": ["ddl", "select"], "tables": ["scratch.*"]}],
    },
    {
        "name": "cascader",
        "issuer": "dev",
        "role": "app_owner",
        "rules": [{"allow": ["ddl", "select"], "tables": ["scratch.*"], "cascade": True}],
    },
    {
        # Can create in scratch, which comes first on its path.
        "name": "scratcher",
        "issuer": "dev",
        "role": "scratch_owner",
        "schemas": ["scratch", "public"],
        "rules": [
            {"allow": ["ddl", "select"], "tables": ["scratch.*"]},
            SELECT_CUSTOMERS_NARROWED,
        ],
    },
    {
        # The same path and rules, with a role that cannot create anywhere.
        "name": "path-reader",
        "issuer": "dev",
        "role": "app_reader",
        "schemas": ["scratch", "public"],
        "rules": [{"allow": ["select"], "tables": ["scratch.*"]}, SELECT_CUSTOMERS_NARROWED],
    },
]
IDENTITIES = {
    config.name: Identity.from_config(config)
    for config in parse_config({**BASE, "identities": IDENTITIES_CONFIG}).identities
}


def decide(identity: str, sql: str) -> Decision:
    return PolicyEngine(PolicyConfig(), CATALOG).decide(IDENTITIES[identity], sql)[1]


def assert_denied(identity: str, sql: str, category: str, *needles: str) -> Decision:
    decision = decide(identity, sql)
    assert decision.allowed is False, f"allowed: {sql}"
    assert decision.category == category, decision.reason
    for needle in needles:
        assert needle in (decision.reason or ""), decision.reason
    return decision


def assert_allowed(identity: str, sql: str) -> Decision:
    decision = decide(identity, sql)
    assert decision.allowed is True, decision.reason
    return decision


# ---------------------------------------------------------------------------- output names


def test_a_cast_of_nullif_is_named_nullif_so_an_outer_name_reads_the_hidden_column():
    # PostgreSQL names `nullif('a','b')::name` "nullif": the bare `name` inside the scalar
    # subquery is customers.name, read from the outer level.
    assert_denied(
        "tenant-reader",
        "select id, (select name from (select nullif('a','b')::name) x) as leaked from customers",
        "columns",
        "public.customers.name",
    )


def test_order_by_a_name_no_output_has_sorts_by_the_hidden_column():
    assert_denied("tenant-reader", "select id, nullif('a','b')::name from customers order by name", "columns", "name")


def test_order_by_an_output_name_reads_nothing_more():
    assert_allowed("tenant-reader", "select id, tenant::text as name from customers order by name")


@pytest.mark.parametrize(
    "expression",
    [
        "coalesce('a', 'b')::name",
        "greatest('a', 'b')::name",
        "row('a')::text::name",
        "array['a']::name[]",
        "(select 'a' as x)::name",
        "exists (select 1)::name",
        "current_user::name",
        "lower('a')::name",
        "case when true then 'a' else tenant end::name",
    ],
)
def test_a_cast_keeps_its_arguments_own_name(expression):
    sql = f"select id, (select name from (select {expression}) x) from customers"
    assert_denied("tenant-reader", sql, "columns", "public.customers.name")


@pytest.mark.parametrize(
    "expression",
    ["'a'::name", "1::name", "(1 + 1)::name", "case when true then 'a' end::name", "'a'::text::name"],
)
def test_a_cast_of_an_unnamed_expression_is_named_after_its_type(expression):
    assert_allowed("tenant-reader", f"select id, (select name from (select {expression}) x) from customers")


def test_a_scalar_subquery_of_unknown_first_column_may_be_any_name():
    # `select *` of a set-returning function: its column names are not known here, so a
    # bare name outside may bind to it or to customers, and is judged as both.
    assert_denied(
        "tenant-reader",
        "select id, (select name from (select (select * from generate_series(1, 1))) x) from customers",
        "columns",
    )


# ---------------------------------------------------------------------------- reads inside writes


@pytest.mark.parametrize(
    "sql",
    [
        "delete from customers where id = 1 and ssn::int = 0",
        "delete from customers where id = 1 returning email, ssn",
        "update customers set name = ssn where id = 1",
        "update customers set name = 'x' where email = 'a@b'",
        "insert into customers (id, name) values (1, 'x') on conflict (email) do nothing",
        "insert into customers (id, name) values (1, 'x') on conflict (id) do update set name = customers.ssn",
        "insert into customers (id, name) select id, ssn from customers",
        "merge into customers c using orders o on c.ssn = o.status when matched then delete",
        "delete from customers c where c is not null",
    ],
)
def test_a_column_a_write_reads_is_judged_by_the_select_rules_alone(sql):
    # The identity may write every column, but read only id and name.
    assert_denied("deleter", sql, "columns")


def test_a_write_reading_only_readable_columns_is_allowed():
    assert_allowed("deleter", "delete from customers where id = 1 returning id, name")


def test_reading_inside_a_write_needs_a_select_rule_and_says_so_without_naming_columns():
    decision = assert_denied("blind-deleter", "delete from customers where ssn = '1'", "columns", "may not read")
    assert "ssn" not in (decision.reason or "")
    assert decision.columns == ()
    assert_allowed("blind-deleter", "delete from customers")


# ---------------------------------------------------------------------------- SQL value functions


@pytest.mark.parametrize("keyword", ["session_user", "system_user", "SESSION_USER"])
def test_the_login_role_is_not_revealed(keyword):
    assert_denied("tenant-reader", f"select {keyword}", "function", "deny list")


@pytest.mark.parametrize("keyword", ["current_user", "current_role", "user", "current_date", "localtimestamp"])
def test_sql_value_functions_are_judged_as_functions(keyword):
    decision = assert_allowed("tenant-reader", f"select {keyword}")
    assert decision.functions == (f"pg_catalog.{keyword}",)


# ---------------------------------------------------------------------------- set_config


@pytest.mark.parametrize(
    "setting",
    [
        "role",
        "ROLE",
        "Role",
        "session_authorization",
        "request.jwt.claims",
        "Request.JWT.Claims",
        "request.other",
        "search_path",
        "statement_timeout",
        "transaction_read_only",
        "application_name",
    ],
)
def test_set_config_never_changes_what_the_gateway_sets(setting):
    assert_denied("configurer", f"select set_config('{setting}', 'x', true)", "function", setting)


@pytest.mark.parametrize(
    "first_argument", ["$1", "'ro' || 'le'", "lower('ROLE')", "null", "setting_name => 'role'", "(select 'role')"]
)
def test_set_config_names_its_setting_with_a_constant(first_argument):
    assert_denied("configurer", f"select set_config({first_argument}, 'x', true)", "function", "constant")


def test_set_config_may_change_other_settings_when_allowed():
    assert_allowed("configurer", "select set_config('TimeZone', 'UTC', true)")
    assert_allowed("configurer", "select pg_catalog.set_config('DateStyle', 'ISO', true)")


def test_every_setting_a_transaction_sets_is_protected():
    settings = TransactionSettings("r", ("public",), 1, 1, 1)
    named = {part.split("'")[1] for part in "; ".join(settings.setup_statements("tag", "{}")).split("set_config(E")[1:]}
    assert named
    assert all(name in PROTECTED_SETTINGS or name.startswith(PROTECTED_SETTING_PREFIXES) for name in named), named


# ---------------------------------------------------------------------------- CASCADE


@pytest.mark.parametrize(
    "sql",
    [
        "drop table scratch.notes cascade",
        "truncate scratch.notes cascade",
        "alter table scratch.notes drop column body cascade",
        "revoke select on scratch.notes from app_reader cascade",
    ],
)
def test_cascade_needs_a_rule_that_says_so(sql):
    assert_denied("migrator", sql, "cascade", "cascade = true")
    assert_allowed("cascader", sql)


def test_the_same_statements_without_cascade_are_judged_as_before():
    assert_allowed("migrator", "drop table scratch.notes")
    assert_allowed("migrator", "truncate scratch.notes restrict")


def test_cascade_is_only_for_ddl_rules():
    with pytest.raises(ConfigError, match="cascade"):
        parse_config(
            {
                **BASE,
                "identities": [
                    {
                        "name": "x",
                        "issuer": "dev",
                        "role": "r",
                        "rules": [{"allow": ["select"], "tables": ["public.t"], "cascade": True}],
                    }
                ],
            }
        )


# ---------------------------------------------------------------------------- functions by resolved name


@pytest.mark.parametrize("call", ["current_setting('TimeZone')", "pg_catalog.current_setting('TimeZone')"])
def test_a_qualified_function_entry_allows_the_call_that_resolves_to_it(call):
    assert_allowed("setting-reader", f"select {call}")


def test_an_unqualified_function_entry_allows_the_qualified_call_too():
    assert_allowed("configurer", "select pg_catalog.set_config('TimeZone', 'UTC', true)")


@pytest.mark.parametrize(
    "call",
    ["host(inet '10.0.0.1/8')", "masklen('10.0.0.0/8'::cidr)", "network(inet '10.1.2.3/8')", "family(inet '::1')"],
)
def test_network_address_functions_are_safe(call):
    assert_allowed("tenant-reader", f"select {call}")


# ---------------------------------------------------------------------------- names that could move


def test_an_unqualified_name_after_a_schema_the_role_can_create_in_must_be_qualified():
    assert_denied("scratcher", "select id from customers", "search_path", "scratch", "write public.customers")
    assert_allowed("scratcher", "select id from public.customers")


def test_an_unqualified_name_in_the_schema_the_role_creates_in_is_not_moved():
    assert_allowed("scratcher", "select id from notes")


def test_a_role_that_cannot_create_may_use_unqualified_names():
    assert_allowed("path-reader", "select id from customers")


def test_a_view_body_is_held_to_the_same_rule():
    assert_denied("scratcher", "create view scratch.v as select id, tenant from customers", "search_path")


# ---------------------------------------------------------------------------- what explain tells


def test_explain_of_a_table_the_identity_may_not_read_does_not_tell_its_columns():
    existing = decide("blind-deleter", "delete from customers where ssn = '1'")
    missing = decide("blind-deleter", "delete from customers where no_such_column = '1'")
    assert (existing.reason, existing.columns) == (
        missing.reason.replace("no_such_column", "ssn") if missing.reason else None,
        missing.columns,
    )
    unreadable = decide("tenant-reader", "select ssn, nope from scratch.notes")
    assert unreadable.columns == ()
    assert "ssn" not in (unreadable.reason or "") and "nope" not in (unreadable.reason or "")


# ---------------------------------------------------------------------------- PostgreSQL's own errors


def test_a_syntax_error_carries_postgres_sqlstate_and_position():
    denial = analyze("select id from customers wher id = 1", 32768).denial
    assert denial is not None
    assert (denial.sqlstate, denial.position, denial.message) == ("42601", 31, 'syntax error at or near "id"')
    at_end = analyze("select id from", 32768).denial
    assert at_end is not None and (at_end.position, at_end.message) == (15, "syntax error at end of input")


def test_a_missing_relation_is_postgres_error_not_advice():
    decision = assert_denied("tenant-reader", "select id from customers join nowhere on true", "missing_relation")
    assert (decision.sqlstate, decision.position, decision.reason) == ("42P01", 31, 'relation "nowhere" does not exist')
    assert "rule" not in (decision.reason or "")


def test_a_decision_is_remembered_per_role_not_only_per_identity():
    # One identity, two roles (as with a role claim): only one of them can create in scratch.
    engine = PolicyEngine(PolicyConfig(), CATALOG)
    creator = IDENTITIES["scratcher"]
    reader = dataclasses.replace(creator, role="app_reader")
    assert engine.decide(reader, "select id from customers")[1].allowed
    assert not engine.decide(creator, "select id from customers")[1].allowed

"""The policy mirrored as grants (issue 9), against the real PostgreSQL: `gateway grants plan`
and `apply`, `gateway check --database`, and the warning and metric at start.

"Exactly what the rules allow" is what tests/shadow_roles.py builds from the rules alone: after
`apply`, each identity role holds, for every relation and column of the schema and every
privilege, what the shadow roles of its identities hold together. Every test works in a
schema and roles of its own (other tests share the database).
"""

from __future__ import annotations

import json
import logging
import re
import tomllib
import uuid
from collections.abc import Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from shadow_roles import shadow_role_sql

from conftest import LOGIN_ROLE, PgServer, Superuser, run
from gateway.cli import main
from gateway.config import load_config, parse_config
from gateway.db.catalog import read_catalog
from gateway.db.privileges import DatabasePrivileges, Relation
from gateway.grants import plan_grants, report_excess_privileges
from gateway.metrics import GatewayMetrics

TABLE_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER")
COLUMN_PRIVILEGES = ("SELECT", "INSERT", "UPDATE", "REFERENCES")

IDENTITIES = """
[[identities]]
name = "grants-clerk"
issuer = "dev"
match = {{ sub = "grants-clerk" }}
role = "{clerk}"

  [[identities.rules]]
  allow = ["select"]
  tables = ["{schema}.orders", "{schema}.customers", "{schema}.AuditLog"]
  columns = {{ "{schema}.customers" = ["id", "name"] }}

  [[identities.rules]]
  allow = ["insert", "update"]
  tables = ["{schema}.orders"]
  columns = {{ "{schema}.orders" = ["note"] }}

  [[identities.rules]]
  allow = ["delete", "merge"]
  tables = ["{schema}.orders"]

  [[identities.rules]]
  allow = ["update"]
  tables = ["{schema}.AuditLog"]
  columns = {{ "{schema}.AuditLog" = ["select"] }}

[[identities]]
name = "grants-tenant"
issuer = "dev"
match = {{ sub = "grants-tenant" }}
role_claim = "db_role"
roles = ["{auditor}", "{loader}"]
read_only = true

  [[identities.rules]]
  allow = ["select", "delete"]
  tables = ["{schema}.*"]

[[identities]]
name = "grants-loader"
issuer = "dev"
match = {{ sub = "grants-loader" }}
role = "{loader}"

  [[identities.rules]]
  allow = ["insert"]
  tables = ["{schema}.customers"]
  columns = {{ "{schema}.customers" = ["name", "email"] }}

  [[identities.rules]]
  allow = ["update"]
  tables = ["{schema}.tickets"]

  [[identities.rules]]
  allow = ["ddl"]
  tables = ["{schema}.orders"]

  [[identities.rules]]
  allow = ["delete"]
  tables = ["{schema}.*"]
"""

SCHEMA_SQL = """
CREATE SCHEMA {schema};
CREATE TABLE {schema}.orders (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, customer_id int, total numeric, note text);
CREATE TABLE {schema}.customers (id serial PRIMARY KEY, name text, email text);
CREATE TABLE {schema}."AuditLog" ("When" timestamptz DEFAULT now(), "select" text);
CREATE VIEW {schema}.order_totals AS SELECT customer_id, sum(total) AS total FROM {schema}.orders GROUP BY 1;
CREATE SEQUENCE {schema}.tickets;
"""


@dataclass(frozen=True)
class Setup:
    """One test's schema, identity roles and configuration."""

    schema: str
    clerk: str
    auditor: str
    loader: str
    helper: str  # a role an identity role can be made a member of
    grantor: str  # a role that grants with a grant option of its own
    config_text: str
    config_path: Path

    @property
    def identity_roles(self) -> tuple[str, str, str]:
        return self.clerk, self.auditor, self.loader

    def admin_url(self, database: PgServer, user: str | None = None) -> str:
        return database.url(user or database.superuser, host="localhost")  # the server certificate's name


@pytest.fixture
def setup(
    superuser: Superuser, database: PgServer, gateway_config, gateway_env, tmp_path, monkeypatch
) -> Iterator[Setup]:
    suffix = uuid.uuid4().hex[:8]
    names = {name: f"grants_{name}_{suffix}" for name in ("clerk", "auditor", "loader", "helper", "grantor")}
    schema = f"grants_{suffix}"
    # The suite's configuration without its identities: `apply` must not touch the demo roles.
    base = gateway_config()
    config_text = base[: base.index("[[identities]]")] + IDENTITIES.format(schema=schema, **names)
    path = tmp_path / "gateway.toml"
    path.write_text(config_text)
    for name, value in gateway_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PGPASSWORD", database.superuser_password)
    roles = list(names.values())
    superuser.execute(
        SCHEMA_SQL.format(schema=schema)
        + "".join(f"CREATE ROLE {role} NOLOGIN;" for role in roles)
        # The gateway's login must be a member of every identity role for a gateway to start.
        + f"GRANT {names['clerk']}, {names['auditor']}, {names['loader']} TO {LOGIN_ROLE};"
    )
    try:
        yield Setup(schema, *roles, config_text, path)
    finally:
        superuser.execute(
            f"DROP SCHEMA {schema} CASCADE;"
            + "".join(f"DROP OWNED BY {role}; DROP ROLE {role};" for role in roles)
        )


# ---------------------------------------------------------------------------- helpers


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def plan_text(capsys, setup: Setup, database: PgServer) -> str:
    code, out, err = cli(capsys, "grants", "plan", "--config", str(setup.config_path), "--database",
                         setup.admin_url(database))
    assert code == 0, err
    return out


def apply(capsys, setup: Setup, database: PgServer) -> str:
    code, out, err = cli(capsys, "grants", "apply", "--config", str(setup.config_path), "--database",
                         setup.admin_url(database))
    assert code == 0, err
    return out


def role_block(plan: str, role: str) -> list[str]:
    """The lines of one role's part of a plan, its heading first."""
    lines = plan.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"-- role {role} "))
    end = next((i for i in range(start + 1, len(lines)) if not lines[i]), len(lines))
    return lines[start:end]


def statements(block: list[str]) -> list[str]:
    return [line for line in block if line and not line.startswith("--")]


EFFECTIVE_SQL = """
SELECT c.relname, NULL::name, p.privilege
FROM pg_catalog.pg_class c CROSS JOIN unnest($3::text[]) p(privilege)
WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $2)
  AND c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S') AND pg_catalog.has_table_privilege($1, c.oid, p.privilege)
UNION ALL
SELECT c.relname, a.attname, p.privilege
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
CROSS JOIN unnest($4::text[]) p(privilege)
WHERE c.relnamespace = (SELECT oid FROM pg_catalog.pg_namespace WHERE nspname = $2)
  AND c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S') AND pg_catalog.has_column_privilege($1, c.oid, a.attnum, p.privilege)
"""


def effective(superuser: Superuser, role: str, schema: str) -> set[tuple]:
    """What PostgreSQL lets `role` do on every relation and column of `schema`."""
    rows = superuser.fetch(EFFECTIVE_SQL, role, schema, list(TABLE_PRIVILEGES), list(COLUMN_PRIVILEGES))
    return {tuple(row) for row in rows}


def shadow_privileges(superuser: Superuser, database: PgServer, setup: Setup, role: str) -> set[tuple]:
    """What the shadow roles of every identity that runs as `role` hold together."""

    async def relations() -> dict:
        connection = await database.connect()
        try:
            return (await read_catalog(connection, [])).relations
        finally:
            await connection.close()

    catalog = run(relations())
    config = load_config(setup.config_path)
    held: set[tuple] = set()
    for number, identity in enumerate(i for i in config.identities if role in i.database_roles()):
        shadow = f"{role}_shadow_{number}"
        superuser.execute(shadow_role_sql(shadow, identity, catalog))
        try:
            held |= effective(superuser, shadow, setup.schema)
        finally:
            superuser.execute(f"DROP OWNED BY {shadow}; DROP ROLE {shadow}")
    return held


def give_extra_privileges(superuser: Superuser, setup: Setup) -> None:
    """More than the rules allow, granted to the identity roles themselves, one of them by a
    grantor other than the owner."""
    s = setup.schema
    superuser.execute(
        f"GRANT SELECT (id) ON {s}.customers TO {setup.clerk};"  # taken too by the REVOKE on the table
        f"GRANT SELECT, DELETE ON {s}.customers TO {setup.clerk};"  # rules: SELECT (id, name), no DELETE
        f"GRANT TRUNCATE, UPDATE ON {s}.orders TO {setup.clerk};"  # rules: UPDATE (note), no TRUNCATE
        f'GRANT REFERENCES ON {s}."AuditLog" TO {setup.clerk};'
        f"GRANT USAGE ON SCHEMA {s} TO {setup.grantor};"
        f'GRANT TRIGGER ON {s}."AuditLog" TO {setup.grantor} WITH GRANT OPTION;'
        f'SET ROLE {setup.grantor}; GRANT TRIGGER ON {s}."AuditLog" TO {setup.clerk}; RESET ROLE;'
        f"GRANT SELECT ON {s}.orders TO {setup.auditor} WITH GRANT OPTION;"  # SELECT yes, passing it on no
        f"GRANT UPDATE, USAGE ON SEQUENCE {s}.tickets TO {setup.auditor};"  # read-only
        f"GRANT CREATE ON SCHEMA {s} TO {setup.loader};"  # its ddl rule names one table, not {s}.*
    )


# ---------------------------------------------------------------------------- plan


def test_plan_on_fresh_roles_prints_the_grants_their_rules_allow(capsys, setup, database):
    plan = plan_text(capsys, setup, database)
    s, clerk = setup.schema, setup.clerk
    assert statements(role_block(plan, clerk)) == [
        f'GRANT SELECT ON TABLE {s}."AuditLog" TO {clerk};',
        f'GRANT UPDATE ("select") ON TABLE {s}."AuditLog" TO {clerk};',
        f"GRANT SELECT (id, name) ON TABLE {s}.customers TO {clerk};",
        f"GRANT DELETE ON TABLE {s}.orders TO {clerk};",
        f"GRANT INSERT (note) ON TABLE {s}.orders TO {clerk};",
        f"GRANT SELECT ON TABLE {s}.orders TO {clerk};",
        f"GRANT UPDATE (note) ON TABLE {s}.orders TO {clerk};",
        f"GRANT USAGE ON SCHEMA {s} TO {clerk};",
    ]
    assert any("merge rules grant nothing" in line for line in role_block(plan, clerk))


def test_plan_grants_a_read_only_identity_select_on_every_relation_of_its_schema(capsys, setup, database):
    s, auditor = setup.schema, setup.auditor
    assert statements(role_block(plan_text(capsys, setup, database), auditor)) == [
        f'GRANT SELECT ON TABLE {s}."AuditLog" TO {auditor};',
        f"GRANT SELECT ON TABLE {s}.customers TO {auditor};",
        f"GRANT SELECT ON TABLE {s}.customers_id_seq TO {auditor};",
        f"GRANT SELECT ON TABLE {s}.order_totals TO {auditor};",
        f"GRANT SELECT ON TABLE {s}.orders TO {auditor};",
        f"GRANT SELECT ON TABLE {s}.orders_id_seq TO {auditor};",
        f"GRANT SELECT ON TABLE {s}.tickets TO {auditor};",
        f"GRANT USAGE ON SCHEMA {s} TO {auditor};",
    ]


def test_plan_gives_a_role_the_union_of_its_identities_with_sequences_for_inserts(capsys, setup, database):
    block = role_block(plan_text(capsys, setup, database), setup.loader)
    s, loader = setup.schema, setup.loader
    assert f"GRANT INSERT (email, name) ON TABLE {s}.customers TO {loader};" in block
    assert f"GRANT SELECT ON TABLE {s}.customers TO {loader};" in block  # from grants-tenant's role_claim
    # customers.id is a serial: an INSERT leaving it to its default calls nextval. orders.id is an
    # identity column, which needs nothing.
    assert f"GRANT USAGE ON SEQUENCE {s}.customers_id_seq TO {loader};" in block
    assert not any("orders_id_seq" in line and "USAGE" in line for line in block)
    assert f"GRANT UPDATE ON TABLE {s}.tickets TO {loader};" in block
    assert any("ddl rules" in line and "ownership" in line for line in block)


def test_plan_revokes_what_a_role_holds_beyond_its_rules(capsys, setup, database, superuser):
    give_extra_privileges(superuser, setup)
    superuser.execute(f"GRANT TRUNCATE ON {setup.schema}.orders TO {setup.loader}")  # its ddl rule allows TRUNCATE
    plan = plan_text(capsys, setup, database)
    s, clerk = setup.schema, setup.clerk
    clerk_statements = statements(role_block(plan, clerk))
    for expected in [
        f"REVOKE DELETE ON TABLE {s}.customers FROM {clerk};",
        f"REVOKE SELECT ON TABLE {s}.customers FROM {clerk};",
        f"REVOKE TRUNCATE ON TABLE {s}.orders FROM {clerk};",
        f"REVOKE UPDATE ON TABLE {s}.orders FROM {clerk};",
        f'REVOKE REFERENCES ON TABLE {s}."AuditLog" FROM {clerk};',
        f"GRANT SELECT (id, name) ON TABLE {s}.customers TO {clerk};",
        f"GRANT UPDATE (note) ON TABLE {s}.orders TO {clerk};",
    ]:
        assert expected in clerk_statements
    # A grant is revoked by its grantor.
    at = clerk_statements.index(f'REVOKE TRIGGER ON TABLE {s}."AuditLog" FROM {clerk};')
    assert clerk_statements[at - 1: at + 2] == [
        f"SET ROLE {setup.grantor};", clerk_statements[at], "RESET ROLE;"]
    assert f"REVOKE GRANT OPTION FOR SELECT ON TABLE {s}.orders FROM {setup.auditor};" in plan
    assert f"REVOKE CREATE ON SCHEMA {s} FROM {setup.loader};" in plan
    assert not any("TRUNCATE" in line for line in statements(role_block(plan, setup.loader)))


# ---------------------------------------------------------------------------- apply


def test_after_apply_each_role_holds_exactly_what_its_shadow_roles_hold(capsys, setup, database, superuser):
    give_extra_privileges(superuser, setup)
    apply(capsys, setup, database)
    for role in setup.identity_roles:
        held = effective(superuser, role, setup.schema)
        assert held == shadow_privileges(superuser, database, setup, role), role
    assert ("customers", None, "SELECT") not in effective(superuser, setup.clerk, setup.schema)


def test_after_apply_postgresql_refuses_what_the_rules_do_not_allow(capsys, setup, database, superuser):
    apply(capsys, setup, database)
    s = setup.schema
    superuser.execute(f"SET ROLE {setup.clerk}")
    try:
        assert superuser.fetch(f"SELECT id, name FROM {s}.customers") == []
        for sql in (f"SELECT email FROM {s}.customers", f"SELECT * FROM {s}.customers",
                    f"UPDATE {s}.orders SET total = 0", f"DELETE FROM {s}.customers"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError):
                superuser.fetch(sql)
    finally:
        superuser.execute("RESET ROLE")
    # An INSERT leaving the serial id to its default needs USAGE on its sequence.
    superuser.execute(f"SET ROLE {setup.loader}")
    try:
        superuser.execute(f"INSERT INTO {s}.customers (name, email) VALUES ('Ada', 'ada@example.com')")
    finally:
        superuser.execute("RESET ROLE")


def test_plan_after_apply_has_nothing_to_change(capsys, setup, database, superuser):
    give_extra_privileges(superuser, setup)
    out = apply(capsys, setup, database)
    assert re.search(r"-- applied \d+ statements in one transaction", out)
    plan = plan_text(capsys, setup, database)
    for role in setup.identity_roles:
        block = role_block(plan, role)
        assert block[0].endswith(": nothing to change")
        assert statements(block) == []
    code, out, _ = cli(capsys, "grants", "apply", "--config", str(setup.config_path), "--database",
                       setup.admin_url(database))
    assert (code, out.splitlines()[-1]) == (0, "-- nothing to change")


def test_apply_runs_in_one_transaction(capsys, setup, database, superuser, monkeypatch):
    """An admin who owns only orders: the auditor's excess there is revoked first, then a
    statement on a table it does not own fails, and nothing at all changes."""
    owner = f"{setup.schema}_owner"
    superuser.execute(
        f"CREATE ROLE {owner} LOGIN PASSWORD 'owner-password-1'; ALTER TABLE {setup.schema}.orders OWNER TO {owner};"
        f"GRANT UPDATE ON {setup.schema}.orders TO {setup.auditor};"
    )
    monkeypatch.setenv("GRANTS_OWNER_PASSWORD", "owner-password-1")
    try:
        first = statements(plan_text(capsys, setup, database).splitlines())[0]
        assert first == f"REVOKE UPDATE ON TABLE {setup.schema}.orders FROM {setup.auditor};"
        code, out, err = cli(capsys, "grants", "apply", "--config", str(setup.config_path), "--database",
                             setup.admin_url(database, owner), "--password-secret", "GRANTS_OWNER_PASSWORD")
        assert (code, out) == (1, "")
        assert "grants not applied, nothing changed" in err
        assert "owner-password-1" not in err
        assert ("orders", None, "UPDATE") in effective(superuser, setup.auditor, setup.schema)
    finally:
        superuser.execute(f"ALTER TABLE {setup.schema}.orders OWNER TO {database.superuser}; DROP OWNED BY {owner};"
                          f"DROP ROLE {owner}")


def test_apply_fails_where_postgresql_only_warns(capsys, setup, database, superuser, monkeypatch):
    """An admin with privileges but no grant options: each GRANT is a warning, not an error.
    Reading the privileges again inside the transaction finds the plan undone."""
    admin = f"{setup.schema}_admin"
    superuser.execute(
        f"CREATE ROLE {admin} LOGIN PASSWORD 'admin-password-1'; GRANT USAGE ON SCHEMA {setup.schema} TO {admin};"
        f"GRANT ALL ON ALL TABLES IN SCHEMA {setup.schema} TO {admin};"
        f"GRANT ALL ON ALL SEQUENCES IN SCHEMA {setup.schema} TO {admin};"
    )
    monkeypatch.setenv("GRANTS_ADMIN_PASSWORD", "admin-password-1")
    try:
        code, out, err = cli(capsys, "grants", "apply", "--config", str(setup.config_path), "--database",
                             setup.admin_url(database, admin), "--password-secret", "GRANTS_ADMIN_PASSWORD")
        assert (code, out) == (1, "")
        assert "after the plan ran, it would still take: GRANT" in err
    finally:
        superuser.execute(f"DROP OWNED BY {admin}; DROP ROLE {admin}")


@pytest.mark.parametrize("change", [":hunter2@", "@", "?sslmode=disable"])
def test_grants_take_the_password_from_a_secret_and_tls_from_the_config(capsys, setup, database, change):
    url = setup.admin_url(database)
    url = url + change if change.startswith("?") else url.replace("@", change, 1)
    code, out, err = cli(capsys, "grants", "plan", "--config", str(setup.config_path), "--database", url)
    if change == "@":  # unchanged: PGPASSWORD
        assert code == 0, err
        return
    assert (code, out) == (2, "")
    assert "hunter2" not in err
    assert "must not contain a password" in err or "TLS settings come from [database]" in err


# ---------------------------------------------------------------------------- what no REVOKE from the role removes


def through_others(superuser: Superuser, setup: Setup) -> None:
    s = setup.schema
    superuser.execute(
        f"GRANT DELETE ON {s}.orders TO {setup.helper}; GRANT {setup.helper} TO {setup.auditor};"
        f"GRANT TRUNCATE ON {s}.customers TO PUBLIC;"
    )


def test_privileges_through_another_role_or_public_are_reported_with_their_fix(capsys, setup, database, superuser):
    through_others(superuser, setup)
    try:
        block = role_block(plan_text(capsys, setup, database), setup.auditor)
    finally:
        superuser.execute(f"REVOKE TRUNCATE ON {setup.schema}.customers FROM PUBLIC")
    s = setup.schema
    assert not any(line.startswith("REVOKE") for line in statements(block))
    comments = "\n".join(block)
    helper, auditor = setup.helper, setup.auditor
    assert f"DELETE on {s}.orders through role {helper}; fix: REVOKE {helper} FROM {auditor}" in comments
    public_fix = f"REVOKE TRUNCATE ON TABLE {s}.customers FROM PUBLIC"
    assert f"TRUNCATE on {s}.customers through PUBLIC; fix: {public_fix}" in comments


def test_check_with_the_database_lists_the_excess_and_exits_1(capsys, setup, database, superuser):
    apply(capsys, setup, database)
    through_others(superuser, setup)
    try:
        code, out, _ = cli(capsys, "check", "--config", str(setup.config_path), "--database")
    finally:
        superuser.execute(f"REVOKE TRUNCATE ON {setup.schema}.customers FROM PUBLIC")
    assert code == 1
    roles = {report["role"]: report for report in json.loads(out)["roles"]}
    excess = {(e["privilege"], e["on"], e["through"]) for e in roles[setup.auditor]["excess"]}
    assert excess == {("DELETE", f"{setup.schema}.orders", setup.helper),
                      ("TRUNCATE", f"{setup.schema}.customers", "PUBLIC")}
    assert roles[setup.auditor]["identities"] == ["grants-tenant"]
    assert roles[setup.loader]["identities"] == ["grants-tenant", "grants-loader"]


def test_check_of_one_identity_reports_its_roles_with_the_decision(capsys, setup, database, superuser):
    apply(capsys, setup, database)
    argv = ["check", "--config", str(setup.config_path), "--identity", "grants-clerk", "--database",
            "--sql", f"select name from {setup.schema}.customers"]
    code, out, _ = cli(capsys, *argv)
    report = json.loads(out)
    assert (code, report["allowed"], report["roles"][0]["excess"]) == (0, True, [])
    superuser.execute(f"GRANT SELECT ON {setup.schema}.customers TO {setup.clerk}")
    code, out, _ = cli(capsys, *argv)
    report = json.loads(out)
    assert (code, report["allowed"]) == (1, True)
    ((excess,),) = [r["excess"] for r in report["roles"] if r["role"] == setup.clerk]
    assert excess["description"] == f"SELECT on {setup.schema}.customers (every column; the rules allow id, name)"
    assert excess["fix"] == f"REVOKE SELECT ON TABLE {setup.schema}.customers FROM {setup.clerk}"


def test_a_superuser_role_is_reported_as_that_alone(capsys, setup, superuser):
    """PostgreSQL counts a superuser as a member of every role: listing what those hold too
    would bury the one thing to fix."""
    superuser.execute(f"ALTER ROLE {setup.loader} SUPERUSER")
    code, out, _ = cli(capsys, "check", "--config", str(setup.config_path), "--database")
    assert code == 1
    (report,) = [r for r in json.loads(out)["roles"] if r["role"] == setup.loader]
    assert [(e["description"], e["fix"]) for e in report["excess"]] == [
        ("the SUPERUSER attribute", f"ALTER ROLE {setup.loader} NOSUPERUSER")]


def test_check_without_identity_or_database_is_a_usage_error(setup):
    with pytest.raises(SystemExit) as raised:
        main(["check", "--config", str(setup.config_path), "--sql", "select 1"])
    assert raised.value.code == 2


# ---------------------------------------------------------------------------- at start


def test_a_started_gateway_warns_and_counts_the_excess_of_each_role(setup, superuser, launch_gateway):
    superuser.execute(f"GRANT DELETE, TRIGGER ON {setup.schema}.customers TO {setup.clerk}")
    gateway = launch_gateway(config_text=setup.config_text)
    warnings = [json.loads(line) for line in gateway.output().splitlines()
                if line.startswith("{") and f"role {setup.clerk} holds more" in line]
    assert len(warnings) == 1 and warnings[0]["level"] == "warning"
    assert f"DELETE on {setup.schema}.customers; TRIGGER on {setup.schema}.customers" in warnings[0]["message"]
    samples = {
        sample.labels.get("role"): sample.value
        for family in text_string_to_metric_families(httpx.get(f"{gateway.url}/metrics").text)
        for sample in family.samples
        if sample.name == "gateway_role_excess_privileges"
    }
    assert samples[setup.clerk] == 2
    assert samples[setup.loader] == 0


class _Unreachable:
    @asynccontextmanager
    async def connection(self):
        raise OSError("connection refused")
        yield


def test_a_failed_read_at_start_is_logged_not_raised(setup, caplog):
    metrics = GatewayMetrics()
    with caplog.at_level(logging.WARNING, logger="gateway"):
        run(report_excess_privileges(load_config(setup.config_path), _Unreachable(), metrics))
    assert "privileges not checked (OSError: connection refused)" in caplog.text


# ---------------------------------------------------------------------------- without a database

OFFLINE_CONFIG = """
name = "offline"
[database]
url = "postgresql://gateway@db.internal/app"
[[issuers]]
name = "dev"
issuer = "dev"
audience = "gateway"
hs256_secret = "DEV_SECRET"
[[identities]]
name = "reporting"
issuer = "dev"
role = "reporting"
  [[identities.rules]]
  allow = ["select"]
  tables = ["app.people", "app.gone"]
  columns = { "app.people" = ["id", "nickname"] }
"""


def offline_privileges(**changes) -> DatabasePrivileges:
    people = Relation("app", "people", "r", "owner", frozenset({"id", "name", "ctid"}))
    values = dict(database="app", relations={people.key: people}, schemas={"app": "owner"}, held=(),
                  missing_roles=frozenset())
    return DatabasePrivileges(**{**values, **changes})


def test_names_the_rules_use_that_the_database_lacks_are_noted_not_granted():
    (plan,) = plan_grants(parse_config(tomllib.loads(OFFLINE_CONFIG)), offline_privileges()).roles
    assert plan.statements == ("GRANT SELECT (id) ON TABLE app.people TO reporting",
                               "GRANT USAGE ON SCHEMA app TO reporting")
    assert 'identity "reporting": rules name column app.people.nickname, which the table does not have' in plan.notes
    assert 'identity "reporting": rules name app.gone, which the database does not have' in plan.notes


def test_a_role_the_database_lacks_gets_no_statements():
    privileges = offline_privileges(missing_roles=frozenset({"reporting"}))
    (plan,) = plan_grants(parse_config(tomllib.loads(OFFLINE_CONFIG)), privileges).roles
    assert (plan.statements, plan.missing) == ((), True)
    assert plan.notes[0].startswith("role reporting does not exist")

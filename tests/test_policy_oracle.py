"""PostgreSQL judges the policy: every statement the gateway allows must pass PostgreSQL's
own privilege checks when run as a shadow role holding exactly the privileges the
identity's rules grant (tests/shadow_roles.py).

Statements come from a small grammar over a schema whose roles could read everything
(tests/sql_grammar.py): joins, subqueries everywhere, CTEs, derived tables, casts to type
names that are column names, set operations, ORDER BY and GROUP BY by name and position,
window clauses, writes with WHERE, RETURNING, ON CONFLICT and MERGE. Each is judged for
every identity with the catalog snapshot read from the database; each allowed one runs as
that identity's shadow role in a transaction that is rolled back. "permission denied"
there is a statement that got data past the policy: it fails the test, printed.

`ORACLE_STATEMENTS` (default 5000) and `ORACLE_SEED` choose how many and which.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson
import pytest
from pglast import parser as pg_parser
from shadow_roles import shadow_role_sql
from sql_grammar import SCHEMA, SETUP_SQL, TABLES, Grammar, Scope, Source

from conftest import PgServer, run
from gateway.catalog import CatalogSnapshot
from gateway.config import IdentityConfig, PolicyConfig, parse_config
from gateway.db.catalog import read_catalog
from gateway.identity import Identity
from gateway.policy import PolicyEngine
from gateway.policy.naming import figure_name

STATEMENTS = int(os.environ.get("ORACLE_STATEMENTS", "5000"))
SEED = int(os.environ.get("ORACLE_SEED", "9"))
INSUFFICIENT_PRIVILEGE = "42501"

CONFIG: dict[str, Any] = {
    "name": "oracle",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
    "identities": [
        {
            "name": "narrow",
            "issuer": "dev",
            "role": "oracle_narrow",
            "schemas": [SCHEMA],
            "rules": [
                {
                    "allow": ["select"],
                    "tables": [f"{SCHEMA}.customers", f"{SCHEMA}.orders"],
                    "columns": {f"{SCHEMA}.customers": ["id", "tenant", "name"]},
                }
            ],
        },
        {
            "name": "writer",
            "issuer": "dev",
            "role": "oracle_writer",
            "schemas": [SCHEMA],
            "rules": [
                {
                    "allow": ["select"],
                    "tables": [f"{SCHEMA}.customers", f"{SCHEMA}.orders"],
                    "columns": {f"{SCHEMA}.customers": ["id", "name"], f"{SCHEMA}.orders": ["id", "status", "total"]},
                },
                {
                    "allow": ["insert"],
                    "tables": [f"{SCHEMA}.orders"],
                    "columns": {f"{SCHEMA}.orders": ["id", "status", "note"]},
                },
                {
                    "allow": ["update"],
                    "tables": [f"{SCHEMA}.orders"],
                    "columns": {f"{SCHEMA}.orders": ["status", "note"]},
                },
                {"allow": ["merge"], "tables": [f"{SCHEMA}.orders"]},
                {"allow": ["delete"], "tables": [f"{SCHEMA}.customers"]},
            ],
        },
        {
            "name": "wide",
            "issuer": "dev",
            "role": "oracle_wide",
            "schemas": [SCHEMA],
            "rules": [
                {
                    "allow": ["select"],
                    "tables": [f"{SCHEMA}.*"],
                    "columns": {f"{SCHEMA}.payments": ["id", "order_id", "amount"]},
                },
                {
                    "allow": ["update"],
                    "tables": [f"{SCHEMA}.customers"],
                    "columns": {f"{SCHEMA}.customers": ["name", "country"]},
                },
                {
                    "allow": ["insert", "merge"],
                    "tables": [f"{SCHEMA}.payments"],
                    "columns": {f"{SCHEMA}.payments": ["id", "order_id", "amount"]},
                },
                {"allow": ["delete"], "tables": [f"{SCHEMA}.orders"]},
            ],
        },
    ],
}
IDENTITY_CONFIGS: list[IdentityConfig] = list(parse_config(CONFIG).identities)


def shadow_role(identity: IdentityConfig) -> str:
    return f"{identity.role}_shadow"


@dataclass
class Oracle:
    snapshot: CatalogSnapshot
    identities: list[Identity]


@pytest.fixture(scope="module")
def oracle(database: PgServer) -> Iterator[Oracle]:
    """The oracle schema with its rows, and each identity's shadow role (NOLOGIN, nothing but
    its rules' grants)."""

    async def setup() -> CatalogSnapshot:
        connection = await database.connect()
        try:
            await _drop_roles(connection)
            await connection.execute(SETUP_SQL)
            snapshot = await read_catalog(connection, [])
            for identity in IDENTITY_CONFIGS:
                await connection.execute(shadow_role_sql(shadow_role(identity), identity, snapshot.relations))
            return snapshot
        finally:
            await connection.close()

    snapshot = run(setup())
    yield Oracle(snapshot, [Identity.from_config(config) for config in IDENTITY_CONFIGS])
    run(_teardown(database))


async def _drop_roles(connection: asyncpg.Connection) -> None:
    for identity in IDENTITY_CONFIGS:
        role = shadow_role(identity)
        exists = await connection.fetchval("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1", role)
        if exists:
            await connection.execute(f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


async def _teardown(database: PgServer) -> None:
    connection = await database.connect()
    try:
        await connection.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        await _drop_roles(connection)
    finally:
        await connection.close()


# ---------------------------------------------------------------------------- the oracle


@dataclass
class Tally:
    statements: int = 0
    decisions: Counter = field(default_factory=Counter)  # allowed / denied:<category>
    outcomes: Counter = field(default_factory=Counter)  # what PostgreSQL said to allowed statements
    bypasses: list[str] = field(default_factory=list)
    over_denials: int = 0  # denied by the gateway, yet PostgreSQL ran it as the shadow role
    denials_checked: int = 0

    def summary(self) -> str:
        return orjson.dumps(
            {
                "statements": self.statements,
                "decisions": dict(self.decisions.most_common()),
                "allowed_outcomes": dict(self.outcomes.most_common()),
                "bypasses": len(self.bypasses),
                "column_and_table_denials_checked": self.denials_checked,
                "of_which_postgres_ran": self.over_denials,
            }
        ).decode()


async def _run_as(connection: asyncpg.Connection, role: str, sql: str) -> str | None:
    """Run `sql` as `role` with the gateway's search path, rolled back; the SQLSTATE of the
    error it ends in, or None."""
    try:
        await connection.execute(
            f'BEGIN; SET LOCAL ROLE "{role}"; SET LOCAL search_path = pg_catalog, {SCHEMA}, pg_temp; '
            f"SET LOCAL statement_timeout = '2s'; {sql}"
        )
        return None
    except asyncpg.PostgresError as error:
        return error.sqlstate or "?"
    finally:
        await connection.execute("ROLLBACK")


async def _judge_everything(database: PgServer, oracle: Oracle, count: int, seed: int) -> Tally:
    engine = PolicyEngine(PolicyConfig(), oracle.snapshot)
    grammar = Grammar(seed)
    tally = Tally()
    connection = await database.connect()
    try:
        for _ in range(count):
            sql = grammar.query(2)
            tally.statements += 1
            for identity in oracle.identities:
                _, decision = engine.decide(identity, sql)
                role = f"{identity.role}_shadow"
                if not decision.allowed:
                    tally.decisions[f"denied:{decision.category}"] += 1
                    if decision.category in ("columns", "table"):
                        tally.denials_checked += 1
                        tally.over_denials += await _run_as(connection, role, sql) is None
                    continue
                tally.decisions["allowed"] += 1
                sqlstate = await _run_as(connection, role, sql)
                tally.outcomes["ran" if sqlstate is None else f"error {sqlstate}"] += 1
                if sqlstate == INSUFFICIENT_PRIVILEGE:
                    tally.bypasses.append(f"[{identity.name}] {sql}")
    finally:
        await connection.close()
    return tally


def test_every_statement_the_gateway_allows_passes_postgres_privilege_checks(oracle: Oracle, database: PgServer):
    started = time.monotonic()
    tally = asyncio.run(_judge_everything(database, oracle, STATEMENTS, SEED))
    elapsed = time.monotonic() - started
    print(f"\noracle: {tally.summary()} in {elapsed:.1f}s")
    assert not tally.bypasses, "allowed by the gateway, refused by PostgreSQL's privileges:\n" + "\n".join(
        tally.bypasses[:20]
    )
    assert tally.statements >= STATEMENTS
    # The grammar must reach PostgreSQL's privilege checks, not only its parser.
    allowed = tally.decisions["allowed"]
    assert allowed >= STATEMENTS // 5, tally.summary()
    assert tally.outcomes["ran"] >= allowed // 2, tally.summary()


# ---------------------------------------------------------------------------- output names


def _first_output(subselect: dict) -> tuple[str | None, ...] | None:
    """A scalar subquery's first output name, for `figure_name` (one level deep is enough
    for the expressions below)."""
    select = subselect["SelectStmt"]
    while select.get("op", "SETOP_NONE") != "SETOP_NONE":
        select = select["larg"]
    target = select["targetList"][0]["ResTarget"]
    return (target.get("name") or figure_name(target.get("val"), _first_output),)


def test_output_names_are_postgres_own(oracle: Oracle, database: PgServer):
    """For the select-list expressions of the grammar, the name the gateway figures equals the
    name PostgreSQL gives the column (read from the prepared statement's description)."""
    grammar = Grammar(SEED + 1)

    async def compare() -> list[str]:
        connection = await database.connect()
        differences = []
        try:
            await connection.execute(f"SET search_path = pg_catalog, {SCHEMA}, pg_temp")
            for _ in range(400):
                customers = Scope([Source("c0", TABLES["customers"])])
                expression = grammar.expression(customers, str(grammar.pick(["text", "int", "date"])), 2)
                sql = f"select {expression} from customers c0"
                try:
                    statement = await connection.prepare(sql)
                except asyncpg.PostgresError:
                    continue
                postgres_name, ours = statement.get_attributes()[0].name, _figured(sql)
                if ours is not None and ours != postgres_name:
                    differences.append(f"{sql}: PostgreSQL {postgres_name!r}, gateway {ours!r}")
        finally:
            await connection.close()
        return differences

    assert asyncio.run(compare()) == []


def _figured(sql: str) -> str | None:
    tree = orjson.loads(pg_parser.parse_sql_json(sql))
    target = tree["stmts"][0]["stmt"]["SelectStmt"]["targetList"][0]["ResTarget"]
    return target.get("name") or figure_name(target.get("val"), _first_output)

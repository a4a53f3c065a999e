"""drizzle-kit migrations through the gateway (README, "Migrations through the gateway"):
`drizzle-kit generate` makes the migration of tests/node/schema.mjs at test time (offline),
drizzle-orm's own neon-http migrator applies it through `/sql` as an identity with `ddl`
rights, on a fresh database of the suite's PostgreSQL; then the next migration
(schema-next.mjs: a column added, an index and a foreign key dropped and made again) the same
way; and the drizzle script of the compatibility tests runs on the migrated tables.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from test_neon_compat import NEON_APP

from conftest import LOGIN_ROLE, Api, GatewayProcess, PgServer, run

DATABASE = "gw_migrations"
MIGRATOR = """
[[identities]]
name = "migrator"
issuer = "dev"
match = { sub = "migrator" }
role = "demo_writer"

  [[identities.rules]]
  allow = ["ddl", "select", "insert", "update", "delete"]
  tables = ["public.*", "drizzle.*"]
"""


async def _create_database(server: PgServer) -> None:
    """A database of its own, where demo_writer may create schemas, and tables in public."""
    admin = await server.connect("postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
        await admin.execute(f"CREATE DATABASE {DATABASE}")
        await admin.execute(f"GRANT CREATE ON DATABASE {DATABASE} TO demo_writer")
    finally:
        await admin.close()
    await _fetch(server, "GRANT CREATE ON SCHEMA public TO demo_writer")


async def _fetch(server: PgServer, sql: str) -> list[asyncpg.Record]:
    connection = await server.connect(DATABASE)
    try:
        return await connection.fetch(sql)
    finally:
        await connection.close()


async def _drop_database(server: PgServer) -> None:
    admin = await server.connect("postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {DATABASE} WITH (FORCE)")
    finally:
        await admin.close()


def in_migrated_database(server: PgServer, sql: str) -> list[dict[str, Any]]:
    return [dict(row) for row in run(_fetch(server, sql))]


@pytest.fixture(scope="module")
def generate(node_packages: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """`generate("schema.mjs")` -> the SQL file `drizzle-kit generate` adds to the migrations
    folder for that schema (no database involved: it diffs against the folder's snapshots)."""
    folder = tmp_path_factory.mktemp("drizzle")

    def generate_migration(schema: str) -> Path:
        before = set(folder.glob("*.sql"))
        # drizzle-kit reads its snapshots from "./" + the folder given: a relative one.
        out = os.path.relpath(folder, node_packages)
        result = subprocess.run(
            [str(node_packages / "node_modules" / ".bin" / "drizzle-kit"), "generate", "--dialect", "postgresql",
             "--schema", f"./{schema}", "--out", out],
            cwd=node_packages, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        (added,) = set(folder.glob("*.sql")) - before
        return added

    return generate_migration


@pytest.fixture(scope="module")
def migrations_gateway(database: PgServer, launch_gateway: Callable[..., GatewayProcess],
                       gateway_config: Callable[..., str]) -> Iterator[GatewayProcess]:
    """A gateway on the fresh database, with the migrator and the drizzle script's identity."""
    run(_create_database(database))
    url = database.url(LOGIN_ROLE, DATABASE, host="localhost")
    gateway = launch_gateway(config_text=gateway_config(MIGRATOR + NEON_APP, url=url))
    yield gateway
    gateway.stop()
    run(_drop_database(database))


def database_state(server: PgServer) -> dict[str, Any]:
    """The relations of public and drizzle (kind, schema, owner), and the migrated table's shape."""
    relations = in_migrated_database(
        server,
        "select c.relname, c.relkind::text, n.nspname, pg_get_userbyid(c.relowner) as owner from pg_class c "
        "join pg_namespace n on n.oid = c.relnamespace where n.nspname in ('public', 'drizzle')",
    )
    columns = in_migrated_database(
        server, "select column_name from information_schema.columns where table_name = 'neon_reviews'"
    )
    (foreign_key,) = in_migrated_database(
        server, "select confdeltype::text from pg_constraint where conname = 'neon_reviews_book_id_neon_books_id_fk'"
    )
    return {
        "relations": {row["relname"]: (row["relkind"], row["nspname"], row["owner"]) for row in relations},
        "review_columns": sorted(row["column_name"] for row in columns),
        "on_delete": foreign_key["confdeltype"],
    }


@pytest.fixture(scope="module")
def migrated(node_script: Callable[..., Any], migrations_gateway: GatewayProcess, mint: Callable[..., str],
             generate: Callable[[str], Path], database: PgServer) -> dict[str, Any]:
    """drizzle's migrator through /sql: the migration of schema.mjs, then the one drizzle-kit
    makes for schema-next.mjs, with the database's state after each."""
    result: dict[str, Any] = {}
    for step, schema in (("first", "schema.mjs"), ("second", "schema-next.mjs")):
        migration = generate(schema)
        result[f"{step}_sql"] = migration.read_text()
        applied = node_script("migrate.mjs", GATEWAY_SQL_URL=migrations_gateway.url + "/sql",
                              GATEWAY_TOKEN=mint("migrator"), MIGRATIONS_DIR=str(migration.parent))
        result[step] = {**applied, **database_state(database)}
    return result


@pytest.fixture
def migrator(migrations_gateway: GatewayProcess, call_as: Callable[..., Api]) -> Api:
    return call_as(migrations_gateway, "migrator")


def test_the_generated_migrations_hold_what_the_policy_must_allow(migrated):
    for emitted in ('CREATE TYPE "public"."neon_mood" AS ENUM', "GENERATED ALWAYS AS IDENTITY (sequence name",
                    "DEFAULT gen_random_uuid()", "ADD CONSTRAINT", "CREATE UNIQUE INDEX", "--> statement-breakpoint"):
        assert emitted in migrated["first_sql"]
    for emitted in ('DROP CONSTRAINT "neon_reviews_book_id_neon_books_id_fk"', 'DROP INDEX "neon_reviews_token_idx"',
                    'ADD COLUMN "helpful" boolean DEFAULT false NOT NULL', "ON DELETE restrict"):
        assert emitted in migrated["second_sql"]


def test_drizzles_migrator_applies_the_first_migration_through_sql(migrated):
    first = migrated["first"]
    assert len(first["journal"]) == 1
    made = first["relations"]
    # Unqualified names went to the identity's first schema, as with any PostgreSQL client.
    for table in ("neon_authors", "neon_books", "neon_reviews"):
        assert made[table] == ("r", "public", "demo_writer")
    assert made["neon_reviews_id_seq"] == ("S", "public", "demo_writer")
    assert made["neon_reviews_token_idx"][:2] == ("i", "public")
    assert made["__drizzle_migrations"] == ("r", "drizzle", "demo_writer")
    assert first["review_columns"] == ["book_id", "created", "id", "mood", "token"]
    assert first["on_delete"] == "c"


def test_the_second_migration_applies_only_what_changed(migrated):
    first, second = migrated["first"], migrated["second"]
    assert second["journal"][0] == first["journal"][0]
    assert len(second["journal"]) == 2
    assert "neon_reviews_token_idx" not in second["relations"]
    assert second["relations"]["neon_reviews_created_idx"][:2] == ("i", "public")
    assert second["review_columns"] == ["book_id", "created", "helpful", "id", "mood", "token"]
    assert second["on_delete"] == "r"


def test_the_enum_is_created_with_its_labels(migrated, database):
    (enum,) = in_migrated_database(database, "select enum_range(null::public.neon_mood)::text as labels")
    assert enum["labels"] == "{sad,ok,happy}"


def test_the_drizzle_script_runs_on_the_migrated_tables(migrated, node_script, migrations_gateway, mint):
    drizzle = node_script("drizzle.mjs", GATEWAY_SQL_URL=migrations_gateway.url + "/sql",
                          GATEWAY_TOKEN=mint("neon-app"))
    run_id = drizzle["run"]
    assert [row["title"] for row in drizzle["beforeBatch"]] == [f"Compiler {run_id}", f"Notes {run_id}"]
    assert drizzle["beforeBatch"][1]["tags"] == ["math", "engines"]
    assert drizzle["bookCount"] == [{"n": 2}]
    assert [row["title"] for row in drizzle["afterBatch"]] == [f"Compiler {run_id}", f"Notes, 2nd ed. {run_id}"]
    assert (drizzle["failedBatch"]["code"], drizzle["failedBatch"]["constraint"]) == ("23505", "neon_authors_name_key")
    assert drizzle["alanRows"] == 0


def test_identity_columns_and_defaults_fill_a_migrated_row(migrated, migrator):
    response = migrator.query(
        "with a as (insert into neon_authors (name) values ($1) returning id), "
        "b as (insert into neon_books (author_id, title) select id, 'Reviewed' from a returning id) "
        "insert into neon_reviews (book_id) select id from b "
        "returning id > 0 as numbered, mood, token is not null as has_token, created <= now() as dated",
        "Reviewer",
    )
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"numbered": True, "mood": "ok", "has_token": True, "dated": True}]


def test_create_schema_outside_the_rules_is_denied_in_words(migrated, migrator):
    response = migrator.query("CREATE SCHEMA IF NOT EXISTS reporting")
    assert response.status_code == 403
    assert response.json()["error"]["message"] == (
        'DDL on reporting.* is not allowed for identity "migrator"; a rule with allow = ["ddl"] and '
        'tables = ["reporting.*"] would allow it'
    )

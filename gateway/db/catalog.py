"""Reads the catalog snapshot from PostgreSQL: one query over pg_catalog, as the gateway's
login role (every role may read pg_catalog), outside any caller's request.

Owns the query and its transaction; what the snapshot holds and how it is used is
`gateway.catalog`.
"""

from __future__ import annotations

from datetime import UTC, datetime

import asyncpg
import orjson

from gateway.catalog import CatalogSnapshot, snapshot_from_rows

# Relations a statement can name (tables, views, materialized views, foreign tables,
# partitioned tables, sequences) with their columns, system columns included; every function
# by name, with its argument types outside pg_catalog (a built-in is judged by its name); and
# the schemas each identity role ($1) can create objects in. Other sessions' temporary schemas
# and TOAST schemas are nobody's search path.
CATALOG_SQL = """
WITH schemas AS (
    SELECT oid, nspname FROM pg_catalog.pg_namespace
    WHERE nspname !~ '^pg_(toast|temp_)'
),
relations AS (
    SELECT s.nspname, c.relname,
           (SELECT pg_catalog.json_agg(a.attname ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a
             WHERE a.attrelid = c.oid AND a.attnum <> 0 AND NOT a.attisdropped) AS columns
    FROM pg_catalog.pg_class c JOIN schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S')
),
functions AS (
    SELECT s.nspname, p.proname,
           CASE WHEN s.nspname = 'pg_catalog' THEN '[]'::json
                -- NULL for a function dropped while this runs: its name still counts
                ELSE COALESCE(pg_catalog.json_agg(pg_catalog.pg_get_function_identity_arguments(p.oid) ORDER BY p.oid)
                              FILTER (WHERE pg_catalog.pg_get_function_identity_arguments(p.oid) IS NOT NULL), '[]')
           END AS signatures
    FROM pg_catalog.pg_proc p JOIN schemas s ON s.oid = p.pronamespace
    GROUP BY s.nspname, p.proname
),
creatable AS (
    SELECT r.rolname, pg_catalog.json_agg(s.nspname ORDER BY s.nspname) AS schemas
    FROM pg_catalog.pg_roles r CROSS JOIN schemas s
    WHERE r.rolname = ANY ($1::text[]) AND pg_catalog.has_schema_privilege(r.oid, s.oid, 'CREATE')
    GROUP BY r.rolname
)
SELECT pg_catalog.json_build_object(
    'database', pg_catalog.current_database(),
    'relations', (SELECT pg_catalog.json_object_agg(nspname, relations) FROM (
        SELECT nspname, pg_catalog.json_object_agg(relname, COALESCE(columns, '[]'::json)) AS relations
        FROM relations GROUP BY nspname) r),
    'functions', (SELECT pg_catalog.json_object_agg(nspname, functions) FROM (
        SELECT nspname, pg_catalog.json_object_agg(proname, signatures) AS functions
        FROM functions GROUP BY nspname) f),
    'creatable', (SELECT pg_catalog.json_object_agg(rolname, schemas) FROM creatable)
)::text
"""


async def read_catalog(connection: asyncpg.Connection, roles: list[str]) -> CatalogSnapshot:
    """A snapshot of the database `connection` is connected to, with where each of `roles`
    can create objects. Operators and functions in the query resolve in pg_catalog only: the
    session's own search_path is not trusted here."""
    async with connection.transaction(readonly=True):
        await connection.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        text = await connection.fetchval(CATALOG_SQL, roles)
    data = orjson.loads(text)
    return snapshot_from_rows(
        data.get("relations") or {},
        data.get("functions") or {},
        data.get("creatable") or {},
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
        database=data.get("database") or "",
    )

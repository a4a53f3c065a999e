"""Reads the catalog snapshot from PostgreSQL and keeps it current: one query over
pg_catalog, as the gateway's login role (every role may read pg_catalog), outside any
caller's request, again whenever the catalog may have changed.

Owns the query, its transaction, and when it runs (`CatalogKeeper`); what the snapshot
holds and how it is used is `gateway.catalog`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime

import asyncpg
import orjson

from gateway.catalog import CatalogSnapshot, snapshot_from_rows
from gateway.db.pool import Database

logger = logging.getLogger("gateway")

# Relations a statement can name (tables, views, materialized views, foreign tables,
# partitioned tables, sequences) with their columns, system columns included; every function
# by name, with its argument types outside pg_catalog (a built-in is judged by its name); the
# schemas each identity role ($1) can create objects in; and, for each relation outside the
# system schemas, the functions PostgreSQL calls on its own when it is read or written, and
# its shape (column types, primary and foreign keys). Other sessions' temporary schemas and
# TOAST schemas are nobody's search path.
#
# Those implicit calls are found in the stored expression trees (pg_node_tree text) of what
# runs with a relation: function, operator, aggregate and window-function ids (`:funcid 2078`)
# and the relations read there (`:relid 16395`), followed through views, policies, rules,
# cascading foreign keys and partitions. pg_depend cannot say: dependencies on built-in
# functions such as set_config are not recorded. Text that merely looks like an id (a column
# alias) can only add a function, never hide one.
CATALOG_SQL = """
WITH RECURSIVE schemas AS (
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
),
user_relations AS (
    SELECT c.oid, s.nspname, c.relname, c.relkind FROM pg_catalog.pg_class c JOIN schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p') AND s.nspname NOT IN ('pg_catalog', 'information_schema')
),
-- What describes a user relation to a caller: its columns with their types, its keys.
key_columns (conoid, relid, side, names) AS (
    SELECT c.oid, k.relid, k.side,
           (SELECT pg_catalog.json_agg(a.attname ORDER BY n.ord)
              FROM pg_catalog.unnest(k.attnums) WITH ORDINALITY n (attnum, ord)
              JOIN pg_catalog.pg_attribute a ON a.attrelid = k.relid AND a.attnum = n.attnum)
      FROM pg_catalog.pg_constraint c JOIN user_relations r ON r.oid = c.conrelid,
           LATERAL (VALUES (c.conrelid, 'own', c.conkey), (c.confrelid, 'referenced', c.confkey))
               k (relid, side, attnums)
     WHERE c.contype IN ('p', 'f') AND k.attnums IS NOT NULL
),
shapes AS (
    SELECT r.nspname, r.relname, pg_catalog.json_build_object(
        'kind', CASE r.relkind WHEN 'r' THEN 'table' WHEN 'p' THEN 'partitioned table' WHEN 'v' THEN 'view'
                               WHEN 'm' THEN 'materialized view' ELSE 'foreign table' END,
        'columns', COALESCE((
            SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
                       a.attname, pg_catalog.format_type(a.atttypid, a.atttypmod), NOT a.attnotnull) ORDER BY a.attnum)
              FROM pg_catalog.pg_attribute a WHERE a.attrelid = r.oid AND a.attnum > 0 AND NOT a.attisdropped), '[]'),
        'primaryKey', COALESCE((
            SELECT k.names FROM pg_catalog.pg_constraint c JOIN key_columns k ON k.conoid = c.oid AND k.side = 'own'
             WHERE c.conrelid = r.oid AND c.contype = 'p'), '[]'),
        'foreignKeys', COALESCE((
            SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
                       own.names, pg_catalog.json_build_array(fs.nspname, fc.relname), referenced.names)
                       ORDER BY c.conname)
              FROM pg_catalog.pg_constraint c
              JOIN key_columns own ON own.conoid = c.oid AND own.side = 'own'
              JOIN key_columns referenced ON referenced.conoid = c.oid AND referenced.side = 'referenced'
              JOIN pg_catalog.pg_class fc ON fc.oid = c.confrelid
              JOIN pg_catalog.pg_namespace fs ON fs.oid = fc.relnamespace
             WHERE c.conrelid = r.oid AND c.contype = 'f'), '[]')
    ) AS shape
    FROM user_relations r
),
-- The types of every column, through domains and array elements (whose checks run on writes).
column_types (relid, typid) AS (
    SELECT a.attrelid, a.atttypid FROM pg_catalog.pg_attribute a JOIN user_relations r ON r.oid = a.attrelid
    WHERE a.attnum > 0 AND NOT a.attisdropped
    UNION
    SELECT ct.relid, u.typid FROM column_types ct JOIN pg_catalog.pg_type t ON t.oid = ct.typid,
           LATERAL (VALUES (t.typbasetype), (t.typelem)) u (typid)
    WHERE u.typid <> 0
),
-- Expressions PostgreSQL evaluates when a relation is read (its view query, its row-level-
-- security policies) or written (also rules, triggers, defaults and generated columns, checks,
-- index expressions and predicates).
sources (relid, access, tree) AS (
    SELECT ev_class, CASE WHEN ev_type = '1' THEN 'read' ELSE 'write' END,
           ev_action::text || COALESCE(ev_qual::text, '')
      FROM pg_catalog.pg_rewrite
    UNION ALL
    SELECT polrelid, 'read', COALESCE(polqual::text, '') || COALESCE(polwithcheck::text, '')
      FROM pg_catalog.pg_policy
    UNION ALL
    SELECT tgrelid, 'write', ':funcid ' || tgfoid || ' ' || COALESCE(tgqual::text, '')
      FROM pg_catalog.pg_trigger WHERE NOT tgisinternal
    UNION ALL
    SELECT adrelid, 'write', adbin::text FROM pg_catalog.pg_attrdef
    UNION ALL
    SELECT conrelid, 'write', conbin::text FROM pg_catalog.pg_constraint WHERE contype = 'c' AND conrelid <> 0
    UNION ALL
    SELECT ct.relid, 'write', c.conbin::text
      FROM column_types ct JOIN pg_catalog.pg_constraint c ON c.contypid = ct.typid WHERE c.contype = 'c'
    UNION ALL
    SELECT indrelid, 'write', COALESCE(indexprs::text, '') || COALESCE(indpred::text, '')
      FROM pg_catalog.pg_index WHERE indexprs IS NOT NULL OR indpred IS NOT NULL
),
user_sources AS (
    SELECT s.* FROM sources s JOIN user_relations r ON r.oid = s.relid
),
calls (relid, access, fn) AS (
    SELECT s.relid, s.access, m[1]::oid
      FROM user_sources s,
           pg_catalog.regexp_matches(s.tree, ':(?:funcid|opfuncid|aggfnoid|winfnoid) ([0-9]+)', 'g') m
),
-- Reading a relation reads those its view query and policies read; writing it may also write
-- those its rules name, those whose foreign keys cascade from it, and its partitions.
edges (relid, access, other) AS (
    SELECT s.relid, s.access, m[1]::oid
      FROM user_sources s, pg_catalog.regexp_matches(s.tree, ':relid ([0-9]+)', 'g') m
    UNION
    SELECT confrelid, 'write', conrelid FROM pg_catalog.pg_constraint
    WHERE contype = 'f' AND (confdeltype IN ('c', 'n', 'd') OR confupdtype IN ('c', 'n', 'd'))
    UNION
    SELECT inhparent, 'write', inhrelid FROM pg_catalog.pg_inherits
),
reach (relid, access, other) AS (
    SELECT r.oid, a.access, r.oid FROM user_relations r CROSS JOIN (VALUES ('read'), ('write')) a (access)
    UNION
    SELECT reach.relid, reach.access, e.other
      FROM reach JOIN edges e ON e.relid = reach.other AND (e.access = reach.access OR reach.access = 'write')
),
implicit AS (
    SELECT r.nspname, r.relname, reach.access,
           pg_catalog.json_agg(DISTINCT fs.nspname || '.' || p.proname) AS functions
      FROM reach JOIN user_relations r ON r.oid = reach.relid
      JOIN calls c ON c.relid = reach.other AND (c.access = reach.access OR reach.access = 'write')
      JOIN pg_catalog.pg_proc p ON p.oid = c.fn JOIN pg_catalog.pg_namespace fs ON fs.oid = p.pronamespace
     GROUP BY r.nspname, r.relname, reach.access
)
SELECT pg_catalog.json_build_object(
    'database', pg_catalog.current_database(),
    'relations', (SELECT pg_catalog.json_object_agg(nspname, relations) FROM (
        SELECT nspname, pg_catalog.json_object_agg(relname, COALESCE(columns, '[]'::json)) AS relations
        FROM relations GROUP BY nspname) r),
    'functions', (SELECT pg_catalog.json_object_agg(nspname, functions) FROM (
        SELECT nspname, pg_catalog.json_object_agg(proname, signatures) AS functions
        FROM functions GROUP BY nspname) f),
    'creatable', (SELECT pg_catalog.json_object_agg(rolname, schemas) FROM creatable),
    'implicit', (SELECT pg_catalog.json_object_agg(access, schemas) FROM (
        SELECT access, pg_catalog.json_object_agg(nspname, relations) AS schemas FROM (
            SELECT access, nspname, pg_catalog.json_object_agg(relname, functions) AS relations
            FROM implicit GROUP BY access, nspname) per_schema
        GROUP BY access) per_access),
    'shapes', (SELECT pg_catalog.json_object_agg(nspname, relations) FROM (
        SELECT nspname, pg_catalog.json_object_agg(relname, shape) AS relations
        FROM shapes GROUP BY nspname) s)
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
    implicit = data.get("implicit") or {}
    return snapshot_from_rows(
        data.get("relations") or {},
        data.get("functions") or {},
        data.get("creatable") or {},
        implicit_reads=implicit.get("read") or {},
        implicit_writes=implicit.get("write") or {},
        shapes=data.get("shapes") or {},
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
        database=data.get("database") or "",
    )


# The channel the gateway LISTENs on, and NOTIFYs after DDL it runs; the event trigger the
# README gives an administrator NOTIFYs it too, after DDL from anywhere.
CATALOG_CHANNEL = "edge_sql_gateway_catalog"
LISTENER_NAME = "gw catalog listener"  # its application_name in pg_stat_activity
NOTIFY_CATALOG_CHANGED = f"SELECT pg_catalog.pg_notify('{CATALOG_CHANNEL}', '')"
# Notifications arrive in bursts (one per DDL statement of a migration): one read after the
# burst is enough.
COALESCE_SECONDS = 0.05
RECONNECT_SECONDS = (0.1, 0.5, 1.0, 2.0, 5.0)
# A listening connection whose server stopped answering (without closing it) would wait for
# notifications forever: it is asked to answer this often, within the same time.
HEARTBEAT_SECONDS = 10.0


class CatalogKeeper:
    """Keeps the policy's snapshot as current as PostgreSQL's catalog: read at start, then
    again on every notification on `CATALOG_CHANNEL` (a listening connection of its own, where
    the database has somewhere to listen: `Database.listening_database`), on SIGHUP, every
    `interval` seconds, and — before any further decision — after DDL the gateway ran itself.
    A read that fails keeps the snapshot in use until the next one."""

    def __init__(
        self,
        database: Database,
        roles: list[str],
        publish: Callable[[CatalogSnapshot], None],
        interval: float | None,
        read_timeout: float,
    ) -> None:
        self.database = database
        self.read_timeout = read_timeout
        self.roles = roles
        self.publish = publish
        self.interval = interval
        self.snapshot: CatalogSnapshot | None = None
        self.listening = False  # a listening connection is up: changes arrive within a second
        self._wanted = asyncio.Event()
        self._settled = asyncio.Event()  # set while no refresh owed to DDL is pending
        self._settled.set()
        self._lock = asyncio.Lock()  # one read at a time; the listening connection runs one query at a time
        self._listener: asyncpg.Connection | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Read the first snapshot (failing loudly) and keep it fresh from now on."""
        await self.refresh()
        self._tasks = [asyncio.create_task(self._keep_fresh())]
        listening = self.database.listening_database()
        if listening is None:
            logger.warning(
                "catalog notifications: not listening (a transaction pooler cannot carry LISTEN; set "
                "[database] listen_url to a direct URL); the catalog is re-read after DDL run through this "
                "gateway, %s",
                f"every {self.interval:g}s and on SIGHUP" if self.interval else "and on SIGHUP",
            )
        else:
            self._tasks.append(asyncio.create_task(self._listen(listening)))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def present_relations(self) -> set[tuple[str, str]]:
        """(schema, relation) of every relation in the snapshot in use."""
        relations = self.snapshot.relations if self.snapshot else {}
        return {(schema, name) for schema, names in relations.items() for name in names}

    def want_refresh(self) -> None:
        """A refresh soon (SIGHUP, a notification)."""
        self._wanted.set()

    async def settled(self) -> None:
        """Returns at once unless a refresh owed to DDL is under way; then when it is done."""
        if not self._settled.is_set():
            await self._settled.wait()

    @contextlib.asynccontextmanager
    async def changing(self) -> AsyncIterator[None]:
        """Around the COMMIT of DDL: decisions wait from the moment it is sent until the
        snapshot has been read again."""
        self._settled.clear()
        try:
            yield
            try:
                await self.refresh()
            except Exception as error:
                logger.warning("catalog snapshot not refreshed after DDL (%s); keeping the one in use", error)
        finally:
            self._settled.set()

    async def refresh(self) -> bool:
        """Read the snapshot now; True when it changed (and was handed to the policy). It is
        read on the listening connection when there is one, so a refresh never takes a pool
        connection from a request. Raises TimeoutError past `read_timeout` (a frozen
        database), having dropped the connection it was read on."""
        async with asyncio.timeout(self.read_timeout), self._lock:
            snapshot = await self._read()
        if snapshot == self.snapshot:
            return False
        self.snapshot = snapshot
        self.publish(snapshot)
        return True

    async def _read(self) -> CatalogSnapshot:
        listener = self._listener
        if listener is None:
            async with self.database.connection() as connection:
                return await read_catalog(connection, self.roles)
        try:
            return await read_catalog(listener, self.roles)
        except asyncio.CancelledError:
            listener.terminate()  # abandoned mid-query: the listening loop connects again
            raise

    async def _keep_fresh(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wanted.wait(), self.interval)
            await asyncio.sleep(COALESCE_SECONDS)
            self._wanted.clear()
            try:
                await self.refresh()
            except Exception as error:
                taken_at = self.snapshot.taken_at if self.snapshot else "never"
                logger.warning("catalog snapshot not refreshed (%s); still using the one taken at %s", error, taken_at)

    async def _listen(self, database: Database) -> None:
        """LISTEN on a connection of its own to `database`, reconnecting with back-off."""
        failures = 0
        while True:
            try:
                connection = await database.dedicated_connection(LISTENER_NAME)
            except Exception as error:
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                logger.warning("catalog notifications: cannot connect (%s); retrying in %gs", error, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            renewing = False
            try:
                renewing = await self._listen_on(connection)
            except Exception as error:
                logger.warning("catalog notifications: listening failed (%s); reconnecting", error)
            finally:
                self.listening = False
                connection.terminate()
            if not renewing:
                await asyncio.sleep(RECONNECT_SECONDS[0])

    async def _listen_on(self, connection: asyncpg.Connection) -> bool:
        """Until the connection is lost or stops answering (False), or reaches the database's
        `max_connection_age` (True: renew it, as the pool does, so that a rotated-out login keeps
        no session); first a refresh, for the notifications sent while nobody listened."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        await connection.add_listener(CATALOG_CHANNEL, lambda *_notification: self.want_refresh())
        self._listener = connection
        renew_at = asyncio.get_running_loop().time() + self.database.config.max_connection_age
        try:
            self.listening = True
            self.want_refresh()
            while not lost.is_set():
                left = renew_at - asyncio.get_running_loop().time()
                if left <= 0:
                    return True
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), min(HEARTBEAT_SECONDS, left))
                if not lost.is_set():
                    async with self._lock:
                        await connection.fetchval("SELECT 1", timeout=HEARTBEAT_SECONDS)
            return False
        finally:
            self._listener = None

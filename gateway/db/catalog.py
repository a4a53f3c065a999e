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
    again on every notification on `CATALOG_CHANNEL` (a listening connection of its own), on
    SIGHUP, every `interval` seconds, and — before any further decision — after DDL the
    gateway ran itself. A read that fails keeps the snapshot in use until the next one."""

    def __init__(
        self,
        database: Database,
        roles: list[str],
        publish: Callable[[CatalogSnapshot], None],
        interval: float | None,
    ) -> None:
        self.database = database
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
        self._tasks = [asyncio.create_task(self._keep_fresh()), asyncio.create_task(self._listen())]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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
        connection from a request."""
        async with self._lock:
            if self._listener is not None:
                snapshot = await read_catalog(self._listener, self.roles)
            else:
                async with self.database.connection() as connection:
                    snapshot = await read_catalog(connection, self.roles)
        if snapshot == self.snapshot:
            return False
        self.snapshot = snapshot
        self.publish(snapshot)
        return True

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

    async def _listen(self) -> None:
        """LISTEN on a connection of its own, reconnecting with back-off."""
        failures = 0
        while True:
            try:
                connection = await self.database.dedicated_connection(LISTENER_NAME)
            except Exception as error:
                delay = RECONNECT_SECONDS[min(failures, len(RECONNECT_SECONDS) - 1)]
                failures += 1
                logger.warning("catalog notifications: cannot connect (%s); retrying in %gs", error, delay)
                await asyncio.sleep(delay)
                continue
            failures = 0
            try:
                await self._listen_on(connection)
            except Exception as error:
                logger.warning("catalog notifications: listening failed (%s); reconnecting", error)
            finally:
                self.listening = False
                connection.terminate()
            await asyncio.sleep(RECONNECT_SECONDS[0])

    async def _listen_on(self, connection: asyncpg.Connection) -> None:
        """Until the connection is lost or stops answering; first a refresh, for the
        notifications sent while nobody listened."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _connection: lost.set())
        await connection.add_listener(CATALOG_CHANNEL, lambda *_notification: self.want_refresh())
        self._listener = connection
        try:
            self.listening = True
            self.want_refresh()
            while not lost.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(lost.wait(), HEARTBEAT_SECONDS)
                if not lost.is_set():
                    async with self._lock:
                        await connection.fetchval("SELECT 1", timeout=HEARTBEAT_SECONDS)
        finally:
            self._listener = None

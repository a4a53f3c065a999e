"""Every use of asyncpg's internals, in one place, checked at start.

asyncpg's public API cannot do a few things the gateway needs: open a portal and read it in
batches with one round trip per batch (its cursor adds a round trip or yields row by row),
look a prepared statement up in its cache by name resolution, prepare one in the round trip
that begins its transaction (behind a transaction pooler), repeat a cancel request that
did not take, read the RowDescription the server sent and the settings it reported, give a
pooled connection back without a task per call, close idle connections past their age, and
exchange records and arrays as PostgreSQL's text. Each of those reaches into asyncpg here and
nowhere else, and `self_test` — run on the first connection, before the gateway serves —
refuses an asyncpg outside the range these internals were checked on, or one on which any of
them no longer behaves as expected (`check_pool` does the same for the pool's holders).
pyproject.toml pins the same range.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg
from asyncpg.cursor import BaseCursor
from asyncpg.types import Attribute

TESTED_VERSIONS = ((0, 30), (0, 33))  # [from, to): the range pyproject.toml pins
CANCEL_REPEAT_INTERVAL = 0.5  # seconds before a cancel request that did not take is sent again
SELF_TEST_SQL = "SELECT 1 AS one, $1::text AS two"
ROW_DESCRIPTION_FIELDS = 7  # name, table oid, column number, type oid, size, modifier, format

T = TypeVar("T")

# A result column: asyncpg's Attribute (`name`, and `type` with oid, name, kind, schema).
Column = Attribute


class UnsupportedAsyncpg(RuntimeError):
    """This asyncpg's internals are not the ones the gateway was checked with."""


# ---------------------------------------------------------------------------- statements


async def prepared_statement(
    connection: asyncpg.Connection,
    sql: str,
    timeout: float | None,
    record_class: type[asyncpg.Record],
    prelude: bytes = b"",
) -> Any:
    """The connection's cached prepared statement for `sql` and `record_class` (prepared now
    if need be): asyncpg's statement cache is keyed on the text and the record class only.
    Named and cached when the connection has a statement cache, else the unnamed statement.

    `prelude` (`prelude_messages`, for a statement not cached) goes out in the same flush,
    ahead of the Parse: the statement is prepared inside the transaction the prelude begins,
    in one round trip with it. asyncpg skips the prelude's ParseComplete, BindComplete and
    CommandComplete while it waits for the statement's description; an error in the prelude
    is read as the statement's, up to the Sync asyncpg then sends. No ReadyForQuery follows a
    prepare: asyncpg learns of the transaction at the statement's own Sync."""
    return await _after_prelude(
        connection, prelude, lambda: connection._get_statement(sql, timeout, named=False, record_class=record_class)
    )


def cached_statement(connection: asyncpg.Connection, sql: str, record_class: type[asyncpg.Record]) -> Any | None:
    """The prepared statement `prepared_statement` would return without a round trip, if any.
    A statement prepared now leaves the server inside an implicit transaction until the next
    Sync (asyncpg ends its Parse/Describe with Flush), whose snapshot a prelude's BEGIN would
    then come after: `BEGIN ISOLATION LEVEL SERIALIZABLE` fails there, so a prelude goes with
    the Bind only for a statement that was prepared before, and with the Parse otherwise."""
    return connection._stmt_cache.get((sql, record_class, False))


async def _after_prelude(connection: asyncpg.Connection, prelude: bytes, operation: Callable[[], Awaitable[T]]) -> T:
    """`operation` (one asyncpg protocol exchange), with `prelude` written just before it."""
    if not prelude:
        return await operation()
    await settle_cancellation(connection)  # asyncpg would wait for it after the prelude went out
    connection._transport.write(prelude)
    try:
        return await operation()
    except (asyncpg.PostgresError, asyncio.CancelledError, TimeoutError):
        raise  # answered up to ReadyForQuery, or cancelled by asyncpg's own rules: in step
    except BaseException:
        connection.terminate()  # refused before asyncpg wrote: the prelude went out with no Sync after it
        raise


def round_trips(connection: asyncpg.Connection) -> int:
    """How many operations asyncpg has run on `connection` that each wait for a ReadyForQuery
    (a simple query, a Bind/Execute, an Execute): its round trips, preparing apart."""
    return connection._protocol.queries_count


def parameter_types(statement: Any) -> tuple:
    return statement._get_parameters()


def statement_columns(statement: Any) -> tuple[Column, ...]:
    return statement._get_attributes()


def drop_statement_cache(connection: asyncpg.Connection) -> None:
    """Forget every cached statement (after one whose result type changed), as asyncpg does
    on its own path before retrying."""
    connection._drop_global_statement_cache()


def row_description(statement: Any, count: int) -> list[tuple]:
    """The statement's RowDescription as the server sent it, one 7-tuple per column. asyncpg
    keeps it on the statement state in a C-level attribute Python cannot name; the garbage
    collector's list of the state's references reaches it (the one list of `count` 7-tuples)."""
    if not count:
        return []
    for referent in gc.get_referents(statement):
        if isinstance(referent, list) and len(referent) == count and _is_row_description(referent):
            return referent
    raise UnsupportedAsyncpg("asyncpg no longer keeps the RowDescription where the tested range did")


def _is_row_description(items: list) -> bool:
    return all(isinstance(item, tuple) and len(item) == ROW_DESCRIPTION_FIELDS for item in items)


def prelude_messages(statements: list[str]) -> bytes:
    """Parse, Bind and Execute of each statement on the unnamed statement and portal, with no
    Sync: what `Portal.first` sends ahead of its own Bind/Execute/Sync, or `prepared_statement`
    ahead of its Parse/Describe, so that all of them run in one round trip. The last statement
    must return no rows and complete as `SELECT 0` (PRELUDE_TAG); each must take no parameters
    and return no rows (asyncpg would read them as the statement's)."""
    out = bytearray()
    for sql in statements:
        text = sql.encode()
        _message(out, b"P", b"\0" + text + b"\0" + b"\0\0")  # unnamed, no parameter types
        _message(out, b"B", b"\0\0" + b"\0\0" * 3)  # unnamed portal and statement; no formats or values
        _message(out, b"E", b"\0" + b"\0\0\0\0")  # the unnamed portal, every row
    return bytes(out)


def _message(out: bytearray, kind: bytes, body: bytes) -> None:
    out += kind
    out += (len(body) + 4).to_bytes(4, "big")
    out += body


# How the last statement of a prelude completes. asyncpg takes any CommandComplete in its
# answer as the end of the result: only the statement's own tag, which follows, tells whether
# its portal completed or was suspended at the row limit.
PRELUDE_TAG = b"SELECT 0"


class Portal(BaseCursor):
    """One execution of a prepared statement, read in batches: Bind+Execute in one round trip,
    then Execute per batch."""

    status: bytes = b""

    async def first(self, limit: int, timeout: float | None, prelude: bytes = b"") -> list:
        """The first `limit` rows, inside a transaction: begun before, or by `prelude`
        (`prelude_messages`), which goes out in the same flush, ahead of the Bind: the
        transaction's BEGIN and settings cost no round trip of their own. asyncpg reads their
        answers as part of the statement's (ParseComplete, BindComplete and CommandComplete are
        what it skips or overwrites; an error in them ends the whole at the Sync, as the
        statement's own would). asyncpg's cursors check for a transaction by the last
        ReadyForQuery, which a transaction begun with a prepare has not sent yet: not here."""
        # The unnamed portal, as Neon's proxy binds (an error's context then reads as it
        # would there): nothing else is bound on the connection until this one is read.
        self._portal_name = ""
        protocol = self._connection._protocol
        rows, status, completed = await _after_prelude(
            self._connection,
            prelude,
            lambda: protocol.bind_execute(self._state, self._args, self._portal_name, limit, True, timeout),
        )
        if prelude:
            completed = not (status == PRELUDE_TAG and rows)
            status = status if completed else b""
        self.status, self._exhausted = status, completed
        return rows

    async def next(self, limit: int, timeout: float | None) -> list:
        rows, self.status, self._exhausted = await self._connection._protocol.execute(
            self._state, self._portal_name, limit, True, timeout
        )
        return rows

    @property
    def exhausted(self) -> bool:
        return bool(self._exhausted)

    @property
    def statement(self) -> Any:
        return self._state


# ---------------------------------------------------------------------------- connections


def pooled_connection(proxy: Any) -> asyncpg.Connection:
    """The connection behind a pool's proxy: asyncpg's cursors and prepared statements outlive
    the proxy's lease (they are collected after release)."""
    return proxy._con


async def release(proxy: Any, timeout: float | None) -> None:
    """Give a pooled connection back: `Pool.release` without the task its `asyncio.shield`
    costs on every call. The holder's release runs in the caller's task instead; cancelled
    part-way (possible only while a reset query runs) it terminates the connection, which the
    pool replaces, as it does for any failed reset."""
    connection = proxy._con
    if connection is None:  # released already
        return
    connection._on_release()
    await proxy._holder.release(timeout)


def close_idle(pool: asyncpg.Pool, should_close: Callable[[asyncpg.Connection], bool]) -> int:
    """Terminate each idle pooled connection `should_close` picks, as asyncpg does with one idle
    too long (terminate is synchronous: no acquire can take the connection half-closed); the
    holder opens a new one when next acquired, and asyncpg 0.32 refills its floor at once.
    Returns how many were closed."""
    closed = 0
    for holder in pool._holders:
        connection = holder._con
        idle = holder._in_use is None and connection is not None and not connection.is_closed()
        if idle and should_close(connection):
            connection.terminate()
            closed += 1
    return closed


def check_pool(pool: asyncpg.Pool) -> None:
    """Refuse a pool whose holders are not where `close_idle` looks for them."""
    holders = getattr(pool, "_holders", None)
    if not isinstance(holders, list) or not holders:
        raise UnsupportedAsyncpg("asyncpg.Pool keeps its connection holders elsewhere")
    for holder in holders:
        if not (hasattr(holder, "_in_use") and hasattr(holder, "_con")):
            raise UnsupportedAsyncpg("asyncpg's pool connection holders read differently")


def reported_settings(connection: asyncpg.Connection) -> dict[str, str]:
    """The settings PostgreSQL has reported on `connection`, kept current by asyncpg as
    ParameterStatus messages arrive: the dict asyncpg's ConnectionSettings holds in a C-level
    attribute, reached through the garbage collector's references, so that comparing them
    costs one dict comparison per request."""
    for referent in gc.get_referents(connection.get_settings()):
        if isinstance(referent, dict) and "server_version" in referent and "TimeZone" in referent:
            return referent
    raise UnsupportedAsyncpg("asyncpg no longer keeps the reported settings where the tested range did")


async def settle_cancellation(connection: asyncpg.Connection) -> None:
    """Wait until a statement whose task was cancelled (the client left) has stopped.

    asyncpg sends one CancelRequest. PostgreSQL acts on it at its next interrupt check, and
    ignores it if that check comes while it reads the next protocol message: a request that
    lands late in Bind (planning) is dropped before Execute, and the statement would run on
    to its timeout holding the connection. So the request is repeated until it takes (asyncpg
    has no public way to repeat one).
    """
    protocol = connection._protocol
    if not protocol._is_cancelling():
        return
    settled = asyncio.ensure_future(protocol._wait_for_cancellation())
    while not (await asyncio.wait({settled}, timeout=CANCEL_REPEAT_INTERVAL))[0]:
        connection._cancel_current_command(asyncio.get_running_loop().create_future())
    settled.result()


# ---------------------------------------------------------------------------- codecs


def add_text_codec(
    connection: asyncpg.Connection, oid: int, name: str, schema: str, kind: str, encoder: Any, decoder: Any
) -> None:
    """A codec that sends and reads the type as PostgreSQL's text, for any type: the call
    asyncpg's public `set_type_codec` makes, which it allows for scalar types only."""
    connection.get_settings().add_python_codec(oid, name, schema, [], kind, encoder, decoder, "text")


class IntrospectingConnection(asyncpg.Connection):
    """A connection told of every type asyncpg introspects (its private step between preparing
    a statement and building the statement's codecs), before the codecs are built."""

    def types_introspected(self, rows: list) -> None:
        """Override: `rows` are asyncpg's introspection rows (oid, name, ns, kind, ...)."""

    async def _introspect_types(self, typeoids: Any, timeout: float | None) -> Any:
        types, statement = await super()._introspect_types(typeoids, timeout)
        self.types_introspected(types)
        return types, statement


# ---------------------------------------------------------------------------- the check


def check_version() -> None:
    version = tuple(int(part) for part in asyncpg.__version__.split(".")[:2])
    low, high = TESTED_VERSIONS
    if not low <= version < high:
        raise UnsupportedAsyncpg(
            f"asyncpg {asyncpg.__version__} is outside the range the gateway was checked with "
            f"(>= {'.'.join(map(str, low))}, < {'.'.join(map(str, high))})"
        )


async def self_test(connection: asyncpg.Connection) -> None:
    """Exercise every internal above on a live connection; raise `UnsupportedAsyncpg` naming
    the first that does not behave as expected. Runs nothing that changes the database."""
    check_version()
    try:
        # A statement new to the connection, prepared after a prelude that begins the
        # transaction (the one way behind a transaction pooler), then read through a portal.
        prelude = prelude_messages(["BEGIN", "SELECT WHERE false"])
        statement = await prepared_statement(connection, SELF_TEST_SQL, None, asyncpg.Record, prelude)
        if len(parameter_types(statement)) != 1 or [c.name for c in statement_columns(statement)] != ["one", "two"]:
            raise UnsupportedAsyncpg("a prepared statement's parameters and columns read differently")
        fields = row_description(statement, 2)
        if [field[0] for field in fields] != [b"one", b"two"]:
            raise UnsupportedAsyncpg("the RowDescription reads differently")
        portal = Portal(connection, "", statement, ["x"], asyncpg.Record)
        rows = await portal.first(2, None)  # one row, and the end of the result
        began = connection.is_in_transaction()
        await connection.execute("ROLLBACK")
        if not (began and portal.exhausted and len(rows) == 1):
            raise UnsupportedAsyncpg("a statement prepared after a prelude reads differently")
        # With a statement cache, the same statement again, cached, after a prelude: one row,
        # and the portal suspended (the row limit reached), which only the command tag tells.
        cached = cached_statement(connection, SELF_TEST_SQL, asyncpg.Record)
        if cached is not None:
            portal = Portal(connection, "", cached, ["x"], asyncpg.Record)
            rows = await portal.first(1, None, prelude)
            began = connection.is_in_transaction()
            rest = await portal.next(1, None) if began else None
            await connection.execute("ROLLBACK")
            if not (began and len(rows) == 1 and rest == [] and portal.exhausted and portal.status == b"SELECT 0"):
                raise UnsupportedAsyncpg("a statement sent after a prelude reads differently")
        if not isinstance(reported_settings(connection).get("server_version"), str):
            raise UnsupportedAsyncpg("the reported settings read differently")
        await settle_cancellation(connection)  # nothing to settle: must return at once
        for name in ("_drop_global_statement_cache", "_cancel_current_command", "_introspect_types", "_on_release"):
            if not callable(getattr(connection, name, None)):
                raise UnsupportedAsyncpg(f"asyncpg.Connection.{name} is gone")
        if not callable(getattr(asyncpg.pool.PoolConnectionHolder, "release", None)):
            raise UnsupportedAsyncpg("asyncpg.pool.PoolConnectionHolder.release is gone")
    except UnsupportedAsyncpg:
        raise
    except (AttributeError, TypeError) as error:
        raise UnsupportedAsyncpg(f"asyncpg {asyncpg.__version__}: {error}") from None

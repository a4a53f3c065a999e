"""The per-request transaction on one pooled connection.

Owns the setup message (transaction mode, role, claims, timeouts, pinned search_path,
standard_conforming_strings, request tag — all transaction-local, sent as ONE simple-query
message), running the caller's statement byte for byte through the extended protocol from a
portal in batches, commit and rollback, the deadline on every wait for the database, and the
mapping of PostgreSQL and driver errors to gateway errors.

Batches come from a portal opened with Bind+Execute in one round trip, so a small result
costs no more than `fetch()` (`gateway.db.asyncpg_compat.Portal`: asyncpg's public cursor
API would add a round trip or yield row by row). That path skips what asyncpg does around
its own statements, so it is done here: a cached statement whose result type changed is
prepared again, and statements are cached per name resolution (role and search path), never
shared between resolutions. Behind a transaction pooler (`[database] pooler = "pgbouncer"`)
nothing is cached: every statement is prepared inside its own transaction, and the session reset
goes out with COMMIT, so nothing depends on which server session the next transaction reaches.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Awaitable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple, TypeVar

import asyncpg

from gateway.db import asyncpg_compat as compat
from gateway.db.asyncpg_compat import Column, Portal
from gateway.db.pool import FULL_RESET, Database, GatewayConnection
from gateway.db.types import parameter_value
from gateway.errors import (
    GatewayError,
    bad_request,
    database_unavailable,
    database_unresponsive,
    statement_outdated,
)

T = TypeVar("T")

ISOLATION_LEVELS = {
    "read uncommitted": "READ UNCOMMITTED",
    "read committed": "READ COMMITTED",
    "repeatable read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}
# Sent in the messages that end every transaction: session-level advisory locks and sequence
# positions (`currval`, `lastval`) are never left to the next request. Triggers, defaults and
# identity columns reach both without any statement the policy sees, and ParameterStatus
# reports neither; both statements cost no round trip here.
END_OF_REQUEST = "SELECT pg_catalog.pg_advisory_unlock_all(); DISCARD SEQUENCES"
# PostgreSQL (13+) names the parameter whose input failed as the whole of the error's context
# (`unnamed portal parameter $2`, with ` = '...'` when the server logs parameter values); a
# context that merely contains these words comes from somewhere else (a function's SQL).
BIND_PARAMETER_CONTEXT = re.compile(r'(?:unnamed portal|portal "(?:[^"]|"")*") parameter \$(\d+)(?: = .*)?', re.DOTALL)


def sql_string(text: str) -> str:
    """An E'' literal that reads the same whatever standard_conforming_strings is."""
    return "E'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True)
class TransactionSettings:
    """What a transaction is set up with, apart from the per-request tag and claims: one per
    identity and transaction mode, so its SQL is built once."""

    role: str
    schemas: tuple[str, ...]
    statement_timeout_ms: int
    lock_timeout_ms: int
    idle_timeout_ms: int
    isolation: str = "read committed"
    read_only: bool = False
    deferrable: bool = False

    @cached_property
    def statement_key(self) -> type[asyncpg.Record]:
        """What asyncpg's statement cache is keyed on besides the text (see `resolution_key`)."""
        return resolution_key(self.role, self.schemas)

    @cached_property
    def _begin(self) -> str:
        mode = "READ ONLY" if self.read_only else "READ WRITE"
        if self.deferrable:
            mode += " DEFERRABLE"
        return f"BEGIN ISOLATION LEVEL {ISOLATION_LEVELS[self.isolation]} {mode}"

    @cached_property
    def _fixed_settings(self) -> str:
        # PostgreSQL searches pg_catalog first when the path does not name it, and creates
        # what a statement names without a schema in the path's first schema: named, pg_catalog
        # would be that schema (where creating is always refused). Without schemas, it stays.
        path = ", ".join([*(f'"{schema}"' for schema in self.schemas or ("pg_catalog",)), "pg_temp"])
        settings = {
            "role": self.role,
            "search_path": path,
            "statement_timeout": str(self.statement_timeout_ms),
            "lock_timeout": str(self.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(self.idle_timeout_ms),
            "standard_conforming_strings": "on",
        }
        return ", ".join(_set_local(name, value) for name, value in settings.items())

    def setup_statements(self, application_name: str, claims_json: str) -> list[str]:
        """BEGIN, and every setting in one statement that returns no rows (it goes out ahead of
        the first statement, whose rows are the only ones asyncpg may read: see
        `asyncpg_compat.prelude_messages`). `set_config(..., true)` is `SET LOCAL`; for `role`
        it checks membership exactly as `SET LOCAL ROLE` does. num_nulls evaluates every
        argument, and is never below zero."""
        calls = (
            f"{self._fixed_settings}, {_set_local('application_name', application_name)}, "
            f"{_set_local('request.jwt.claims', claims_json)}"
        )
        return [self._begin, f"SELECT WHERE pg_catalog.num_nulls({calls}) < 0"]


def _set_local(name: str, value: str) -> str:
    return f"pg_catalog.set_config({sql_string(name)}, {sql_string(value)}, true)"


@functools.cache
def resolution_key(role: str, schemas: tuple[str, ...]) -> type[asyncpg.Record]:
    """A record class per name resolution, for asyncpg's statement cache, which is keyed on the
    text and the record class only. A statement is planned for the search path and role it was
    prepared with: run under another path its parameter types stay those of the first (`$1`
    compared with a column of another type fails), and a result type that differs fails as a
    stale plan. One class per role and schemas (a bounded set: the configuration's)."""
    return type("ResolvedRecord", (asyncpg.Record,), {"__slots__": ()})


class StatementRun:
    """A running statement: its columns, then batches of rows, then its command tag."""

    def __init__(
        self, transaction: Transaction, portal: Portal, columns: tuple[Column, ...], first_rows: list, batch_size: int
    ) -> None:
        self._transaction = transaction
        self._portal = portal
        self.columns = columns
        self._pending: list | None = first_rows
        self._batch_size = batch_size
        self._last_execute_rows = len(first_rows)
        self._earlier_rows = 0  # rows of every Execute before the last one

    @property
    def exhausted(self) -> bool:
        return self._portal.exhausted

    @property
    def statement(self) -> Any:
        """asyncpg's prepared statement state (`gateway.db.asyncpg_compat`)."""
        return self._portal.statement

    async def batches(self):
        if self._pending is not None:
            rows, self._pending = self._pending, None
            yield rows
        while not self._portal.exhausted:
            transaction = self._transaction
            rows = await transaction.wait(self._portal.next(self._batch_size, transaction.max_wait))
            self._earlier_rows += self._last_execute_rows
            self._last_execute_rows = len(rows)
            yield rows

    @property
    def command_tag(self) -> str:
        """PostgreSQL's command tag, counting every row: the tag of a portal read in several
        Executes counts only the last Execute's rows (`SELECT 0` after 200,000 rows)."""
        tag = self._portal.status.decode() if self._portal.status else ""
        head, _, count = tag.rpartition(" ")
        if self._earlier_rows and count.isdigit():
            return f"{head} {int(count) + self._earlier_rows}"
        return tag


class _Replaceable(Exception):
    """The connection failed before anything of the caller's ran on it: the transaction may
    start again on another."""


class Transaction:
    """One request's transaction on a pooled connection of its own: `begin` (acquire), the
    statements (the first goes out with BEGIN and the settings in one round trip), `commit`;
    `close` rolls back whatever was not committed and gives the connection back.

    Every wait on the database ends within the statement timeout plus `response_margin`:
    PostgreSQL answers a statement past its timeout well before that, so a longer silence
    means the database is not answering (frozen, cut off without the connection closing),
    and its own statement_timeout cannot fire while it is frozen. The connection is then
    terminated, never returned to the pool, and the request gets a 503. A connection found
    dead before anything of the caller's ran on it is replaced, once.
    """

    def __init__(
        self, database: Database, settings: TransactionSettings, setup: list[str], *, full_reset: bool = False
    ) -> None:
        self.database = database
        self.settings = settings
        self.max_wait = settings.statement_timeout_ms / 1000 + database.config.response_margin
        self._setup_sql = "; ".join(setup)
        self._prelude = compat.prelude_messages(setup)
        self._full_reset = full_reset
        # Behind a transaction pooler the server session goes to another client after COMMIT:
        # whatever the request may have left on it is reset before, in the same message.
        self._end_of_request = FULL_RESET if database.transaction_pooling else f"{END_OF_REQUEST};"
        self._lease = AsyncExitStack()  # the pooled connection, given back at `close`
        self._connection: GatewayConnection | None = None
        self.open = False
        self._statements = 0  # run so far, the one running included
        self._retried = False  # the one retry a request gets (`run`) is spent

    @property
    def connection(self) -> GatewayConnection:
        assert self._connection is not None, "Transaction.begin() was not awaited"
        return self._connection

    async def begin(self) -> None:
        """Take a pooled connection. BEGIN and the settings go out with the first statement."""
        self._connection = await self._lease.enter_async_context(self.database.connection())
        self._connection.needs_full_reset = self._full_reset

    async def _set_up_again(self) -> None:
        """The connection's backend had ended while it sat in the pool (a restart,
        `pg_terminate_backend`); asyncpg finds out only when it is next used. Nothing of the
        caller's ran, so the transaction starts again, once, on a fresh connection."""
        self._retried = True
        await self._lease.aclose()
        await self.database.renew()
        await self.begin()

    async def run(self, sql: str, params: list[Any], first_batch: int, batch_size: int) -> StatementRun:
        self._statements += 1
        try:
            return await self._run(sql, params, first_batch, batch_size)
        except _Replaceable:
            await self._set_up_again()
        except asyncpg.exceptions.InvalidCachedStatementError:
            # The statement's result type changed since it was prepared (ALTER TABLE ... ADD
            # COLUMN under `select *`). asyncpg drops every cached statement and retries outside
            # a transaction; here the first statement of a transaction runs again in a new one,
            # since nothing has run in this one. A later statement cannot: the statements before
            # it ran in a transaction that is now aborted.
            compat.drop_statement_cache(self.connection)
            if self._statements > 1:
                raise statement_outdated(self._statements) from None
            self._retried = True
            await self.wait(self.connection.execute(f"ROLLBACK; {self._setup_sql}", timeout=self.max_wait))
            self.open = True
        try:
            return await self._run(sql, params, first_batch, batch_size)
        except asyncpg.exceptions.InvalidCachedStatementError:  # changed again in between
            raise statement_outdated(self._statements) from None

    async def _run(self, sql: str, params: list[Any], first_batch: int, batch_size: int) -> StatementRun:
        first = self._statements == 1
        connection = self.connection
        state = await self._statement(sql, replaceable=(Exception,) if first else ())
        parameter_types = compat.parameter_types(state)
        if len(parameter_types) != len(params):
            raise bad_request(f"the statement takes {len(parameter_types)} parameters but {len(params)} were sent")
        args = [
            parameter_value(value, type_, position)
            for position, (value, type_) in enumerate(zip(params, parameter_types, strict=True), start=1)
        ]
        portal = Portal(connection, sql, state, args, self.settings.statement_key)
        # The statement runs at Bind+Execute, which asyncpg refuses without writing anything
        # (InternalClientError) on a connection it knows is broken.
        refused = (asyncpg.exceptions.InternalClientError,) if first else ()
        if self.open:
            rows = await self.wait(portal.first(first_batch, self.max_wait), replaceable=refused)
        else:
            try:
                rows = await self.wait(portal.first(first_batch, self.max_wait, self._prelude), replaceable=refused)
            finally:  # BEGIN ran unless the connection failed first; an error leaves it to roll back
                self.open = not connection.is_closed() and connection.is_in_transaction()
        return StatementRun(self, portal, compat.statement_columns(state), rows, batch_size)

    async def _statement(self, sql: str, replaceable: tuple[type[BaseException], ...]) -> Any:
        """The prepared statement for `sql`. One new to this connection (every statement,
        behind a transaction pooler: nothing is cached) is prepared inside the transaction: if
        the transaction has not begun, its BEGIN and settings go out ahead of the Parse, in the
        same round trip (`asyncpg_compat.cached_statement`), and so reach the server session
        that prepares and runs it. Preparing runs nothing of the caller's."""
        key = self.settings.statement_key
        connection = self.connection
        cached = compat.cached_statement(connection, sql, key)
        if cached is not None:
            return cached
        prelude = b"" if self.open else self._prelude
        try:
            state = await self.wait(
                compat.prepared_statement(connection, sql, self.max_wait, key, prelude), replaceable=replaceable
            )
        except BaseException:
            if prelude:  # after an error asyncpg has read up to ReadyForQuery: it knows
                self.open = not connection.is_closed() and connection.is_in_transaction()
            raise
        self.open = True  # begun by the prelude: no ReadyForQuery has told asyncpg yet, the statement's Sync will
        return state

    async def commit(self, announce: str | None = None) -> None:
        """COMMIT, after `announce` (a statement of the gateway's own, in the same message)."""
        prefix = f"{announce}; " if announce else ""
        try:
            await self.wait(self.connection.execute(f"{prefix}{self._end_of_request} COMMIT", timeout=self.max_wait))
        finally:
            self.open = False

    async def rollback(self) -> None:
        if not self.open:
            return
        self.open = False
        if self.connection.is_closed():  # PostgreSQL rolled back when it closed
            return
        try:
            async with asyncio.timeout(self.max_wait):
                await compat.settle_cancellation(self.connection)
                await self.connection.execute(f"ROLLBACK; {END_OF_REQUEST}")
        except Exception:  # not rolled back, or not in time: dropped, never reused
            self.connection.terminate()

    async def close(self) -> None:
        """Roll back what was not committed and give the connection back (a terminated one
        is replaced by the pool)."""
        try:
            await self.rollback()
        finally:
            await self._lease.aclose()

    def abandon(self) -> None:
        """Drop the connection at once: terminated, never returned to the pool. PostgreSQL
        rolls back the transaction of a connection that closes."""
        self.open = False
        if self._connection is not None:
            self._connection.terminate()

    async def wait(self, work: Awaitable[T], *, replaceable: tuple[type[BaseException], ...] = ()) -> T:
        """`work`: a call on the connection given `max_wait` as asyncpg's timeout (a timer of
        the protocol's own, cheaper than a cancel scope on the hot path). Past it, or after a
        failure that leaves the connection unusable, the connection is dropped; a failure of
        the `replaceable` kinds, the first time, raises `_Replaceable` so that the caller
        starts again on another connection."""
        try:
            return await work
        except TimeoutError:  # asyncpg has sent PostgreSQL a cancel request, which cannot help
            self.abandon()
            raise database_unresponsive(self.max_wait) from None
        except asyncpg.exceptions.InvalidCachedStatementError:
            raise  # `run` prepares the statement again
        except Exception as error:
            if connection_lost(error):
                self.abandon()
                if isinstance(error, replaceable) and not self._retried:
                    raise _Replaceable from error
            raise translate_error(error) from None


class RowField(NamedTuple):
    """One column of PostgreSQL's RowDescription message, as the server sent it."""

    name: bytes
    table_oid: int  # 0 when the column is not a table's
    column_number: int  # the attribute number in that table, else 0
    type_oid: int
    type_size: int  # pg_type.typlen: -1 variable length, -2 C string
    type_modifier: int  # atttypmod: -1 when none, else type-specific (varchar(10) -> 14)
    format: int


def row_description(run: StatementRun) -> list[RowField]:
    """The statement's RowDescription, field by field, for the Neon protocol's `fields`:
    asyncpg's public `Attribute` has only a column's name and type, the server sent the table
    OID, column number, type size and modifier too (the Node tests compare every field with
    node-postgres's)."""
    return [RowField(*field) for field in compat.row_description(run.statement, len(run.columns))]


# ---------------------------------------------------------------------------- errors


def connection_lost(error: BaseException) -> bool:
    """Whether `error` leaves the connection unusable: the socket closed or failed, the
    server ended the session (08xxx, 57P0x), or asyncpg can no longer drive it. A backend
    terminated while its connection sat idle shows as the last: asyncpg reads the server's
    FATAL with no request to hand it to, and refuses the next request with
    `InternalClientError: cannot switch to state ...; another operation (2) is in progress`."""
    if isinstance(error, asyncpg.PostgresError):
        return (error.sqlstate or "").startswith(("08", "57P"))
    return isinstance(error, OSError | asyncpg.exceptions.InterfaceError | asyncpg.exceptions.InternalClientError)


def translate_error(error: BaseException) -> GatewayError:
    """A PostgreSQL or driver error as the caller should see it (through the one error table, `gateway/errors.py`)."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, asyncpg.PostgresError):
        return _postgres_error(error)
    if connection_lost(error):
        return database_unavailable()
    raise error


def _postgres_error(error: asyncpg.PostgresError) -> GatewayError:
    sqlstate = error.sqlstate or ""
    fields = {
        key: getattr(error, key, None)
        for key in (
            "severity",
            "detail",
            "hint",
            "position",
            "internal_position",
            "internal_query",
            "context",
            "schema_name",
            "table_name",
            "column_name",
            "data_type_name",
            "constraint_name",
            "server_source_filename",
            "server_source_line",
            "server_source_function",
        )
    }
    message = fields["message"] = error.message if hasattr(error, "message") else str(error)
    position = int(fields["position"]) if fields.get("position") else None
    common = {
        "sqlstate": sqlstate,
        "detail": fields["detail"],
        "hint": fields["hint"],
        "position": position,
        "pg_fields": fields,
    }
    if sqlstate == "57014":
        return GatewayError(
            "the statement ran past the identity's statement timeout and was cancelled",
            status=504,
            code="statement_timeout",
            **common,
        )
    if sqlstate in ("40001", "40P01"):
        return GatewayError(message, status=409, code="serialization_failure", **common)
    if sqlstate.startswith(("08", "57P")):
        failure = database_unavailable()
        failure.sqlstate = sqlstate
        return failure
    parameter = BIND_PARAMETER_CONTEXT.fullmatch(fields["context"] or "")
    if parameter is not None:
        number = int(parameter.group(1))
        return GatewayError(
            f"parameter ${number}: {message}", status=400, code="bad_request", parameter=number, **common
        )
    return GatewayError(message, status=400, code="sql_error", **common)

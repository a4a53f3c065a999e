"""The per-request transaction on one pooled connection (SPEC §5).

Owns the setup message (transaction mode, role, claims, timeouts, pinned search_path,
standard_conforming_strings, request tag — all transaction-local, sent as ONE simple-query
message), running the caller's statement byte for byte through the extended protocol from a
portal in batches, commit and rollback, and the mapping of PostgreSQL errors to gateway
errors.

Batches come from a portal opened with Bind+Execute in one round trip, so a small result
costs no more than `fetch()`; asyncpg's public cursor API would add a round trip or yield
row by row, so `_Portal` drives asyncpg's cursor protocol directly (pinned asyncpg range).
That path skips what asyncpg does around its own statements, so it is done here: a cached
statement whose result type changed is prepared again, and statements are cached per name
resolution (role and search path), never shared between resolutions.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import re
from dataclasses import dataclass
from functools import cached_property
from typing import Any, NamedTuple

import asyncpg
from asyncpg.cursor import BaseCursor
from asyncpg.types import Attribute

from gateway.db.pool import GatewayConnection
from gateway.db.types import parameter_value
from gateway.errors import GatewayError, bad_request, database_unavailable, statement_outdated

ISOLATION_LEVELS = {
    "read uncommitted": "READ UNCOMMITTED",
    "read committed": "READ COMMITTED",
    "repeatable read": "REPEATABLE READ",
    "serializable": "SERIALIZABLE",
}
CANCEL_REPEAT_INTERVAL = 0.5  # seconds before a cancel request that did not take is sent again
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
    def _setup_prefix(self) -> str:
        mode = "READ ONLY" if self.read_only else "READ WRITE"
        if self.deferrable:
            mode += " DEFERRABLE"
        path = ", ".join(["pg_catalog", *(f'"{schema}"' for schema in self.schemas), "pg_temp"])
        settings = {
            "role": self.role,
            "search_path": path,
            "statement_timeout": str(self.statement_timeout_ms),
            "lock_timeout": str(self.lock_timeout_ms),
            "idle_in_transaction_session_timeout": str(self.idle_timeout_ms),
            "standard_conforming_strings": "on",
        }
        calls = ", ".join(_set_local(name, value) for name, value in settings.items())
        return f"BEGIN ISOLATION LEVEL {ISOLATION_LEVELS[self.isolation]} {mode}; SELECT {calls}"

    def setup_sql(self, application_name: str, claims_json: str) -> str:
        """BEGIN and every setting in one simple-query message: two statements for the server
        to run instead of one per setting. `set_config(..., true)` is `SET LOCAL`; for
        `role` it checks membership exactly as `SET LOCAL ROLE` does."""
        return (
            f"{self._setup_prefix}, {_set_local('application_name', application_name)}, "
            f"{_set_local('request.jwt.claims', claims_json)}"
        )


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


# A result column: asyncpg's Attribute (`name`, and `type` with oid, name, kind, schema).
Column = Attribute


class _Portal(BaseCursor):
    """One execution of a prepared statement, read in batches."""

    status: bytes = b""

    async def first(self, limit: int, timeout: float | None) -> list:
        self._check_ready()
        protocol = self._connection._protocol
        # The unnamed portal, as Neon's proxy binds (an error's context then reads as it
        # would there): nothing else is bound on the connection until this one is read.
        self._portal_name = ""
        rows, self.status, self._exhausted = await protocol.bind_execute(
            self._state, self._args, self._portal_name, limit, True, timeout
        )
        return rows

    async def next(self, limit: int, timeout: float | None) -> list:
        protocol = self._connection._protocol
        rows, self.status, self._exhausted = await protocol.execute(
            self._state, self._portal_name, limit, True, timeout
        )
        return rows

    @property
    def exhausted(self) -> bool:
        return bool(self._exhausted)


class StatementRun:
    """A running statement: its columns, then batches of rows, then its command tag."""

    def __init__(self, portal: _Portal, columns: tuple[Column, ...], first_rows: list, batch_size: int) -> None:
        self._portal = portal
        self.columns = columns
        self._pending: list | None = first_rows
        self._batch_size = batch_size
        self._last_execute_rows = len(first_rows)
        self._earlier_rows = 0  # rows of every Execute before the last one

    @property
    def exhausted(self) -> bool:
        return self._portal.exhausted

    async def batches(self):
        if self._pending is not None:
            rows, self._pending = self._pending, None
            yield rows
        while not self._portal.exhausted:
            try:
                rows = await self._portal.next(self._batch_size, None)
            except Exception as error:
                raise translate_error(error) from None
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


class Transaction:
    """BEGIN with the settings, statements, COMMIT; ROLLBACK on anything else."""

    def __init__(self, connection: GatewayConnection, settings: TransactionSettings, setup_sql: str) -> None:
        self.connection = connection
        self.settings = settings
        self._setup_sql = setup_sql
        self.open = False
        self._statements = 0

    async def begin(self) -> None:
        try:
            await self.connection.execute(self._setup_sql)
        except Exception as error:
            raise translate_error(error) from None
        self.open = True

    async def run(self, sql: str, params: list[Any], first_batch: int, batch_size: int) -> StatementRun:
        self._statements += 1
        try:
            return await self._run(sql, params, first_batch, batch_size)
        except asyncpg.exceptions.InvalidCachedStatementError:
            # The statement's result type changed since it was prepared (ALTER TABLE ... ADD
            # COLUMN under `select *`). asyncpg drops every cached statement and retries outside
            # a transaction; here the first statement of a transaction runs again in a new one,
            # since nothing has run in this one. A later statement cannot: the statements before
            # it ran in a transaction that is now aborted.
            self.connection._drop_global_statement_cache()
            if self._statements > 1:
                raise statement_outdated(self._statements) from None
        try:
            await self.connection.execute(f"ROLLBACK; {self._setup_sql}")
            return await self._run(sql, params, first_batch, batch_size)
        except asyncpg.exceptions.InvalidCachedStatementError:  # changed again in between
            raise statement_outdated(self._statements) from None
        except Exception as error:
            raise translate_error(error) from None

    async def _run(self, sql: str, params: list[Any], first_batch: int, batch_size: int) -> StatementRun:
        key = self.settings.statement_key
        try:
            state = await self.connection._get_statement(sql, None, named=True, record_class=key)
        except Exception as error:
            raise translate_error(error) from None
        parameter_types = state._get_parameters()
        if len(parameter_types) != len(params):
            raise bad_request(f"the statement takes {len(parameter_types)} parameters but {len(params)} were sent")
        args = [
            parameter_value(value, type_, position)
            for position, (value, type_) in enumerate(zip(params, parameter_types, strict=True), start=1)
        ]
        portal = _Portal(self.connection, sql, state, args, key)
        try:
            rows = await portal.first(first_batch, None)
        except asyncpg.exceptions.InvalidCachedStatementError:
            raise
        except Exception as error:
            raise translate_error(error) from None
        return StatementRun(portal, describe_columns(state), rows, batch_size)

    async def commit(self, announce: str | None = None) -> None:
        """COMMIT, after `announce` (a statement of the gateway's own, in the same message)."""
        prefix = f"{announce}; " if announce else ""
        try:
            await self.connection.execute(f"{prefix}{END_OF_REQUEST}; COMMIT")
        except Exception as error:
            raise translate_error(error) from None
        finally:
            self.open = False

    async def rollback(self) -> None:
        if not self.open:
            return
        self.open = False
        try:
            await settle_cancellation(self.connection)
            await self.connection.execute(f"ROLLBACK; {END_OF_REQUEST}")
        except Exception:
            self.connection.terminate()


async def settle_cancellation(connection: GatewayConnection) -> None:
    """Wait until a statement whose task was cancelled (the client left) has stopped.

    asyncpg sends one CancelRequest. PostgreSQL acts on it at its next interrupt check, and
    ignores it if that check comes while it reads the next protocol message: a request that
    lands late in Bind (planning) is dropped before Execute, and the statement would run on
    to its timeout holding the connection. So the request is repeated until it takes, through
    asyncpg's internals (it has no public way to repeat one).
    """
    protocol = connection._protocol
    if not protocol._is_cancelling():
        return
    settled = asyncio.ensure_future(protocol._wait_for_cancellation())
    while not (await asyncio.wait({settled}, timeout=CANCEL_REPEAT_INTERVAL))[0]:
        connection._cancel_current_command(asyncio.get_running_loop().create_future())
    settled.result()


def describe_columns(state: Any) -> tuple[Column, ...]:
    return state._get_attributes()


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
    """The statement's RowDescription, field by field, for the Neon protocol's `fields`.

    asyncpg's public `Attribute` has only a column's name and type; the table OID, column
    number, type size and modifier are in the RowDescription that asyncpg keeps on the
    prepared statement state, in a C-level attribute Python cannot name. The garbage
    collector's list of the state's references reaches it (the one list of 7-tuples, one per
    column) without asking the catalogs for what the server already sent (checked on the
    pinned asyncpg range; the Node tests compare every field with node-postgres's)."""
    count = len(run.columns)
    if not count:
        return []
    for referent in gc.get_referents(run._portal._state):
        if isinstance(referent, list) and len(referent) == count and _is_row_description(referent):
            return [RowField(*field) for field in referent]
    raise RuntimeError("asyncpg no longer keeps the RowDescription where this asyncpg version range did")


def _is_row_description(items: list) -> bool:
    return all(isinstance(item, tuple) and len(item) == len(RowField._fields) for item in items)


# ---------------------------------------------------------------------------- errors


def translate_error(error: BaseException) -> GatewayError:
    """A PostgreSQL or driver error as the caller should see it (SPEC §4 error table)."""
    if isinstance(error, GatewayError):
        return error
    if isinstance(error, asyncpg.PostgresError):
        return _postgres_error(error)
    if isinstance(error, OSError | asyncpg.exceptions.InterfaceError | asyncpg.exceptions.ConnectionDoesNotExistError):
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

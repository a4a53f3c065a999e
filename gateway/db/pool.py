"""The warm asyncpg pool: TLS per `sslmode`, the login (user and password, and the client
certificate's files) read at every connect so that a rotated secret takes effect without a
restart, connections replaced once they reach `max_connection_age`, every value exchanged as
text on every connection (`gateway.db.types`), and the check that the login role cannot act
on its own.

Owns connecting and acquiring, and the mapping of connection failures to 503s. What runs on
a connection per request lives in `gateway.db.session`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

import asyncpg

from gateway.config import DatabaseConfig
from gateway.db import asyncpg_compat as compat
from gateway.db.login import Login, current_login
from gateway.db.types import TextExchangeConnection, TextType, builtin_text_types, check_text_exchange
from gateway.errors import database_unavailable, overloaded
from gateway.secrets import MissingSecret, SecretStore

# What a connection may carry from one request to the next is nothing: every setting is
# transaction-local, the policy refuses statements that change session state, and every
# transaction ends by releasing advisory locks and forgetting sequence positions
# (`gateway.db.session`). After a statement that may leave other session state behind (DDL
# can create temporary tables; a function outside the safe list, or one PostgreSQL runs on
# its own for a view, policy, trigger, rule or default, can set session settings), and after
# PostgreSQL reported a session setting changed, this full reset runs when the connection goes
# back to the pool. RESET ALL leaves the role alone: RESET ROLE comes first. Every statement of
# it may run inside a transaction block: behind a transaction pooler it goes out before COMMIT
# (`gateway.db.session`), on the server session the request ran on.
FULL_RESET = (
    "RESET ROLE; CLOSE ALL; UNLISTEN *; RESET ALL; SELECT pg_catalog.pg_advisory_unlock_all(); "
    "DISCARD TEMP; DISCARD SEQUENCES;"
)

CONNECTION_ERRORS = (
    OSError,
    asyncio.TimeoutError,
    asyncpg.exceptions.PostgresConnectionError,
    asyncpg.exceptions.InterfaceError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.AdminShutdownError,
    asyncpg.exceptions.CrashShutdownError,
    asyncpg.exceptions.InvalidAuthorizationSpecificationError,
    asyncpg.exceptions.InvalidPasswordError,
    MissingSecret,
)

# What PostgreSQL answers a login it does not accept (wrong password, unknown or expired role).
LOGIN_REFUSED = (asyncpg.exceptions.InvalidPasswordError, asyncpg.exceptions.InvalidAuthorizationSpecificationError)


class PoolerError(RuntimeError):
    """The configured `[database] pooler` is not what the connection goes through."""


class GatewayConnection(TextExchangeConnection):
    """A pooled connection that skips asyncpg's reset round trip unless a request marked it
    or PostgreSQL reported a changed session setting."""

    needs_full_reset = False
    # Behind a transaction pooler the next statement on this connection may reach another
    # server session: each transaction resets the one it ran on before COMMIT instead.
    resets_on_release = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.opened_at = time.monotonic()
        self._reported = compat.reported_settings(self)
        self._reported_at_start = dict(self._reported)

    def get_reset_query(self) -> str:
        # PostgreSQL reports TimeZone, DateStyle, IntervalStyle, client_encoding and the other
        # GUC_REPORT settings whenever their value changes (ParameterStatus); after COMMIT or
        # ROLLBACK a transaction-local value has been reported back, so a difference is a
        # session-level change nothing else caught (a trigger added since the catalog was read).
        if not self.resets_on_release:
            return ""
        if self.needs_full_reset or self._reported != self._reported_at_start:
            self.needs_full_reset = False
            return FULL_RESET
        return ""


def _older_than(connection: asyncpg.Connection, seconds: float) -> bool:
    return time.monotonic() - connection.opened_at > seconds


class LoginRoleError(RuntimeError):
    """The gateway's database login could run statements with privileges of its own."""


def _ignore_hold(seconds: float) -> None:
    """Where hold times go when nobody counts them (commands that only read the catalog)."""


class Database:
    def __init__(
        self, config: DatabaseConfig, secrets: SecretStore, on_hold: Callable[[float], None] = _ignore_hold
    ) -> None:
        self.config = config
        self.secrets = secrets
        self._on_hold = on_hold  # seconds a request held its connection, release included
        self.pool: asyncpg.Pool | None = None
        self._builtin_types: list[TextType] | None = None
        self._key_dir: tempfile.TemporaryDirectory | None = None
        self.waiting = 0  # requests waiting for a connection (the pool does not say)
        self._sweeper: asyncio.Task[None] | None = None

    @property
    def transaction_pooling(self) -> bool:
        """Whether consecutive transactions of a connection may run on different server
        sessions (`pooler = "pgbouncer"`): nothing is prepared or set outside a transaction."""
        return self.config.pooler == "pgbouncer"

    def listening_database(self) -> Database | None:
        """Where a connection that LISTENs goes: `listen_url` when set, else the pool's URL,
        and nowhere behind a transaction pooler, which runs each transaction on whichever
        server session is free (notifications reach the session that listened, not this
        connection)."""
        if self.config.listen_url is not None:
            return Database(dataclasses.replace(self.config, url=self.config.listen_url), self.secrets)
        return None if self.transaction_pooling else self

    # -------------------------------------------------------------- connecting

    def dsn(self) -> str:
        """The configured URL with the TLS settings asyncpg reads from a DSN (libpq's names)."""
        params = {"sslmode": self.config.sslmode}
        if self.config.sslrootcert:
            params["sslrootcert"] = self.config.sslrootcert
        if self.config.sslcert:
            params["sslcert"] = self.config.sslcert
        key_path = self._client_key_path()
        if key_path:
            params["sslkey"] = key_path
        separator = "&" if "?" in self.config.url else "?"
        return f"{self.config.url}{separator}{urlencode(params)}"

    def _client_key_path(self) -> str | None:
        """asyncpg loads the client key from a file: a key from `secrets_dir` is used in
        place; one from the environment is written to a private temporary file."""
        name = self.config.sslkey_secret
        if name is None:
            return None
        in_place = self.secrets.file_path(name)
        if in_place is not None:
            return str(in_place)
        if self._key_dir is None:
            self._key_dir = tempfile.TemporaryDirectory(prefix="gateway-key-")
        path = Path(self._key_dir.name) / "client.key"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(self.secrets.get(name))
        return str(path)

    async def _connect(self, **options: Any) -> asyncpg.Connection:
        """A new connection with the login as its secret names it now. A login PostgreSQL
        refuses is read once more: a rotation may have rewritten the secret (and dropped the
        role it named before) between the read and the login."""
        login = current_login(self.config, self.secrets)
        try:
            return await self.connect_as(login, **options)
        except LOGIN_REFUSED:
            again = current_login(self.config, self.secrets)
            if again == login:
                raise
            return await self.connect_as(again, **options)

    async def connect_as(self, login: Login, **options: Any) -> asyncpg.Connection:
        """A connection outside the pool as `login`, with the pool's TLS settings. A missing
        TLS file or a host name that does not resolve is a ConnectionError naming it (the
        ssl module's and the resolver's own errors name neither)."""
        self._check_tls_files()
        try:
            return await asyncpg.connect(
                self.dsn(), user=login.user, password=login.password, timeout=self.config.connect_timeout, **options
            )
        except socket.gaierror as error:
            host = urlsplit(self.config.url).hostname
            raise ConnectionError(f"cannot resolve the database host {host!r}: {error.strerror}") from None

    def _check_tls_files(self) -> None:
        for key in ("sslrootcert", "sslcert"):
            path = getattr(self.config, key)
            if path and not Path(path).is_file():
                raise ConnectionError(f"database.{key}: {path}: no such file")

    async def _pool_connect(self, *dsn: str, **options: Any) -> asyncpg.Connection:
        """The pool's way to connect (it passes the DSN it was made with: built here anew)."""
        return await self._connect(**options)

    async def _init_connection(self, connection: GatewayConnection) -> None:
        first = self._builtin_types is None
        if first:
            self._builtin_types = await builtin_text_types(connection)
        connection.exchange_as_text(self._builtin_types)
        connection.resets_on_release = not self.transaction_pooling
        if first:  # refuse, before serving, an asyncpg whose internals are not the checked ones
            await check_pooler(connection, self.config.pooler)
            await compat.self_test(connection)
            await check_text_exchange(connection)

    async def open(self, size: int | None = None) -> None:
        """Connect the pool: `pool_min`..`pool_max` connections, or exactly `size`."""
        self.pool = await asyncpg.create_pool(
            connect=self._pool_connect,
            min_size=self.config.pool_min if size is None else size,
            max_size=self.config.pool_max if size is None else size,
            connection_class=GatewayConnection,
            # Named statements outlive the transaction that prepared them, on a server session
            # a transaction pooler may give to another client next.
            statement_cache_size=0 if self.transaction_pooling else self.config.statement_cache_size,
            init=self._init_connection,
            max_inactive_connection_lifetime=min(300.0, self.config.max_connection_age),
        )
        compat.check_pool(self.pool)
        self._sweeper = asyncio.get_running_loop().create_task(self._sweep_aged(), name="gateway-connection-age")

    async def dedicated_connection(self, application_name: str, deadline: float | None = None) -> asyncpg.Connection:
        """A connection outside the pool, for work that holds one for a long time (listening
        for notifications) or that is not the pool's (the admin login), with the pool's TLS
        settings and login. With a `deadline`, no statement or lock wait may last longer, on
        the server (statement_timeout, lock_timeout) or in the client (a frozen server)."""
        settings = {"application_name": application_name}
        if deadline is not None:
            milliseconds = str(round(deadline * 1000))
            settings.update(statement_timeout=milliseconds, lock_timeout=milliseconds)
        return await self._connect(command_timeout=deadline, server_settings=settings)

    async def _sweep_aged(self) -> None:
        """Close idle connections past `max_connection_age` (the pool opens their replacements
        with the current login); one in use is closed as it is released. asyncpg keeps its
        floor of connections open however long they idle, so without the sweep a rotated-out
        login could keep sessions for ever."""
        max_age = self.config.max_connection_age
        while True:
            await asyncio.sleep(min(max(max_age / 4, 0.25), 30.0))
            if self.pool is not None:
                compat.close_idle(self.pool, lambda connection: _older_than(connection, max_age))

    async def renew(self) -> None:
        """Replace every connection made so far as it is next acquired (in use: as it is
        released). One found dead before use means its backend ended while it sat in the pool,
        and a restart ends them all; asyncpg would hand out the next of them, which looks as
        alive until its end is read."""
        assert self.pool is not None, "Database.open() was not awaited"
        await self.pool.expire_connections()

    def terminate(self) -> None:
        """Drop every connection at once, in use or idle, without waiting for the server
        (shutting down after the grace period: the database may not be answering)."""
        self._stop_sweeping()
        if self.pool is not None:
            self.pool.terminate()

    def _stop_sweeping(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    async def close(self) -> None:
        self._stop_sweeping()
        if self.pool is not None:
            await self.pool.close()
            self.pool = None
        if self._key_dir is not None:
            self._key_dir.cleanup()
            self._key_dir = None

    # -------------------------------------------------------------- using

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[GatewayConnection]:
        """A pooled connection within `acquire_timeout`, else 503 `overloaded`; a database
        that cannot be reached is 503 `database_unavailable`."""
        assert self.pool is not None, "Database.open() was not awaited"
        # With a connection idle, acquiring cannot wait: skip the timeout's machinery.
        idle = self.pool.get_idle_size()
        timeout = None if idle else self.config.acquire_timeout
        self.waiting += not idle
        try:
            proxy = await self.pool.acquire(timeout=timeout)
        except TimeoutError:
            raise overloaded() from None
        except CONNECTION_ERRORS:
            raise database_unavailable() from None
        finally:
            self.waiting -= not idle
        connection: GatewayConnection = compat.pooled_connection(proxy)
        acquired = time.perf_counter()
        try:
            yield connection
        finally:
            await self._release(proxy, connection)
            self._on_hold(time.perf_counter() - acquired)

    async def _release(self, proxy: asyncpg.pool.PoolConnectionProxy, connection: GatewayConnection) -> None:
        try:
            if _older_than(connection, self.config.max_connection_age):
                await connection.close(timeout=self.config.acquire_timeout)  # gives the holder back
                return
            await compat.release(proxy, self.config.acquire_timeout)
        except Exception:  # a connection that cannot be reset is dropped, never reused
            connection.terminate()

    def pool_state(self) -> tuple[int, int, int]:
        """(connections in use, idle, requests waiting for one)."""
        if self.pool is None:
            return 0, 0, self.waiting
        idle = self.pool.get_idle_size()
        return self.pool.get_size() - idle, idle, self.waiting

    async def ping(self, timeout: float = 2.0) -> bool:
        try:
            async with asyncio.timeout(timeout), self.connection() as connection:
                await connection.execute("SELECT 1")
            return True
        except Exception:
            return False

    async def check_login_role(self, identity_roles: list[str]) -> None:
        """Refuse a login that could act with privileges of its own."""
        async with self.connection() as connection:
            await check_login_role(connection, identity_roles)


async def check_pooler(connection: asyncpg.Connection, pooler: str) -> None:
    """Refuse a connection that reaches PostgreSQL through a pooler or proxy when `pooler` says
    it reaches PostgreSQL directly. PostgreSQL's BackendKeyData carries the backend's process
    id; PgBouncer (and any proxy that routes cancel requests) hands out a key of its own, so
    the pid the connection was given differs from the backend's. Checked once, at start."""
    if pooler != "none":
        return
    backend = await connection.fetchval("SELECT pg_catalog.pg_backend_pid()")
    if int(backend) != connection.get_server_pid():
        raise PoolerError(
            "the database URL reaches PostgreSQL through a connection pooler or proxy (the backend's "
            "process id differs from the one the connection was given), but [database] pooler is "
            '"none": behind PgBouncer in transaction pooling mode set pooler = "pgbouncer"; behind a '
            'pooler or proxy that keeps one server session per client connection set pooler = "session"'
        )


def _true(value: object) -> bool:
    return value is True or value == "t"  # a pooled connection reads booleans as PostgreSQL's text


async def check_login_role(connection: asyncpg.Connection, identity_roles: list[str]) -> None:
    """Raise LoginRoleError when the login `connection` is logged in as could act with
    privileges of its own, or is not a member of every identity role."""
    row = await connection.fetchrow(
        "SELECT rolname, rolsuper, rolinherit, rolbypassrls, rolcreaterole "
        "FROM pg_catalog.pg_roles WHERE rolname = current_user"
    )
    problems = []
    if _true(row["rolsuper"]):
        problems.append("is a superuser")
    if _true(row["rolbypassrls"]):
        problems.append("has BYPASSRLS")
    if _true(row["rolinherit"]):
        problems.append("INHERITs the privileges of its roles (use NOINHERIT)")
    if _true(row["rolcreaterole"]):
        problems.append("has CREATEROLE")
    for role in sorted(set(identity_roles)):
        member = await connection.fetchval(
            "SELECT pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER') "
            "FROM pg_catalog.pg_roles r WHERE r.rolname = $1",
            role,
        )
        if not _true(member):
            problems.append(f'is not a member of identity role "{role}"')
    if problems:
        raise LoginRoleError(f'database login "{row["rolname"]}" ' + "; ".join(problems))

"""The credentials broker (issue 12): short-lived PostgreSQL logins tied to a verified
identity — issued, listed and revoked for it, and reaped once expired.

Owns the temporary roles: their names, passwords, markers and lifecycle. Everything about
them is kept in PostgreSQL (the role, its VALID UNTIL, and a comment naming the gateway,
identity and role it was issued for), so every replica sees the same logins and any may
reap them. Connecting as the admin login is `gateway.db.admin`; authenticating the caller
and auditing its request are the pipeline's.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import re
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson

from gateway.config import SQL_NAME, CredentialsConfig, GatewayConfig, url_database
from gateway.db.admin import connect_admin
from gateway.db.pool import CONNECTION_ERRORS
from gateway.errors import (
    bad_request,
    credential_not_found,
    database_unavailable,
    too_many_credentials,
)
from gateway.grants import quoted
from gateway.identity import Identity

logger = logging.getLogger("gateway")

# A temporary login is named ROLE_PREFIX and 16 random hex digits, and carries a comment that
# says which gateway issued it: the reaper touches a role only when both hold.
ROLE_PREFIX = "gw_tmp_"
TEMPORARY_ROLE = re.compile(rf"^{ROLE_PREFIX}[0-9a-f]{{16}}$")
ISSUER_MARK = "edge-sql-gateway"
# Advisory lock classes (the first key of pg_advisory_xact_lock's two): one identity's issuing
# is serialised across replicas, so max_active holds; one login is retired by one replica.
ISSUE_LOCK = 0x67770001
RETIRE_LOCK = 0x67770002
# PostgreSQL's own choice (scram_iterations' default).
SCRAM_ITERATIONS = 4096
# Waits on the admin login that ran out (statement_timeout, lock_timeout): the database is
# too busy to answer in time, like one that cannot be reached.
TIMED_OUT = (asyncpg.QueryCanceledError, asyncpg.LockNotAvailableError)


@dataclass(frozen=True)
class Marker:
    """What the comment on a temporary role records: the gateway (its configured name), the
    identity it was issued to and the role it is a member of."""

    gateway: str
    identity: str
    role: str

    def comment(self) -> str:
        fields = {"issuedBy": ISSUER_MARK, "gateway": self.gateway, "identity": self.identity, "role": self.role}
        return orjson.dumps(fields).decode()

    @classmethod
    def parse(cls, comment: str | None) -> Marker | None:
        """The marker a comment holds, or None for any other comment (or none)."""
        try:
            fields = orjson.loads(comment or "")
        except orjson.JSONDecodeError:
            return None
        if not isinstance(fields, dict) or fields.get("issuedBy") != ISSUER_MARK:
            return None
        gateway, identity, role = (fields.get(key) for key in ("gateway", "identity", "role"))
        if not (isinstance(gateway, str) and isinstance(identity, str) and isinstance(role, str)):
            return None
        return cls(gateway, identity, role) if SQL_NAME.match(role) else None


@dataclass(frozen=True)
class Login:
    """A temporary login as PostgreSQL holds it."""

    user: str
    expires_at: datetime
    marker: Marker

    def as_json(self) -> dict[str, Any]:
        return {"user": self.user, "expiresAt": iso_time(self.expires_at)}


@dataclass(frozen=True)
class IssuedCredential:
    """What `POST /v1/credentials` answers: the only time the password is ever shown."""

    user: str
    password: str
    host: str
    port: int
    database: str
    sslmode: str
    expires_at: datetime

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}@{host}:{self.port}/"
            f"{quote(self.database, safe='')}?sslmode={self.sslmode}"
        )

    def as_json(self) -> dict[str, Any]:
        return {
            "user": self.user,
            "password": self.password,
            "url": self.url,
            "host": self.host,
            "port": self.port,
            "database": self.database,
            "sslmode": self.sslmode,
            "expiresAt": iso_time(self.expires_at),
        }


def iso_time(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def scram_verifier(password: str) -> str:
    """The password as PostgreSQL stores it (SCRAM-SHA-256, RFC 5803): CREATE ROLE is sent this,
    never the password, so a server that logs statements logs nothing that opens a session.
    The password is ASCII (`secrets.token_urlsafe`), which SASLprep leaves as it is."""
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    stored_key = hashlib.sha256(hmac.digest(salted, b"Client Key", "sha256")).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")
    encode = base64.b64encode
    return (
        f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{encode(salt).decode()}"
        f"${encode(stored_key).decode()}:{encode(server_key).decode()}"
    )


AuditExpiry = Callable[[Login], None]


class CredentialBroker:
    """Issues, lists and revokes one identity's temporary logins, and reaps expired ones
    (every `reap_interval`, and once at start) — on a connection of the admin login each
    time, so a rotated admin password takes effect at the next operation."""

    def __init__(self, config: GatewayConfig, settings: CredentialsConfig, on_expired: AuditExpiry) -> None:
        self.config = config
        self.settings = settings
        self.database_name = url_database(config.database.url)
        self._on_expired = on_expired  # audits a login the reaper dropped
        self._reaper: asyncio.Task | None = None

    # -------------------------------------------------------------- requests

    async def issue(self, identity: Identity, ttl: float | None) -> IssuedCredential:
        """A new login for `identity`, valid for `ttl` seconds (its default when None)."""
        allowed = identity.credentials
        assert allowed is not None, "the pipeline lets only identities with [identities.credentials] here"
        ttl = allowed.ttl if ttl is None else ttl
        if not 0 < ttl <= allowed.max_ttl:
            raise bad_request(f'"ttl" must be above 0 and at most {allowed.max_ttl:g}s (this identity\'s max_ttl)')
        user = ROLE_PREFIX + secrets.token_hex(8)
        password = secrets.token_urlsafe(32)
        marker = Marker(self.config.name, identity.name, identity.role)
        async with self._admin() as connection, connection.transaction():
            await connection.execute(
                "SELECT pg_catalog.pg_advisory_xact_lock($1, pg_catalog.hashtext($2))",
                ISSUE_LOCK,
                f"{marker.gateway}/{marker.identity}",
            )
            now = await connection.fetchval("SELECT pg_catalog.clock_timestamp()")
            active = [login for login in await self._logins(connection, identity.name) if login.expires_at > now]
            if len(active) >= allowed.max_active:
                first_expiry = min(login.expires_at for login in active)
                raise too_many_credentials(allowed.max_active, (first_expiry - now).total_seconds())
            expires_at = now + timedelta(seconds=ttl)
            # PostgreSQL quotes every name and literal (format's %I and %L); the names are
            # checked ones besides.
            statement = await connection.fetchval(
                "SELECT pg_catalog.format('CREATE ROLE %I LOGIN INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE "
                "NOREPLICATION NOBYPASSRLS CONNECTION LIMIT %s VALID UNTIL %L PASSWORD %L IN ROLE %I; "
                "COMMENT ON ROLE %I IS %L', $1::text, $2::int, $3::text, $4::text, $5::text, $1::text, $6::text)",
                user,
                allowed.connection_limit,
                iso_time(expires_at),
                scram_verifier(password),
                identity.role,
                marker.comment(),
            )
            await connection.execute(statement)
        credentials = self.settings
        return IssuedCredential(
            user,
            password,
            credentials.public_host,
            credentials.public_port,
            self.database_name,
            credentials.sslmode,
            expires_at,
        )

    async def active(self, identity: Identity) -> list[Login]:
        """The identity's logins that have not expired, soonest expiry first."""
        async with self._admin() as connection:
            now = await connection.fetchval("SELECT pg_catalog.clock_timestamp()")
            logins = await self._logins(connection, identity.name)
        return sorted((login for login in logins if login.expires_at > now), key=lambda login: login.expires_at)

    async def revoke(self, identity: Identity, user: str) -> None:
        """End `user` now: no new session from this moment, its sessions terminated and its
        role dropped. Only the identity it was issued to may revoke it."""
        if not TEMPORARY_ROLE.match(user):
            raise credential_not_found(user)
        async with self._admin() as connection:
            login = next((login for login in await self._logins(connection, identity.name) if login.user == user), None)
            if login is None:
                raise credential_not_found(user)
            # Committed first: should dropping fail part way, the login is expired and the
            # reaper finishes the work.
            try:
                await connection.execute(f"ALTER ROLE {quoted(user)} NOLOGIN VALID UNTIL '-infinity'")
            except asyncpg.UndefinedObjectError:  # dropped since (revoked or reaped elsewhere)
                raise credential_not_found(user) from None
            await self._retire(connection, login)

    # -------------------------------------------------------------- the reaper

    async def start(self) -> None:
        """Reap once (what a stopped or crashed gateway left), then every `reap_interval`."""
        await self._reap_logged()
        self._reaper = asyncio.create_task(self._reap_periodically(), name="credentials reaper")

    async def stop(self) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
            self._reaper = None

    async def _reap_periodically(self) -> None:
        while True:
            await asyncio.sleep(self.settings.reap_interval)
            await self._reap_logged()

    async def _reap_logged(self) -> None:
        """A reap whose failure is logged, never raised: the next one tries again, and an
        expired login can open no new session meanwhile."""
        try:
            await self.reap()
        except Exception as error:
            logger.warning("expired database logins not reaped (%s: %s)", type(error).__name__, error)

    async def reap(self) -> None:
        """Retire this gateway's expired logins, auditing each this replica dropped."""
        async with self._admin() as connection:
            now = await connection.fetchval("SELECT pg_catalog.clock_timestamp()")
            for login in await self._logins(connection):
                if login.expires_at > now:
                    continue
                try:
                    dropped = await self._retire(connection, login)
                except asyncpg.PostgresError as error:  # this login only: it owns objects in another database, say
                    logger.warning("expired database login %s not dropped (%s)", login.user, error)
                    continue
                if dropped:
                    self._on_expired(login)

    # -------------------------------------------------------------- on the database

    @contextlib.asynccontextmanager
    async def _admin(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection as the admin login for one operation; one that cannot be made or
        times out is 503 `database_unavailable`."""
        try:
            connection = await connect_admin(self.config, self.settings)
        except CONNECTION_ERRORS:
            raise database_unavailable() from None
        try:
            yield connection
        except (*CONNECTION_ERRORS, *TIMED_OUT):
            connection.terminate()
            raise database_unavailable() from None
        except BaseException:  # cancelled (stopping) or refused: nothing to wait for
            connection.terminate()
            raise
        await connection.close(timeout=self.settings.admin_timeout)

    async def _logins(self, connection: asyncpg.Connection, identity: str | None = None) -> list[Login]:
        """This gateway's temporary logins (of one identity), expired or not: roles with the
        name's shape AND this gateway's marker, never any other."""
        # A login of ours without a finite VALID UNTIL (revoked: -infinity; or altered since)
        # counts as long expired: none may live for ever.
        rows = await connection.fetch(
            "SELECT r.rolname, pg_catalog.shobj_description(r.oid, 'pg_authid') AS comment, "
            "CASE WHEN pg_catalog.isfinite(r.rolvaliduntil) THEN r.rolvaliduntil ELSE 'epoch' END AS expires_at "
            "FROM pg_catalog.pg_roles r WHERE r.rolname LIKE $1",
            ROLE_PREFIX.replace("_", "\\_") + "%",
        )
        logins = []
        for row in rows:
            marker = Marker.parse(row["comment"])
            if not TEMPORARY_ROLE.match(row["rolname"]) or marker is None or marker.gateway != self.config.name:
                continue
            if identity is None or marker.identity == identity:
                logins.append(Login(row["rolname"], row["expires_at"], marker))
        return logins

    async def _retire(self, connection: asyncpg.Connection, login: Login) -> bool:
        """Terminate the login's sessions, hand over or drop what it owns, drop its role — in
        one transaction, by one replica at a time. False when another replica is at it or
        has done it."""
        user = quoted(login.user)
        async with connection.transaction():
            locked = await connection.fetchval(
                "SELECT pg_catalog.pg_try_advisory_xact_lock($1, pg_catalog.hashtext($2))", RETIRE_LOCK, login.user
            )
            if not locked or not await connection.fetchval(
                "SELECT true FROM pg_catalog.pg_roles WHERE rolname = $1", login.user
            ):
                return False
            # Membership gives the admin the login's privileges for this transaction: ending
            # its sessions and touching what it owns need them (the role goes, and with it
            # the membership). PostgreSQL 16+: the admin holds ADMIN OPTION on roles it made.
            await connection.execute(f"GRANT {user} TO CURRENT_USER")
            # Signalled, not waited for: a session still ending holds its locks, which the
            # statements below wait for (lock_timeout).
            await connection.execute(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE usename = $1",
                login.user,
            )
            if self.settings.owned_objects == "reassign":
                await connection.execute(f"REASSIGN OWNED BY {user} TO {quoted(login.marker.role)}")
            await connection.execute(f"DROP OWNED BY {user}; DROP ROLE {user}")
        return True

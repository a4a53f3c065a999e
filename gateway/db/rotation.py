"""`gateway rotate-login`: moving the gateway's database login to a new role with no request
failing on the way.

A role has one password, so changing it in place leaves a window in which PostgreSQL and the
secret disagree and new connections fail. Rotation instead keeps two logins valid for a
while: it creates the next login role (the previous one's memberships, NOINHERIT, and the
same checks the gateway makes at start), rewrites `[database] login_secret` to name it, waits
until no session of the previous login is left (every gateway opens new connections with the
secret as it reads it then, and replaces older ones at `max_connection_age`), and only then
drops the previous login. Every step runs as the admin login (`[credentials] admin_url`).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import os
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson

from gateway.config import ConfigError, GatewayConfig
from gateway.db.admin import check_admin_role, connect_admin
from gateway.db.login import Login, current_login
from gateway.db.pool import Database, check_login_role

SCRAM_ITERATIONS = 4096  # PostgreSQL's default (scram_iterations)
GENERATION_SUFFIX = re.compile(r"_\d{14}$")  # what rotation appends: _YYYYMMDDHHMMSS
MAX_ROLE_NAME = 63  # NAMEDATALEN - 1


class RotationFailed(RuntimeError):
    """A step of the rotation could not be done; the message says what state it left."""


@dataclass(frozen=True)
class Rotation:
    previous: str
    next: str
    dropped: bool


def scram_verifier(password: str) -> str:
    """The SCRAM-SHA-256 verifier PostgreSQL stores for `password`, computed here so that the
    password itself never reaches the server's statement log (what `psql \\password` does)."""
    salt = os.urandom(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, SCRAM_ITERATIONS)
    client_key = hmac.digest(salted, b"Client Key", "sha256")
    stored_key = hashlib.sha256(client_key).digest()
    server_key = hmac.digest(salted, b"Server Key", "sha256")

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    return f"SCRAM-SHA-256${SCRAM_ITERATIONS}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


def next_login_name(previous: str, now: datetime) -> str:
    """`gateway_login` -> `gateway_login_20261202171500`; a rotated name gets a new suffix."""
    suffix = now.strftime("_%Y%m%d%H%M%S")
    base = GENERATION_SUFFIX.sub("", previous)
    return base[: MAX_ROLE_NAME - len(suffix)] + suffix


def login_secret_file(config: GatewayConfig) -> Path:
    """The file rotation rewrites: `login_secret` in `secrets_dir` (an environment variable
    cannot be changed for processes already running)."""
    name = config.database.login_secret
    if name is None:
        raise ConfigError("rotate-login: the login must come from [database] login_secret (user and password)")
    if config.secrets_dir is None:
        raise ConfigError("rotate-login: the login secret must be a file: set secrets_dir")
    return Path(config.secrets_dir) / name


def write_login(path: Path, login: Login, as_json: bool) -> None:
    """Replace the secret file at once (a reader sees the old or the new login, never half),
    in the format it had, readable by its owner only."""
    assert login.user is not None and login.password is not None
    text = (
        orjson.dumps({"user": login.user, "password": login.password}).decode()
        if as_json
        else f"{login.user}:{login.password}"
    )
    staged = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text + "\n")
    staged.replace(path)


async def rotate_login(config: GatewayConfig, wait: float, say: Callable[[str], None]) -> Rotation:
    """Run the rotation; `say` reports each step. Waits up to `wait` seconds for the previous
    login's sessions to end; if some remain then, it is left in place (still valid) and the
    rotation reports it as not dropped."""
    if config.credentials is None:
        raise ConfigError("rotate-login needs the admin login: [credentials] admin_url")
    path = login_secret_file(config)
    as_json = path.read_text().lstrip().startswith("{")
    previous = current_login(config.database, config.secret_store())
    assert previous.user is not None  # a login secret always names its user
    timeout = config.credentials.admin_timeout
    admin = await connect_admin(config, config.credentials)
    try:
        await check_admin_role(admin, timeout)
        name = next_login_name(previous.user, datetime.now(UTC))
        login = Login(name, secrets.token_urlsafe(32))
        memberships = await _create_like(admin, previous.user, login, timeout)
        say(f"created login {name} (NOINHERIT), member of {', '.join(memberships) or 'no role'}")
        try:
            await _check_new_login(config, login)
        except RotationFailed:
            await admin.execute(f"DROP ROLE {_quoted(name)}", timeout=timeout)
            raise
        write_login(path, login, as_json)
        say(f"wrote {path}: new connections log in as {name}")
        if not await _sessions_end(admin, previous.user, wait, timeout, config.database.connect_timeout, say):
            say(
                f"{previous.user} still has sessions after {wait:g}s: left in place (it still works); "
                f"drop it with DROP ROLE once they end, or run rotate-login again"
            )
            return Rotation(previous.user, name, dropped=False)
        try:
            await admin.execute(f"DROP ROLE {_quoted(previous.user)}", timeout=timeout)
        except asyncpg.PostgresError as error:
            raise RotationFailed(
                f"the new login is in use, but {previous.user} could not be dropped: {error}"
            ) from None
        say(f"dropped {previous.user}")
        return Rotation(previous.user, name, dropped=True)
    finally:
        await admin.close()


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _create_like(admin: asyncpg.Connection, previous: str, login: Login, timeout: float) -> list[str]:
    """Create `login` as a NOINHERIT login holding the memberships of `previous`; returns them."""
    row = await admin.fetchrow(
        "SELECT oid, rolconnlimit FROM pg_catalog.pg_roles WHERE rolname = $1", previous, timeout=timeout
    )
    if row is None:
        raise RotationFailed(f'the login the secret names, "{previous}", is not a role of this server')
    memberships = [
        record["rolname"]
        for record in await admin.fetch(
            "SELECT r.rolname FROM pg_catalog.pg_auth_members m JOIN pg_catalog.pg_roles r ON r.oid = m.roleid "
            "WHERE m.member = $1 ORDER BY r.rolname",
            row["oid"],
            timeout=timeout,
        )
    ]
    assert login.user is not None and login.password is not None
    verifier = scram_verifier(login.password).replace("'", "''")  # base64 and $: no quote to double
    try:
        async with admin.transaction():
            await admin.execute(
                f"CREATE ROLE {_quoted(login.user)} LOGIN NOINHERIT CONNECTION LIMIT {int(row['rolconnlimit'])} "
                f"PASSWORD '{verifier}'",
                timeout=timeout,
            )
            for role in memberships:
                await admin.execute(f"GRANT {_quoted(role)} TO {_quoted(login.user)}", timeout=timeout)
    except asyncpg.PostgresError as error:
        raise RotationFailed(f"could not create the next login (nothing changed): {error}") from None
    return memberships


async def _check_new_login(config: GatewayConfig, login: Login) -> None:
    """Log in as the new login (TLS, pg_hba.conf and password as a gateway will) and make the
    gateway's start checks, before any gateway may use it."""
    try:
        connection = await Database(config.database, config.secret_store()).connect_as(login)
        try:
            await check_login_role(connection, config.identity_roles())
        finally:
            await connection.close()
    except Exception as error:
        raise RotationFailed(
            f"the new login {login.user} could not be used ({error}); it was dropped "
            "and the secret still names the previous login"
        ) from None


async def _sessions_end(
    admin: asyncpg.Connection, user: str, wait: float, timeout: float, settle: float, say: Callable[[str], None]
) -> bool:
    """Whether every session of `user` ends within `wait` seconds and none appears for `settle`
    seconds more (a connection that read the previous secret just before it was rewritten may
    still be logging in)."""
    give_up = time.monotonic() + wait
    quiet_since: float | None = None
    last_count = -1
    while True:
        await admin.execute("SELECT pg_catalog.pg_stat_clear_snapshot()", timeout=timeout)
        count = await admin.fetchval(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = $1", user, timeout=timeout
        )
        now = time.monotonic()
        if count:
            quiet_since = None
            if count != last_count:
                say(f"waiting for {count} session(s) of {user} to end")
        elif quiet_since is None:
            quiet_since = now
        elif now - quiet_since >= settle:
            return True
        last_count = count
        if now > give_up:
            return False
        await asyncio.sleep(0.25)

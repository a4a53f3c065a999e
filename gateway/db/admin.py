"""The admin login (`[credentials] admin_url`): a login of its own, apart from the query
login, that may create and drop roles. Owns connecting as it (TLS from `[database]`, the
password from a secret) and the check, at start, that it has CREATEROLE and is no superuser.

What is done with it (temporary logins, their reaping) lives in `gateway.credentials`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

import asyncpg

from gateway.config import CredentialsConfig, DatabaseConfig, GatewayConfig
from gateway.db.pool import Database

ADMIN_APPLICATION_NAME = "gateway-admin"


class AdminRoleError(RuntimeError):
    """The admin login could do more than manage roles, or cannot manage them."""


def admin_login(database: DatabaseConfig, url: str, password_secret: str | None) -> DatabaseConfig:
    """Settings for an admin login at `url` on the server of `database`: the same TLS settings
    (sslmode, CA), but no client certificate, which is the query login's."""
    return dataclasses.replace(
        database, url=url, password_secret=password_secret, login_secret=None, sslcert=None, sslkey_secret=None
    )


def admin_database(config: GatewayConfig, credentials: CredentialsConfig) -> Database:
    settings = admin_login(config.database, credentials.admin_url, credentials.admin_password_secret)
    return Database(settings, config.secret_store())


async def connect_admin(config: GatewayConfig, credentials: CredentialsConfig) -> asyncpg.Connection:
    """A plain asyncpg connection as the admin login (values decoded by asyncpg, not the
    pool's text exchange), within `database.connect_timeout`; no statement on it may last
    longer than `credentials.admin_timeout`."""
    database = admin_database(config, credentials)
    return await database.dedicated_connection(ADMIN_APPLICATION_NAME, deadline=credentials.admin_timeout)


async def check_admin_role(connection: asyncpg.Connection, timeout: float) -> None:
    """Refuse an admin login that is a superuser (it could do anything, to any role) or lacks
    CREATEROLE (it could not issue a single login)."""
    row = await connection.fetchrow(
        "SELECT rolname, rolsuper, rolcreaterole FROM pg_catalog.pg_roles WHERE rolname = current_user",
        timeout=timeout,
    )
    problems = []
    if row["rolsuper"]:
        problems.append("is a superuser (use a role with CREATEROLE and nothing more)")
    if not row["rolcreaterole"]:
        problems.append("lacks CREATEROLE (it creates and drops the temporary logins)")
    if problems:
        raise AdminRoleError(f'credentials admin login "{row["rolname"]}" ' + "; ".join(problems))


async def check_admin_can_grant(connection: asyncpg.Connection, roles: Iterable[str], timeout: float) -> None:
    """Refuse an admin login that could not make a temporary login a member of `roles`:
    PostgreSQL 16 and later ask for ADMIN OPTION on each (15 and older: CREATEROLE is enough,
    for any role but a superuser)."""
    if connection.get_server_version().major < 16:
        return
    lacking = await connection.fetch(
        "SELECT name FROM pg_catalog.unnest($1::text[]) AS name WHERE NOT EXISTS ("
        "  SELECT FROM pg_catalog.pg_roles r"
        "  WHERE r.rolname = name AND pg_catalog.pg_has_role(current_user, r.oid, 'MEMBER WITH ADMIN OPTION'))",
        sorted(set(roles)),
        timeout=timeout,
    )
    if lacking:
        names = ", ".join(row["name"] for row in lacking)
        raise AdminRoleError(
            f"credentials admin login lacks ADMIN OPTION on {names} (GRANT <role> TO <admin> "
            "WITH ADMIN TRUE, INHERIT FALSE, SET FALSE: it then grants the role without holding its privileges)"
        )

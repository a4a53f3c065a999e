"""The admin login (`[credentials] admin_url`, issue 12): a login apart from the query login,
reached with the TLS settings of `[database]`, refused at start when it is a superuser or
cannot create roles.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable

import asyncpg
import pytest

from conftest import ADMIN_ROLE, GatewayProcess, PgServer, TlsFiles, gateway_config_text, run
from gateway.config import GatewayConfig, parse_config
from gateway.db.admin import AdminRoleError, check_admin_role, connect_admin

ADMIN_SECRET = "TEST_ADMIN_PASSWORD"
# A login of tests/schema.sql with no role attributes.
PLAIN_LOGIN = "inheriting_login"
PLAIN_LOGIN_PASSWORD = "inheriting-login-password"


def credentials_section(database: PgServer, user: str = ADMIN_ROLE) -> str:
    return f"""
[credentials]
admin_url = "{database.url(user, host="localhost")}"
admin_password_secret = "{ADMIN_SECRET}"
public_host = "localhost"
public_port = {database.port}
"""


def config_with_admin(database: PgServer, tls_files: TlsFiles, user: str) -> GatewayConfig:
    return parse_config(tomllib.loads(gateway_config_text(database, tls_files) + credentials_section(database, user)))


def refusal(database: PgServer, tls_files: TlsFiles, user: str, password: str, monkeypatch: pytest.MonkeyPatch) -> str:
    """What check_admin_role says of `user` as the admin login."""
    monkeypatch.setenv(ADMIN_SECRET, password)
    config = config_with_admin(database, tls_files, user)

    async def check() -> str:
        connection = await connect_admin(config, config.credentials)
        try:
            with pytest.raises(AdminRoleError) as raised:
                await check_admin_role(connection, timeout=5)
        finally:
            await connection.close()
        return str(raised.value)

    return run(check())


def test_an_admin_with_createrole_and_nothing_more_is_accepted(database, tls_files, monkeypatch):
    monkeypatch.setenv(ADMIN_SECRET, database.admin_password)
    config = config_with_admin(database, tls_files, ADMIN_ROLE)

    async def check() -> None:
        connection = await connect_admin(config, config.credentials)
        try:
            await check_admin_role(connection, timeout=5)
        finally:
            await connection.close()

    run(check())


def test_a_superuser_admin_is_refused(database, tls_files, monkeypatch):
    message = refusal(database, tls_files, database.superuser, database.superuser_password, monkeypatch)
    assert f'admin login "{database.superuser}" is a superuser' in message


def test_an_admin_without_createrole_is_refused(database, tls_files, monkeypatch):
    message = refusal(database, tls_files, PLAIN_LOGIN, PLAIN_LOGIN_PASSWORD, monkeypatch)
    assert f'admin login "{PLAIN_LOGIN}" lacks CREATEROLE' in message


def test_the_admin_login_uses_the_database_tls_settings(database, tls_files, monkeypatch):
    monkeypatch.setenv(ADMIN_SECRET, database.admin_password)
    config = config_with_admin(database, tls_files, ADMIN_ROLE)

    async def session() -> asyncpg.Record:
        connection = await connect_admin(config, config.credentials)
        try:
            return await connection.fetchrow(
                "SELECT current_user AS user, ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
        finally:
            await connection.close()

    row = run(session())
    assert (row["user"], row["ssl"]) == (ADMIN_ROLE, True)


def test_a_gateway_with_a_superuser_admin_refuses_to_start(
    database, tls_files, launch_gateway: Callable[..., GatewayProcess]
):
    text = gateway_config_text(database, tls_files) + credentials_section(database, database.superuser)
    with pytest.raises(RuntimeError) as raised:
        launch_gateway(config_text=text, env={ADMIN_SECRET: database.superuser_password})
    assert "refusing to start: credentials admin login" in str(raised.value)
    assert "is a superuser" in str(raised.value)


def test_a_gateway_with_a_createrole_admin_starts(database, tls_files, launch_gateway, http):
    text = gateway_config_text(database, tls_files) + credentials_section(database)
    gateway = launch_gateway(config_text=text, env={ADMIN_SECRET: database.admin_password})
    assert http.get(f"{gateway.url}/readyz").status_code == 200

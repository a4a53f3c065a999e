"""The admin login (`[credentials] admin_url`, issue 12): a login apart from the query login,
reached with the TLS settings of `[database]`, refused at start when it is a superuser or
cannot create roles.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable, Iterator

import asyncpg
import pytest

from conftest import (
    ADMIN_ROLE,
    ADMIN_SECRET,
    GatewayProcess,
    PgServer,
    TlsFiles,
    credentials_section,
    gateway_config_text,
    run,
)
from gateway.config import GatewayConfig, parse_config
from gateway.db.admin import AdminRoleError, check_admin_can_grant, check_admin_role, connect_admin

# A login of tests/schema.sql with no role attributes.
PLAIN_LOGIN = "inheriting_login"
PLAIN_LOGIN_PASSWORD = "inheriting-login-password"


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
    try:
        assert http.get(f"{gateway.url}/readyz").status_code == 200
    finally:
        gateway.stop()


@pytest.fixture
def admin_without_admin_option(database: PgServer) -> Iterator[str]:
    """A CREATEROLE login that holds no ADMIN OPTION on the identity roles."""
    name = "admin_without_option"
    database.execute(f"CREATE ROLE {name} LOGIN CREATEROLE PASSWORD 'without-option-password'")
    yield name
    database.execute(f"DROP ROLE {name}")


def test_an_admin_without_admin_option_on_an_identity_role_is_refused(
    database, tls_files, monkeypatch, admin_without_admin_option
):
    """PostgreSQL 16 and later: CREATEROLE alone cannot make a new role a member of another."""
    monkeypatch.setenv(ADMIN_SECRET, "without-option-password")
    config = config_with_admin(database, tls_files, admin_without_admin_option)

    async def check() -> str:
        connection = await connect_admin(config, config.credentials)
        try:
            if connection.get_server_version().major < 16:
                pytest.skip("PostgreSQL 15 and older: CREATEROLE grants any non-superuser role")
            await check_admin_can_grant(connection, ["demo_writer"], timeout=5)
            with pytest.raises(AdminRoleError) as raised:
                await check_admin_can_grant(connection, ["demo_reader", "demo_writer"], timeout=5)
            return str(raised.value)
        finally:
            await connection.close()

    database.execute(f"GRANT demo_writer TO {admin_without_admin_option} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE")
    assert "lacks ADMIN OPTION on demo_reader (GRANT" in run(check())


def test_a_gateway_whose_admin_cannot_grant_an_identity_role_refuses_to_start(
    database, tls_files, launch_gateway, admin_without_admin_option
):
    identity = """
[[identities]]
name = "analyst"
issuer = "dev"
match = { sub = "analyst" }
role = "demo_reader"

  [identities.credentials]
"""
    admin = credentials_section(database, admin_without_admin_option)
    text = gateway_config_text(database, tls_files) + identity + admin
    with pytest.raises(RuntimeError) as raised:
        launch_gateway(config_text=text, env={ADMIN_SECRET: "without-option-password"})
    assert "refusing to start: credentials admin login lacks ADMIN OPTION on demo_reader" in str(raised.value)

"""TLS to the database for every sslmode, client certificates, and the login-role check."""

from __future__ import annotations

import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import LOGIN_ROLE, MTLS_ROLE, PgServer, TlsFiles, gateway_config_text, run
from gateway.config import DatabaseConfig
from gateway.db.pool import Database, LoginRoleError
from gateway.secrets import SecretStore


async def _session_tls(config: DatabaseConfig, secrets: SecretStore) -> tuple[str, str]:
    """(current_user, whether this backend's connection is encrypted) over a pooled connection."""
    database = Database(config, secrets)
    await database.open(size=1)
    try:
        async with database.connection() as connection:
            row = await connection.fetchrow(
                "SELECT current_user, ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()"
            )
            return row[0], row[1]
    finally:
        await database.close()


@pytest.fixture
def connect_as(database: PgServer, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch, needs_local_server):
    monkeypatch.setenv("TEST_DB_PASSWORD", database.login_password)

    def connect(sslmode: str, host: str = "localhost", user: str = LOGIN_ROLE, secrets_dir: Path | None = None,
                **settings) -> tuple[str, str]:
        password = {"password_secret": "TEST_DB_PASSWORD"} if user == LOGIN_ROLE else {}
        config = DatabaseConfig(url=database.url(user, host=host), sslmode=sslmode, **password, **settings)
        return run(_session_tls(config, SecretStore(secrets_dir)))

    return connect


def test_disable_connects_without_tls(connect_as):
    assert connect_as("disable") == (LOGIN_ROLE, "f")


def test_allow_connects_without_tls_when_the_server_permits_it(connect_as):
    assert connect_as("allow") == (LOGIN_ROLE, "f")


def test_prefer_uses_tls_when_the_server_offers_it(connect_as):
    assert connect_as("prefer") == (LOGIN_ROLE, "t")


def test_require_encrypts_without_verifying_the_certificate(connect_as):
    assert connect_as("require", host="127.0.0.1") == (LOGIN_ROLE, "t")


def test_verify_ca_accepts_the_servers_ca_whatever_the_host_name(connect_as, tls_files):
    assert connect_as("verify-ca", host="127.0.0.1", sslrootcert=str(tls_files.ca)) == (LOGIN_ROLE, "t")


def test_verify_ca_refuses_a_certificate_from_another_ca(connect_as, tls_files):
    with pytest.raises(ssl.SSLCertVerificationError):
        connect_as("verify-ca", sslrootcert=str(tls_files.other_ca))


def test_verify_full_accepts_the_name_on_the_certificate(connect_as, tls_files):
    assert connect_as("verify-full", host="localhost", sslrootcert=str(tls_files.ca)) == (LOGIN_ROLE, "t")


def test_verify_full_refuses_a_certificate_for_another_host_name(connect_as, tls_files):
    with pytest.raises(ssl.SSLCertVerificationError, match=r"match|mismatch"):
        connect_as("verify-full", host="127.0.0.1", sslrootcert=str(tls_files.ca))


def test_client_certificate_with_key_from_the_environment(connect_as, tls_files, monkeypatch):
    monkeypatch.setenv("TEST_CLIENT_KEY", tls_files.client_key.read_text())
    result = connect_as("verify-full", user=MTLS_ROLE, sslrootcert=str(tls_files.ca),
                        sslcert=str(tls_files.client_cert), sslkey_secret="TEST_CLIENT_KEY")
    assert result == (MTLS_ROLE, "t")


def test_client_certificate_with_key_from_secrets_dir(connect_as, tls_files, tmp_path):
    (tmp_path / "client-key").write_text(tls_files.client_key.read_text())
    result = connect_as("verify-full", user=MTLS_ROLE, sslrootcert=str(tls_files.ca),
                        sslcert=str(tls_files.client_cert), sslkey_secret="client-key", secrets_dir=tmp_path)
    assert result == (MTLS_ROLE, "t")


def test_certificate_login_without_a_client_certificate_is_refused(connect_as, tls_files):
    with pytest.raises(Exception, match=r"certificate|authentication"):
        connect_as("verify-full", user=MTLS_ROLE, sslrootcert=str(tls_files.ca))


# ---------------------------------------------------------------------------- the login role


def _check_login(database: PgServer, user: str, password: str, identity_roles: list[str],
                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOGIN_PASSWORD", password)
    config = DatabaseConfig(url=database.url(user), sslmode="prefer", password_secret="LOGIN_PASSWORD")

    async def check() -> None:
        db = Database(config, SecretStore())
        await db.open(size=1)
        try:
            await db.check_login_role(identity_roles)
        finally:
            await db.close()

    run(check())


def test_login_role_check_accepts_a_noinherit_member_of_every_identity_role(database, monkeypatch):
    _check_login(database, LOGIN_ROLE, database.login_password, ["demo_reader", "demo_writer"], monkeypatch)


def test_login_role_check_refuses_an_inheriting_login(database, monkeypatch):
    with pytest.raises(LoginRoleError, match="NOINHERIT"):
        _check_login(database, "inheriting_login", "inheriting-login-password", ["demo_reader"], monkeypatch)


def test_login_role_check_refuses_a_login_outside_an_identity_role(database, monkeypatch):
    with pytest.raises(LoginRoleError, match='not a member of identity role "pg_monitor"'):
        _check_login(database, LOGIN_ROLE, database.login_password, ["pg_monitor"], monkeypatch)


def test_serve_refuses_to_start_with_an_unsafe_login(database, tls_files, tmp_path, gateway_env):
    text = gateway_config_text(database, tls_files).replace(
        f"postgresql://{LOGIN_ROLE}@", "postgresql://inheriting_login@"
    ).replace('password_secret = "TEST_DB_PASSWORD"', 'password_secret = "INHERITING_PASSWORD"')
    (tmp_path / "gateway.toml").write_text(text)
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(tmp_path / "gateway.toml"), "--port", "9"],
        capture_output=True, text=True, timeout=60,
        env={**gateway_env, "INHERITING_PASSWORD": "inheriting-login-password", "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 1
    assert "refusing to start" in result.stderr and "NOINHERIT" in result.stderr
    assert "Traceback" not in result.stderr

"""`gateway init --database URL` against the suite's database: the starter configuration it
writes validates, passes `gateway check --database` once its SQL has run, and serves a query
with a token from `gateway token`."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import httpx
import pytest

from conftest import TEST_DATABASE, PgServer, Superuser, TlsFiles, start_gateway
from gateway.cli import main

LOGIN = "init_login"
ROLE = "init_reader"


def gateway_command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def init_url(database: PgServer, tls_files: TlsFiles) -> str:
    return f"{database.url('postgres', host='localhost')}?sslmode=verify-full&sslrootcert={tls_files.ca}"


@pytest.fixture
def cleanup_roles(superuser: Superuser) -> Iterator[None]:
    yield
    for role in (ROLE, LOGIN):
        if superuser.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role):
            superuser.execute(f"DROP OWNED BY {role}; DROP ROLE {role}")


def test_init_writes_a_starter_that_validates_checks_and_serves(
    tmp_path, monkeypatch, capsys, database, tls_files, superuser, cleanup_roles
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGPASSWORD", database.superuser_password)
    code, sql, err = gateway_command(
        capsys, "init", "--database", init_url(database, tls_files), "--login", LOGIN, "--role", ROLE,
        "--schema", "public",
    )
    assert code == 0, err
    config_path = tmp_path / "gateway.toml"
    text = config_path.read_text()
    starter = tomllib.loads(text)
    reader = starter["identities"][0]
    assert (reader["role"], reader["read_only"]) == (ROLE, True)
    assert "public.orders" in reader["rules"][0]["tables"]
    # Columns listed, the writer left commented out, the SQL in the file as comments too.
    assert "public.orders\",  # table: id, tenant, customer_id, status, total" in text
    assert '# name = "writer"' in text
    assert f"#   CREATE ROLE {ROLE} NOLOGIN;" in text
    assert (tmp_path / "secrets" / "GATEWAY_DEV_SECRET").stat().st_mode & 0o777 == 0o600

    # Validates (the dev secret is there; the login's password is the user's to give).
    (tmp_path / "secrets" / "DB_PASSWORD").write_text("init-login-password\n")
    code, _, err = gateway_command(capsys, "config", "validate", "--config", "gateway.toml")
    assert code == 0, err

    # Its SQL, run as an admin, gives the role exactly its rules: check --database passes.
    assert f"GRANT SELECT ON TABLE public.orders TO {ROLE};" in sql
    superuser.execute(sql + f"ALTER ROLE {LOGIN} PASSWORD 'init-login-password';")
    code, out, err = gateway_command(capsys, "check", "--config", "gateway.toml", "--database")
    assert code == 0, out + err

    # Served, with a token from `gateway token` for the starter's identity.
    code, token, err = gateway_command(capsys, "token", "--config", "gateway.toml", "--issuer", "dev",
                                       "--sub", "reader")
    assert code == 0, err
    headers = {"Authorization": f"Bearer {token.strip()}"}
    gateway = start_gateway(config_path.read_text(), tmp_path, {})
    try:
        response = httpx.post(f"{gateway.url}/v1/query", headers=headers,
                              json={"sql": "select count(*) as n from public.customers"}, timeout=10)
        assert response.status_code == 200, response.text
        written = httpx.post(f"{gateway.url}/v1/query", headers=headers,
                             json={"sql": "delete from public.customers"}, timeout=10)
        assert written.status_code == 403, written.text
    finally:
        gateway.stop()


def test_init_refuses_a_login_that_is_also_the_identity_role(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--database", f"postgresql://admin@localhost/{TEST_DATABASE}", "--role", "gateway_login"]) == 2
    assert "--login and --role must differ" in capsys.readouterr().err


def test_init_refuses_to_replace_a_file(tmp_path, monkeypatch, capsys, database):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "gateway.toml").write_text("# mine\n")
    code = main(["init", "--database", database.url("postgres")])
    assert code == 2
    assert "gateway.toml exists; pass --force" in capsys.readouterr().err
    assert (tmp_path / "gateway.toml").read_text() == "# mine\n"


@pytest.mark.parametrize(("url", "error"), [
    (f"postgresql://admin:hunter2@localhost/{TEST_DATABASE}", "must not contain a password"),
    (f"postgresql://admin@localhost/{TEST_DATABASE}?sslmode=verify", "sslmode=verify: expected one of disable,"),
    (f"postgresql://admin@localhost/{TEST_DATABASE}?options=-c", "unsupported URL parameters options"),
    ("postgresql://admin@localhost", "the URL names no database"),
])
def test_init_refuses_a_url_it_cannot_use_before_connecting(tmp_path, monkeypatch, capsys, url, error):
    monkeypatch.chdir(tmp_path)
    assert main(["init", "--database", url]) == 2
    assert error in capsys.readouterr().err
    assert not (tmp_path / "gateway.toml").exists()


def test_init_of_a_schema_without_tables_writes_nothing(tmp_path, monkeypatch, capsys, database):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PGPASSWORD", database.superuser_password)
    code = main(["init", "--database", database.url("postgres"), "--schema", "no_such_schema"])
    assert code == 2
    assert "no tables or views in schemas no_such_schema" in capsys.readouterr().err
    assert not (tmp_path / "gateway.toml").exists()

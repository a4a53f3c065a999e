"""The gateway's own login rotating without a restart: the login secret (user and password)
read at every new connection, connections replaced at `max_connection_age` whether in use or
idle, a refused login read again once, client certificate files re-read per connection, and
`gateway rotate-login` moving a serving gateway to a new login role with every request answered.
"""

from __future__ import annotations

import asyncio
import collections
import os
import re
import secrets
import subprocess
import sys
import threading
import tomllib
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import trustme
from cryptography import x509
from test_admin_login import ADMIN_SECRET, credentials_section

from conftest import ADMIN_ROLE, MTLS_ROLE, PgServer, Superuser, TlsFiles, eventually, gateway_config_text, run
from gateway.config import ConfigError, DatabaseConfig, load_config, parse_config
from gateway.db.login import Login, current_login, parse_login
from gateway.db.pool import Database
from gateway.db.rotation import Rotation, RotationFailed, next_login_name, rotate_login, scram_verifier
from gateway.secrets import MissingSecret, SecretStore

LOGIN_SECRET = "GATEWAY_LOGIN"


# ---------------------------------------------------------------------------- the secret's format


def test_a_login_secret_is_user_colon_password():
    assert parse_login("gw_login_b:s3cr:et", LOGIN_SECRET) == Login("gw_login_b", "s3cr:et")


def test_a_login_secret_may_be_json():
    assert parse_login('{"user": "gw_login_b", "password": "p"}', LOGIN_SECRET) == Login("gw_login_b", "p")


@pytest.mark.parametrize(
    "text", ["no-colon-here", ":password", "user:", '{"user": "u"}', '{"user": 1, "password": "p"}', "{not json"]
)
def test_a_malformed_login_secret_is_refused_naming_the_secret_only(text):
    with pytest.raises(MissingSecret, match=LOGIN_SECRET) as raised:
        parse_login(text, LOGIN_SECRET)
    assert text not in str(raised.value)  # the value, whatever it holds, is never shown


def test_a_login_never_shows_its_password():
    assert "hunter2" not in repr(Login("gw", "hunter2"))


def test_password_secret_keeps_the_urls_user(tmp_path):
    (tmp_path / "PW").write_text("pw\n")
    config = DatabaseConfig(url="postgresql://gateway_login@db/app", password_secret="PW")
    assert current_login(config, SecretStore(tmp_path)) == Login(None, "pw")


def test_login_secret_and_password_secret_together_are_refused(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('name = "g"\n[database]\nurl = "postgresql://db/app"\npassword_secret = "A"\nlogin_secret = "B"\n')
    with pytest.raises(ConfigError, match=r"database\.login_secret: expected either login_secret or password_secret"):
        load_config(path)


def test_a_max_connection_age_of_zero_is_refused(tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text('name = "g"\n[database]\nurl = "postgresql://db/app"\nmax_connection_age = "0s"\n')
    with pytest.raises(ConfigError, match=r"database\.max_connection_age: expected a duration above zero"):
        load_config(path)


# ---------------------------------------------------------------------------- against PostgreSQL


class Logins:
    """Login roles made for one test (NOINHERIT, members of the identity roles, as the
    gateway's login must be) and the secrets_dir file naming the current one."""

    def __init__(self, superuser: Superuser, folder: Path) -> None:
        self.superuser = superuser
        self.folder = folder
        self.made: list[str] = []

    def make(self) -> tuple[str, str]:
        name, password = f"rot_login_{secrets.token_hex(4)}", secrets.token_urlsafe(12)
        self.superuser.execute(f"CREATE ROLE {name} LOGIN NOINHERIT PASSWORD '{password}';"
                               f"GRANT demo_reader, demo_writer TO {name}")
        self.made.append(name)
        return name, password

    def use(self, name: str, password: str) -> None:
        """Rewrite the secret as a secrets manager does: a new file renamed over the old."""
        staged = self.folder / f".{LOGIN_SECRET}.new"
        staged.write_text(f"{name}:{password}\n")
        staged.replace(self.folder / LOGIN_SECRET)

    def sessions(self, name: str) -> int:
        return len(self.superuser.activity("usename = $1", name))

    def drop_all(self) -> None:
        for name in self.made:
            # NOLOGIN first: a gateway still running would otherwise log in again at once.
            if self.superuser.fetchval("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = $1", name):
                self.superuser.execute(f"ALTER ROLE {name} NOLOGIN")
            self.superuser.execute(f"SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                                   f"WHERE usename = '{name}'")
            eventually(lambda name=name: self.sessions(name) == 0, f"sessions of {name} ended")
            self.superuser.execute(f"DROP ROLE IF EXISTS {name}")


@pytest.fixture
def logins(superuser: Superuser, tmp_path: Path, needs_local_server):
    made = Logins(superuser, tmp_path)
    yield made
    made.drop_all()


def _database(server: PgServer, tls: TlsFiles, folder: Path, max_age: float, size: int) -> Database:
    config = DatabaseConfig(url=server.url("ignored_user", host="localhost"), login_secret=LOGIN_SECRET,
                            sslrootcert=str(tls.ca), max_connection_age=max_age, pool_min=size, pool_max=size)
    return Database(config, SecretStore(folder))


async def _session_user(database: Database) -> str:
    async with database.connection() as connection:
        return await connection.fetchval("SELECT session_user")


def test_a_connection_in_use_past_its_age_is_replaced_with_the_login_the_secret_names_now(
        database: PgServer, tls_files: TlsFiles, logins: Logins, tmp_path: Path):
    first, second = logins.make(), logins.make()
    logins.use(*first)
    pool = _database(database, tls_files, tmp_path, max_age=0.6, size=1)

    async def scenario() -> list[str]:
        await pool.open()
        try:
            users = [await _session_user(pool)]
            logins.use(*second)
            users.append(await _session_user(pool))  # young: the previous login keeps working
            async with pool.connection() as connection:  # in use, so no sweep can take it
                await asyncio.sleep(0.8)
                users.append(await connection.fetchval("SELECT session_user"))
            users.append(await _session_user(pool))  # closed on release: a new connection
            return users
        finally:
            await pool.close()

    assert run(scenario()) == [first[0], first[0], first[0], second[0]]


def test_idle_connections_past_their_age_are_swept_so_the_previous_login_has_no_sessions_left(
        database: PgServer, tls_files: TlsFiles, logins: Logins, tmp_path: Path):
    first, second = logins.make(), logins.make()
    logins.use(*first)
    pool = _database(database, tls_files, tmp_path, max_age=0.5, size=2)

    async def scenario() -> str:
        observer = await database.connect()
        await pool.open()
        try:

            async def sessions() -> int:
                await observer.execute("SELECT pg_catalog.pg_stat_clear_snapshot()")
                return await observer.fetchval(
                    "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE usename = $1", first[0])

            assert await sessions() == 2
            logins.use(*second)
            give_up = asyncio.get_running_loop().time() + 10
            while await sessions() and asyncio.get_running_loop().time() < give_up:
                await asyncio.sleep(0.1)  # nothing acquires: only the sweep can close them
            assert await sessions() == 0
            return await _session_user(pool)
        finally:
            await pool.close()
            await observer.close()

    assert run(scenario()) == second[0]


def test_a_dedicated_connection_logs_in_as_the_secret_names_now(
        database: PgServer, tls_files: TlsFiles, logins: Logins, tmp_path: Path):
    logins.use(*logins.make())
    second = logins.make()
    logins.use(*second)
    pool = _database(database, tls_files, tmp_path, max_age=60, size=1)

    async def scenario() -> str:
        connection = await pool.dedicated_connection("gateway-test")
        try:
            return await connection.fetchval("SELECT session_user")
        finally:
            await connection.close()

    assert run(scenario()) == second[0]


class SecretRewrittenDuringLogin(SecretStore):
    """The secret as a rotation leaves it between two reads: the first read still gives the
    login that was just dropped, every later one the new login."""

    def __init__(self, folder: Path, stale: str) -> None:
        super().__init__(folder)
        self.stale: str | None = stale

    def get(self, name: str) -> str:
        if name == LOGIN_SECRET and self.stale is not None:
            value, self.stale = self.stale, None
            return value
        return super().get(name)


def test_a_refused_login_is_read_again_once(database: PgServer, tls_files: TlsFiles, logins: Logins,
                                            tmp_path: Path):
    current = logins.make()
    logins.use(*current)
    config = _database(database, tls_files, tmp_path, max_age=60, size=1).config
    pool = Database(config, SecretRewrittenDuringLogin(tmp_path, f"{current[0]}:not-the-password"))
    assert run(_open_and_ask(pool)) == current[0]


def test_a_login_refused_twice_alike_is_not_retried_for_ever(database: PgServer, tls_files: TlsFiles,
                                                             logins: Logins, tmp_path: Path):
    name, _ = logins.make()
    logins.use(name, "not-the-password")
    pool = _database(database, tls_files, tmp_path, max_age=60, size=1)
    with pytest.raises(asyncpg.InvalidPasswordError):
        run(_open_and_ask(pool))


async def _open_and_ask(pool: Database) -> str:
    await pool.open()
    try:
        return await _session_user(pool)
    finally:
        await pool.close()


def test_new_connections_present_a_rotated_client_certificate(
        database: PgServer, tls_files: TlsFiles, suite_ca: trustme.CA, tmp_path: Path, needs_local_server):
    cert_path, key_name = tmp_path / "client.pem", "client-key"

    def issue() -> int:
        cert = suite_ca.issue_cert("gateway-client", common_name=MTLS_ROLE)
        cert.cert_chain_pems[0].write_to_path(str(cert_path))
        cert.private_key_pem.write_to_path(str(tmp_path / key_name))
        return x509.load_pem_x509_certificate(cert.cert_chain_pems[0].bytes()).serial_number

    first = issue()
    config = DatabaseConfig(url=database.url(MTLS_ROLE, host="localhost"), sslrootcert=str(tls_files.ca),
                            sslcert=str(cert_path), sslkey_secret=key_name, max_connection_age=0.3,
                            pool_min=1, pool_max=1)
    pool = Database(config, SecretStore(tmp_path))
    serial_sql = "SELECT client_serial::text FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()"

    async def scenario() -> list[int]:
        await pool.open()
        try:
            async with pool.connection() as connection:
                serials = [int(await connection.fetchval(serial_sql))]
            second = issue()
            await asyncio.sleep(0.5)  # past the age: the next connection is a new one
            async with pool.connection() as connection:
                serials.append(int(await connection.fetchval(serial_sql)))
            return [*serials, second]
        finally:
            await pool.close()

    before, after, second = run(scenario())
    assert (before, after) == (first, second)


# ---------------------------------------------------------------------------- gateway rotate-login


def test_next_login_names_replace_the_rotation_suffix_and_fit_postgresql():
    now = datetime(2026, 12, 2, 17, 15, 0, tzinfo=UTC)
    assert next_login_name("gateway_login", now) == "gateway_login_20261202171500"
    assert next_login_name("gateway_login_20250101000000", now) == "gateway_login_20261202171500"
    assert len(next_login_name("x" * 63, now)) == 63


def test_the_scram_verifier_has_postgresqls_shape():
    verifier = scram_verifier("secret")
    assert re.fullmatch(r"SCRAM-SHA-256\$4096:[A-Za-z0-9+/=]{24}\$[A-Za-z0-9+/=]{44}:[A-Za-z0-9+/=]{44}", verifier)
    assert "secret" not in verifier and verifier != scram_verifier("secret")  # salted


def _rotation_config(database: PgServer, tls: TlsFiles, folder: Path, max_age: str = "1s") -> str:
    """The suite's gateway configuration with its login from a login secret in `folder` and
    the admin login that rotates it."""
    text = gateway_config_text(database, tls).replace(
        'password_secret = "TEST_DB_PASSWORD"', f'login_secret = "{LOGIN_SECRET}"\nmax_connection_age = "{max_age}"'
    )
    return f'secrets_dir = "{folder}"\n{text}{credentials_section(database)}'


@pytest.fixture
def admin_env(database: PgServer, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    monkeypatch.setenv(ADMIN_SECRET, database.admin_password)
    return {ADMIN_SECRET: database.admin_password}


def _administered(logins: Logins, superuser: Superuser) -> tuple[str, str]:
    """A login the admin login may drop (PostgreSQL 16+: it needs ADMIN OPTION on it)."""
    name, password = logins.make()
    superuser.execute(f"GRANT {name} TO {ADMIN_ROLE} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE")
    return name, password


def _role_exists(superuser: Superuser, name: str) -> bool:
    return bool(superuser.fetchval("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = $1", name))


def test_rotation_under_load_answers_every_request_and_drops_the_previous_login(
        database: PgServer, tls_files: TlsFiles, logins: Logins, superuser: Superuser, tmp_path: Path,
        launch_gateway, mint, admin_env):
    first = _administered(logins, superuser)
    logins.use(*first)
    gateway = launch_gateway(config_text=_rotation_config(database, tls_files, tmp_path), env=admin_env)
    token = mint("writer")
    statuses: list[int] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(base_url=gateway.url, headers={"Authorization": f"Bearer {token}"}, timeout=30) as http:
            while not stop.is_set():
                statuses.append(http.post("/v1/query", json={"sql": "select count(*) from orders"}).status_code)

    workers = [threading.Thread(target=load) for _ in range(4)]
    for worker in workers:
        worker.start()
    try:
        eventually(lambda: len(statuses) > 20, "requests before the rotation")
        rotation = subprocess.run(
            [sys.executable, "-m", "gateway", "rotate-login", "--config", str(gateway.log_path.parent / "gateway.toml"),
             "--wait", "30s"],
            capture_output=True, text=True, timeout=60, env={**os.environ, **admin_env})
        eventually(lambda: len(statuses) > 20 + 40, "requests after the rotation")
    finally:
        stop.set()
        for worker in workers:
            worker.join(30)
    assert rotation.returncode == 0, rotation.stdout + rotation.stderr
    new_user = (tmp_path / LOGIN_SECRET).read_text().split(":")[0]
    logins.made.append(new_user)
    assert new_user.startswith(f"{first[0]}_") and f"dropped {first[0]}" in rotation.stdout
    assert not _role_exists(superuser, first[0])
    # A dropped role's sessions would show with no user name: there are none, and the gateway's are the new login's.
    in_database = "datname = current_database() AND backend_type = 'client backend' AND pid <> pg_backend_pid()"
    assert superuser.activity(f"{in_database} AND usename IS NULL") == []
    assert superuser.activity(f"{in_database} AND usename = $1", new_user)
    assert len(statuses) > 60 and set(statuses) == {200}, collections.Counter(statuses)
    assert first[1] not in rotation.stdout + rotation.stderr + gateway.output()
    gateway.stop()


def test_a_previous_login_still_in_use_is_left_in_place(
        database: PgServer, tls_files: TlsFiles, logins: Logins, superuser: Superuser, tmp_path: Path, admin_env):
    first = _administered(logins, superuser)
    (tmp_path / LOGIN_SECRET).write_text(orjson.dumps({"user": first[0], "password": first[1]}).decode())
    config = parse_config(tomllib.loads(_rotation_config(database, tls_files, tmp_path)))
    said: list[str] = []

    async def scenario() -> Rotation:
        held = await asyncpg.connect(database.url(first[0]), password=first[1])  # a session that never ends
        try:
            return await rotate_login(config, wait=1.0, say=said.append)
        finally:
            await held.close()

    rotation = run(scenario())
    logins.made.append(rotation.next)
    written = orjson.loads((tmp_path / LOGIN_SECRET).read_text())  # the format it had
    assert not rotation.dropped and written["user"] == rotation.next
    assert _role_exists(superuser, first[0]) and "left in place" in said[-1]


def test_a_new_login_that_fails_the_gateways_checks_is_dropped_and_the_secret_kept(
        database: PgServer, tls_files: TlsFiles, logins: Logins, superuser: Superuser, tmp_path: Path, admin_env):
    first = _administered(logins, superuser)
    superuser.execute(f"REVOKE demo_writer FROM {first[0]}")  # the copy will lack an identity role
    logins.use(*first)
    before = (tmp_path / LOGIN_SECRET).read_text()
    config = parse_config(tomllib.loads(_rotation_config(database, tls_files, tmp_path)))
    with pytest.raises(RotationFailed, match='is not a member of identity role "demo_writer"') as raised:
        run(rotate_login(config, wait=1.0, say=lambda line: None))
    created = re.search(r"new login (\S+) ", str(raised.value)).group(1)
    assert not _role_exists(superuser, created)
    assert (tmp_path / LOGIN_SECRET).read_text() == before


@pytest.mark.parametrize(("edit", "message"), [
    (lambda text: text.split("[credentials]")[0], r"needs the admin login: \[credentials\] admin_url"),
    (lambda text: text.replace("login_secret", "password_secret"), r"\[database\] login_secret"),
    (lambda text: text.split("\n", 1)[1], "the login secret must be a file: set secrets_dir"),
])
def test_rotation_needs_an_admin_login_and_a_login_secret_file(database, tls_files, tmp_path, edit, message):
    config = parse_config(tomllib.loads(edit(_rotation_config(database, tls_files, tmp_path))))
    with pytest.raises(ConfigError, match=message):
        run(rotate_login(config, wait=1.0, say=lambda line: None))

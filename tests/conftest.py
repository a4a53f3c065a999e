"""Shared fixtures: a real PostgreSQL with TLS (CA, server and client certificates made at
test time), SCRAM passwords, a NOINHERIT login role and identity roles; the demo schema;
and the gateway running as a real `gateway serve` process on a loopback port.

`TEST_DATABASE_URL` (a superuser URL) points the suite at an existing server instead; tests
that need this suite's own TLS setup are then skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import asyncpg
import httpx
import pytest
import trustme

from gateway.auth import mint_hs256_token
from gateway.config import IssuerConfig
from gateway.embedded import LocalPostgres, ServerTls, find_bindir, free_loopback_port
from oidc_provider import OidcProvider

REPO = Path(__file__).resolve().parent.parent
DEMO_SQL = REPO / "gateway" / "dev_assets" / "demo.sql"
TEST_SQL = Path(__file__).resolve().parent / "schema.sql"
TEST_DATABASE = "gw_test"
LOGIN_ROLE = "gateway_login"
MTLS_ROLE = "gateway_mtls"
# The credentials admin login: CREATEROLE, no superuser, and (PostgreSQL 16+) ADMIN OPTION on
# the identity roles it makes temporary logins members of, without their privileges.
ADMIN_ROLE = "gateway_admin"
DEV_ISSUER = IssuerConfig(name="dev", issuer="edge-sql-gateway-test", audience="edge-sql-gateway",
                          hs256_secret="TEST_JWT_SECRET")


def run(coroutine: Any) -> Any:
    return asyncio.run(coroutine)


# ---------------------------------------------------------------------------- certificates


@dataclass(frozen=True)
class TlsFiles:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path  # a CA that signed nothing the server presents


@pytest.fixture(scope="session")
def suite_ca() -> trustme.CA:
    """The CA the suite's PostgreSQL trusts for client certificates (tests issue new ones)."""
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory, suite_ca: trustme.CA) -> TlsFiles:
    folder = tmp_path_factory.mktemp("tls")
    ca = suite_ca
    server = ca.issue_cert("localhost")  # a name, not 127.0.0.1: verify-full by IP must fail
    client = ca.issue_cert("gateway-client", common_name=MTLS_ROLE)
    files = TlsFiles(*(folder / name for name in ("ca.pem", "server.pem", "server.key", "client.pem",
                                                    "client.key", "other-ca.pem")))
    ca.cert_pem.write_to_path(str(files.ca))
    server.cert_chain_pems[0].write_to_path(str(files.server_cert))
    server.private_key_pem.write_to_path(str(files.server_key))
    client.cert_chain_pems[0].write_to_path(str(files.client_cert))
    client.private_key_pem.write_to_path(str(files.client_key))
    trustme.CA().cert_pem.write_to_path(str(files.other_ca))
    for path in (files.server_key, files.client_key):
        path.chmod(0o600)
    return files


# ---------------------------------------------------------------------------- the database server


@dataclass
class PgServer:
    host: str
    port: int
    superuser: str
    superuser_password: str
    local: LocalPostgres | None  # None when TEST_DATABASE_URL points elsewhere
    login_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(16))

    def url(self, user: str, database: str = TEST_DATABASE, host: str | None = None) -> str:
        return f"postgresql://{user}@{host or self.host}:{self.port}/{database}"

    async def connect(self, database: str = TEST_DATABASE) -> asyncpg.Connection:
        return await asyncpg.connect(self.url(self.superuser, database), password=self.superuser_password,
                                     ssl="prefer")

    def execute(self, sql: str) -> None:
        """Run `sql` as the superuser in the test database, from synchronous code (a module's
        fixture creating and dropping its objects)."""

        async def execute() -> None:
            connection = await self.connect()
            try:
                await connection.execute(sql)
            finally:
                await connection.close()

        run(execute())


@pytest.fixture(scope="session")
def pg_server(tls_files: TlsFiles) -> Iterator[PgServer]:
    external = os.environ.get("TEST_DATABASE_URL")
    if external:
        parts = urlparse(external)
        yield PgServer(parts.hostname or "127.0.0.1", parts.port or 5432, parts.username or "postgres",
                       parts.password or "", None)
        return
    with local_pg_server(tls_files) as server:
        yield server


@contextmanager
def local_pg_server(tls_files: TlsFiles) -> Iterator[PgServer]:
    """A PostgreSQL server of its own on loopback (TLS, SCRAM, the suite's client rules),
    removed afterwards: the suite's, or one a test may stop, kill and freeze at will."""
    # A short private path: the server account must be able to reach it.
    datadir = Path(tempfile.mkdtemp(prefix="gw-pg-")) / "data"
    cluster = LocalPostgres(datadir, find_bindir(need_tls=True))
    password = secrets.token_urlsafe(16)
    cluster.initdb("postgres", password)
    cluster.configure(
        free_loopback_port(),
        hba_lines=[
            f"hostssl all {MTLS_ROLE} 127.0.0.1/32 cert clientcert=verify-full",
            "host all all 127.0.0.1/32 scram-sha-256",
        ],
        tls=ServerTls(tls_files.server_cert, tls_files.server_key, tls_files.ca),
    )
    cluster.start()
    assert cluster.port is not None
    try:
        yield PgServer("127.0.0.1", cluster.port, "postgres", password, cluster)
    finally:
        cluster.stop(mode="immediate")
        shutil.rmtree(datadir.parent, ignore_errors=True)


async def create_test_database(server: PgServer) -> None:
    admin = await server.connect("postgres")
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {TEST_DATABASE} WITH (FORCE)")
        for role in (LOGIN_ROLE, MTLS_ROLE, ADMIN_ROLE, "inheriting_login", "demo_reader", "demo_writer"):
            await admin.execute(f"DROP ROLE IF EXISTS {role}")
        await admin.execute(f"CREATE DATABASE {TEST_DATABASE}")
    finally:
        await admin.close()
    database = await server.connect()
    try:
        await database.execute(DEMO_SQL.read_text())
        await database.execute(TEST_SQL.read_text())
        await database.execute(
            f"CREATE ROLE {LOGIN_ROLE} LOGIN NOINHERIT PASSWORD '{server.login_password}';"
            f"CREATE ROLE {MTLS_ROLE} LOGIN NOINHERIT;"
            f"GRANT demo_reader, demo_writer TO {LOGIN_ROLE}, {MTLS_ROLE};"
            f"CREATE ROLE {ADMIN_ROLE} LOGIN CREATEROLE PASSWORD '{server.admin_password}';"
            f"GRANT demo_reader, demo_writer TO {ADMIN_ROLE} WITH ADMIN TRUE, INHERIT FALSE, SET FALSE;"
        )
    finally:
        await database.close()


@pytest.fixture(scope="session")
def database(pg_server: PgServer) -> PgServer:
    """The test database with the demo schema, roles and logins."""
    run(create_test_database(pg_server))
    return pg_server


@pytest.fixture
def needs_local_server(pg_server: PgServer) -> LocalPostgres:
    if pg_server.local is None:
        pytest.skip("needs the suite's own PostgreSQL (TEST_DATABASE_URL is set)")
    return pg_server.local


# ---------------------------------------------------------------------------- tokens


@pytest.fixture(scope="session")
def jwt_secret() -> str:
    return secrets.token_urlsafe(32)


# Every token minted and every gateway log of the session, for the check that no gateway
# output ever contains a token or a secret (tests/test_zz_no_secrets_in_output.py).
MINTED_TOKENS: list[str] = []
GATEWAY_LOGS: list[Path] = []
ISSUED_PASSWORDS: list[str] = []  # of the temporary database logins the broker issued


@pytest.fixture(scope="session")
def mint(jwt_secret: str) -> Callable[..., str]:
    """`mint("orders-worker", tenant="acme")` -> a valid token from the test issuer."""

    def mint_token(subject: str, ttl: float = 600, **claims: Any) -> str:
        token = mint_hs256_token(DEV_ISSUER, jwt_secret, subject, ttl, claims)
        MINTED_TOKENS.append(token)
        return token

    return mint_token


# ---------------------------------------------------------------------------- the gateway process

BASE_CONFIG = """
name = "test-gateway"

[server]
max_body_bytes = {max_body_bytes}

[database]
url = "{url}"
password_secret = "TEST_DB_PASSWORD"
sslmode = "verify-full"
sslrootcert = "{ca}"
pool_min = 1
pool_max = {pool_max}
acquire_timeout = "{acquire_timeout}"
lock_timeout = "{lock_timeout}"

[audit]
sink = "stdout"

[[issuers]]
name = "dev"
issuer = "edge-sql-gateway-test"
audience = "edge-sql-gateway"
hs256_secret = "TEST_JWT_SECRET"
leeway = "5s"

[[identities]]
name = "writer"
issuer = "dev"
match = {{ sub = "writer" }}
role = "demo_writer"
max_rows = 300000
max_response_bytes = 100_000_000
statement_timeout = "{statement_timeout}"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders", "public.customers", "public.ledger", "public.moods"]

  [[identities.rules]]
  allow = ["insert", "update"]
  tables = ["public.orders", "public.ledger"]

[[identities]]
name = "reader"
issuer = "dev"
match = {{ sub = "reader" }}
role = "demo_reader"
read_only = true

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.*"]

[[identities]]
name = "limited"
issuer = "dev"
match = {{ sub = "limited" }}
role = "demo_reader"
max_rows = 5
max_response_bytes = 2000
rate = "3/s"
concurrency = 1

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders", "public.customers"]

[[identities]]
name = "overreach"
issuer = "dev"
match = {{ sub = "overreach" }}
role = "demo_reader"

  [[identities.rules]]
  allow = ["select", "insert", "update", "delete"]
  tables = ["public.*"]
"""


ADMIN_SECRET = "TEST_ADMIN_PASSWORD"


def credentials_section(server: PgServer, user: str = ADMIN_ROLE, **settings: str) -> str:
    """A [credentials] section: `user` as the admin login (its password in ADMIN_SECRET), and
    clients sent to localhost, the name the server's certificate holds; string `settings`."""
    lines = [
        "[credentials]",
        f'admin_url = "{server.url(user, host="localhost")}"',
        f'admin_password_secret = "{ADMIN_SECRET}"',
        'public_host = "localhost"',
        f"public_port = {server.port}",
        *(f'{key} = "{value}"' for key, value in settings.items()),
    ]
    return "\n" + "\n".join(lines) + "\n"


def stop_process(process: subprocess.Popen, timeout: float) -> None:
    """SIGTERM, and SIGKILL if the process has not exited within `timeout` seconds."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class GatewayProcess:
    url: str
    process: subprocess.Popen
    log_path: Path

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, 10)


def gateway_config_text(server: PgServer, tls: TlsFiles, **overrides: Any) -> str:
    settings = {
        "url": server.url(LOGIN_ROLE, host="localhost"),
        "ca": tls.ca,
        "pool_max": 4,
        "acquire_timeout": "2s",
        "lock_timeout": "2s",
        "statement_timeout": "5s",
        "max_body_bytes": 1_048_576,
        **overrides,
    }
    return BASE_CONFIG.format(**settings)


# The analysis budget (policy.analysis_timeout) is wall-clock time, 100 ms by default, and a
# worker the machine kept from running is answered 503 (retry). The suite runs PostgreSQL,
# gateways and their clients on two cores, where a cheap text can wait that long for a CPU:
# gateways started here get a budget the machine cannot miss, unless the configuration sets
# one (tests/test_analysis_bounds.py tests the default's).
SUITE_ANALYSIS_BUDGET = 'analysis_timeout = "10s"'


def with_suite_analysis_budget(config_text: str) -> str:
    if "analysis_timeout" in config_text:
        return config_text
    if re.search(r"^\[policy\]$", config_text, flags=re.MULTILINE):
        return re.sub(r"^\[policy\]$", f"[policy]\n{SUITE_ANALYSIS_BUDGET}", config_text, count=1,
                      flags=re.MULTILINE)
    return f"{config_text}\n[policy]\n{SUITE_ANALYSIS_BUDGET}\n"


def start_gateway(config_text: str, folder: Path, env: dict[str, str], port: int | None = None,
                  extra_args: tuple[str, ...] = ()) -> GatewayProcess:
    config_path = folder / "gateway.toml"
    config_path.write_text(with_suite_analysis_budget(config_text))
    port = port or free_loopback_port()
    log_path = folder / f"gateway-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "serve", "--config", str(config_path), "--host", "127.0.0.1",
         "--port", str(port), *extra_args],
        stdout=log_path.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, **env},
    )
    gateway = GatewayProcess(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"gateway exited with {process.returncode}:\n{gateway.output()}")
        try:
            if httpx.get(f"{gateway.url}/healthz", timeout=1).status_code == 200:
                return gateway
        except httpx.TransportError:
            time.sleep(0.1)
    gateway.stop()
    raise RuntimeError(f"gateway did not answer within 30s:\n{gateway.output()}")


@pytest.fixture(scope="session")
def gateway_env(database: PgServer, jwt_secret: str) -> dict[str, str]:
    return {"TEST_DB_PASSWORD": database.login_password, "TEST_JWT_SECRET": jwt_secret}


@pytest.fixture(scope="session")
def launch_gateway(database: PgServer, tls_files: TlsFiles, gateway_env: dict[str, str],
                   tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., GatewayProcess]]:
    """Start an extra gateway with configuration overrides; stopped at the end of the session."""
    started: list[GatewayProcess] = []

    def launch(config_text: str | None = None, env: dict[str, str] | None = None, **overrides: Any) -> GatewayProcess:
        text = config_text or gateway_config_text(database, tls_files, **overrides)
        gateway = start_gateway(text, tmp_path_factory.mktemp("gateway"), {**gateway_env, **(env or {})})
        started.append(gateway)
        GATEWAY_LOGS.append(gateway.log_path)
        return gateway

    yield launch
    for gateway in started:
        gateway.stop()


@pytest.fixture(scope="session")
def gateway(launch_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    """The gateway most tests share: TLS verify-full to the database, the test identities."""
    return launch_gateway()


@dataclass
class Api:
    """Calls one gateway as one caller."""

    base: str
    token: str | None
    client: httpx.Client

    def post(self, path: str, body: Any = None, *, content: bytes | None = None,
             headers: dict[str, str] | None = None) -> httpx.Response:
        all_headers = {**self._authorization(), **(headers or {})}
        if content is None:
            return self.client.post(self.base + path, json=body, headers=all_headers)
        return self.client.post(self.base + path, content=content, headers=all_headers)

    def query(self, sql: str, *params: Any, **options: Any) -> httpx.Response:
        return self.post("/v1/query", {"sql": sql, "params": list(params), **options})

    def get(self, path: str) -> httpx.Response:
        return self.client.get(self.base + path, headers=self._authorization())

    def delete(self, path: str) -> httpx.Response:
        return self.client.delete(self.base + path, headers=self._authorization())

    def _authorization(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=60) as client:
        yield client


@pytest.fixture(scope="session")
def api_as(gateway: GatewayProcess, mint: Callable[..., str], http: httpx.Client) -> Callable[..., Api]:
    """`api_as("writer", tenant="acme")` -> an Api calling the shared gateway with that token."""

    def make(subject: str | None, **claims: Any) -> Api:
        return Api(gateway.url, mint(subject, **claims) if subject else None, http)

    return make


@pytest.fixture
def writer(api_as: Callable[..., Api]) -> Api:
    return api_as("writer", tenant="acme")


@pytest.fixture
def reader(api_as: Callable[..., Api]) -> Api:
    return api_as("reader", tenant="acme")


@pytest.fixture(scope="session")
def gateway_config(database: PgServer, tls_files: TlsFiles) -> Callable[..., str]:
    """`gateway_config(EXTRA_TOML, pool_max=1)` -> the test configuration with overrides, and
    extra TOML (more identities) appended; pass it to `launch_gateway(config_text=...)`."""

    def make(extra: str = "", **overrides: Any) -> str:
        return gateway_config_text(database, tls_files, **overrides) + extra

    return make


@pytest.fixture(scope="session")
def call_as(mint: Callable[..., str], http: httpx.Client) -> Callable[..., Api]:
    """`call_as(some_gateway, "writer", tenant="acme")` -> an Api calling that gateway."""

    def make(gateway: GatewayProcess, subject: str, **claims: Any) -> Api:
        return Api(gateway.url, mint(subject, **claims), http)

    return make


# ---------------------------------------------------------------------------- behind the gateway's back


# Slow by itself (ten billion rows to count) and cancellable at any moment: for timeouts
# and cancellation, since pg_sleep is denied by policy.
SLOW_SQL = "select count(*) from generate_series(1, 100000) a, generate_series(1, 100000) b"


class Superuser:
    """A superuser connection for checks behind the gateway (pg_stat_activity, committed rows)
    and for holding locks, usable from synchronous tests: one event loop for its lifetime."""

    def __init__(self, server: PgServer) -> None:
        self._runner = asyncio.Runner()
        self.connection: asyncpg.Connection = self._runner.run(server.connect())

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return self._runner.run(self.connection.fetch(sql, *args))

    def fetchval(self, sql: str, *args: Any) -> Any:
        return self._runner.run(self.connection.fetchval(sql, *args))

    def execute(self, sql: str) -> str:
        return self._runner.run(self.connection.execute(sql))

    def error_of(self, sql: str, *args: Any) -> asyncpg.PostgresError:
        """The error PostgreSQL answers `sql` with over this direct connection: the oracle for
        what the gateway passes on."""
        with pytest.raises(asyncpg.PostgresError) as raised:
            self.fetch(sql, *args)
        return raised.value

    def activity(self, condition: str, *args: Any) -> list[dict[str, Any]]:
        """The rows of pg_stat_activity meeting `condition`, as they are now: inside a
        transaction, pg_stat_activity would keep showing its first snapshot."""
        self.fetch("SELECT pg_catalog.pg_stat_clear_snapshot()")
        return [dict(row) for row in self.fetch(f"SELECT * FROM pg_catalog.pg_stat_activity WHERE {condition}", *args)]

    def backends_running(self, sql: str, *, waiting_on_lock: bool = False) -> list[int]:
        """Pids of the backends running exactly this statement text now."""
        rows = self.activity("query = $1 AND state = 'active'", sql)
        return [row["pid"] for row in rows if not waiting_on_lock or row["wait_event_type"] == "Lock"]

    def close(self) -> None:
        try:
            self._runner.run(self.connection.close(timeout=5))
        finally:
            self._runner.close()


@pytest.fixture
def superuser(database: PgServer) -> Iterator[Superuser]:
    connection = Superuser(database)
    yield connection
    connection.close()


def eventually(condition: Callable[[], Any], what: str, deadline: float = 15.0) -> Any:
    """Poll `condition` until it returns something truthy; fail after a generous deadline.
    For effects that happen asynchronously (a cancelled backend, a released connection)."""
    give_up = time.monotonic() + deadline
    while True:
        result = condition()
        if result:
            return result
        if time.monotonic() > give_up:
            pytest.fail(f"gave up waiting: {what}")
        time.sleep(0.05)


# ---------------------------------------------------------------------------- a gateway with one connection

SOLO_IDENTITIES = """
[[identities]]
name = "inspector"
issuer = "dev"
match = { sub = "inspector" }
role = "demo_writer"
statement_timeout = "7s"
functions = ["current_setting", "pg_backend_pid"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.*"]

[[identities]]
name = "inspector-reader"
issuer = "dev"
match = { sub = "inspector-reader" }
role = "demo_reader"
statement_timeout = "9s"
functions = ["current_setting", "pg_backend_pid"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.*"]

[[identities]]
name = "read-only-writer"
issuer = "dev"
match = { sub = "read-only-writer" }
role = "demo_writer"
read_only = true
functions = ["current_setting"]

  [[identities.rules]]
  allow = ["select", "insert"]
  tables = ["public.ledger"]

[[identities]]
name = "scratch"
issuer = "dev"
match = { sub = "scratch" }
role = "demo_writer"
functions = ["pg_backend_pid"]

  [[identities.rules]]
  allow = ["ddl", "select", "insert"]
  tables = ["pg_temp.*"]

[[identities]]
name = "bounded"
issuer = "dev"
match = { sub = "bounded" }
role = "demo_reader"
max_rows = 12345
max_response_bytes = 1_000_000

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

[[identities]]
name = "capped"
issuer = "dev"
match = { sub = "capped" }
role = "demo_reader"
max_rows = 5
max_response_bytes = 2000

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders", "public.customers"]
"""


@pytest.fixture(scope="session")
def solo_gateway(launch_gateway: Callable[..., GatewayProcess], gateway_config: Callable[..., str]) -> GatewayProcess:
    """A gateway with ONE database connection, so consecutive requests share a backend, and
    identities that may look at their own session (`current_setting`, `pg_backend_pid`),
    create temporary tables, or meet result limits without a rate limit ("capped" has the
    "limited" identity's limits; "bounded" cuts a result after its first batch). The
    writer's statements may run for a minute: cancelling them is the client's doing."""
    return launch_gateway(config_text=gateway_config(SOLO_IDENTITIES, pool_max=1, statement_timeout="60s"))


@pytest.fixture(scope="session")
def solo_as(solo_gateway: GatewayProcess, call_as: Callable[..., Api]) -> Callable[..., Api]:
    """`solo_as("inspector", tenant="acme")` -> an Api calling the one-connection gateway."""

    def make(subject: str, **claims: Any) -> Api:
        return call_as(solo_gateway, subject, **claims)

    return make


# ---------------------------------------------------------------------------- an OIDC provider


@pytest.fixture
def oidc_provider() -> Iterator[OidcProvider]:
    """A loopback OIDC provider for one test, not started yet: add issuers, then `start()` it
    (or leave it down, as an issuer that cannot be reached). Stopped after the test."""
    provider = OidcProvider()
    yield provider
    provider.stop()


@pytest.fixture(scope="session")
def attacker() -> Iterator[OidcProvider]:
    """The attacker's own key server on loopback, with a key of its own (issuer "attacker"):
    tokens point at it, and it must never be asked for anything, all session long."""
    server = OidcProvider()
    server.add_issuer("attacker", "ES256")
    yield server.start()
    server.stop()


# ---------------------------------------------------------------------------- Node.js packages

NODE_DIR = REPO / "tests" / "node"


@pytest.fixture(scope="session")
def node_packages() -> Path:
    """tests/node with its npm packages installed (`npm ci --prefix tests/node`, which the
    README's test command runs). Without them the Node tests are skipped, except in CI (`CI`
    set), where a missing install is a failure."""
    if not (NODE_DIR / "node_modules").is_dir():
        message = "tests/node/node_modules is missing: run `npm ci --prefix tests/node`"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return NODE_DIR


@pytest.fixture(scope="session")
def node_script(node_packages: Path) -> Callable[..., Any]:
    """`node_script("driver.mjs", GATEWAY_TOKEN=...)` -> what the script printed, as JSON."""

    def run_script(script: str, timeout: float = 30, **env: str) -> Any:
        result = subprocess.run(["node", str(node_packages / script)], cwd=node_packages, env={**os.environ, **env},
                                capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{script} exited with {result.returncode}:\n{result.stderr}"
        return json.loads(result.stdout)

    return run_script


# ---------------------------------------------------------------------------- Redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


@dataclass
class RedisServer:
    """A real `redis-server` on a loopback port, persisting nothing, in a folder of its own;
    stopped and started again on the same port at will (an outage)."""

    folder: Path
    port: int = field(default_factory=free_loopback_port)
    password: str | None = None
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        auth = ("--requirepass", self.password) if self.password else ()
        self.process = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.folder), *auth],
            stdout=(self.folder / "redis.log").open("ab"), stderr=subprocess.STDOUT,
        )
        eventually(self._answers, f"redis-server on port {self.port} to answer", deadline=10)
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(f"redis-server exited:\n{(self.folder / 'redis.log').read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as connection:
                connection.sendall(b"PING\r\n")
                return connection.recv(64).startswith((b"+PONG", b"-NOAUTH"))
        except OSError:
            return False

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process, 5)


@pytest.fixture
def start_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., RedisServer]]:
    """`start_redis(password=None)` -> a running redis-server, stopped after the test."""
    started: list[RedisServer] = []

    def start(password: str | None = None) -> RedisServer:
        server = RedisServer(tmp_path_factory.mktemp("redis"), password=password)
        started.append(server)
        return server.start()

    yield start
    for server in started:
        server.stop()


@pytest.fixture(scope="module")
def module_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """One redis-server for a module's gateways."""
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()

"""The gateway behind a real PgBouncer 1.18 in transaction pooling mode (`[database] pooler =
"pgbouncer"`), TLS on both hops: the API's core cases through it, no session state passing
from one request to the next on a server session, more concurrent requests than PgBouncer has
server connections without a "prepared statement does not exist", and a gateway told nothing of
the pooler refusing to start.
"""

from __future__ import annotations

import asyncio
import re
import ssl
import tomllib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import asyncpg
import pytest
import trustme
from pgbouncer_server import PgBouncer, scram_verifiers, start_pgbouncer
from test_api_streaming import NDJSON, md5, ndjson_lines, stream
from test_api_transactions import batch, ledger_has, only_row, rows
from test_neon_sql import neon

from conftest import (
    ADMIN_ROLE,
    ADMIN_SECRET,
    LOGIN_ROLE,
    SLOW_SQL,
    SOLO_IDENTITIES,
    TEST_DATABASE,
    Api,
    GatewayProcess,
    PgServer,
    Superuser,
    TlsFiles,
    credentials_section,
    eventually,
    run,
)
from gateway.config import ConfigError, GatewayConfig, parse_config
from gateway.db.catalog import CatalogKeeper
from gateway.db.pool import Database, PoolerError, check_pooler
from gateway.server import preflight

SERVER_CONNECTIONS = 2  # PgBouncer's pool: fewer than the gateway's connections and requests
GATEWAY_CONNECTIONS = 8
LISTENERS_SQL = "select count(*) from pg_stat_activity where application_name = 'gw catalog listener'"

IDENTITIES = """
[[identities]]
name = "hasty"
issuer = "dev"
match = { sub = "hasty" }
role = "demo_reader"
statement_timeout = "300ms"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

[[identities]]
name = "tempo"
issuer = "dev"
match = { sub = "tempo" }
role = "demo_writer"
functions = ["pg_backend_pid", "to_regclass"]

  [[identities.rules]]
  allow = ["ddl", "select", "insert"]
  tables = ["pg_temp.*"]
"""
# A view that leaves a session setting behind, as a trigger, rule or default can: PgBouncer
# does not track extra_float_digits, so only the gateway's reset keeps it from the next client.
LEAKY_VIEW = "pgb_leaky_view"


@pytest.fixture(scope="module")
def bouncer(database: PgServer, tls_files: TlsFiles, suite_ca: trustme.CA) -> Iterator[PgBouncer]:
    async def verifiers() -> str:
        superuser = await database.connect()
        try:
            return await scram_verifiers(superuser, [LOGIN_ROLE])
        finally:
            await superuser.close()

    bouncer = start_pgbouncer(
        server_port=database.port,
        database=TEST_DATABASE,
        ca=suite_ca,
        server_ca=tls_files.ca,
        auth_lines=run(verifiers()),
        pool_size=SERVER_CONNECTIONS,
    )
    yield bouncer
    bouncer.stop()


@pytest.fixture(scope="module")
def leaky_view(database: PgServer) -> Iterator[None]:
    database.execute(
        f"CREATE VIEW public.{LEAKY_VIEW} AS SELECT pg_catalog.set_config('extra_float_digits', '-15', false) AS d;"
        f"GRANT SELECT ON public.{LEAKY_VIEW} TO demo_reader, demo_writer"
    )
    yield
    database.execute(f"DROP VIEW public.{LEAKY_VIEW}")


def bounced_config(gateway_config: Callable[..., str], bouncer: PgBouncer, extra: str = "", **settings: str) -> str:
    """The suite's gateway configuration with its database URL at PgBouncer (whose certificate
    the suite's CA signed, as PostgreSQL's) and `settings` added to [database]."""
    text = gateway_config(SOLO_IDENTITIES + IDENTITIES + extra, url=bouncer.url(LOGIN_ROLE, TEST_DATABASE),
                          pool_max=GATEWAY_CONNECTIONS, acquire_timeout="10s", statement_timeout="5s")
    lines = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    return text.replace("[database]\n", f"[database]\n{lines}", 1)


@pytest.fixture(scope="module")
def bounced(bouncer: PgBouncer, leaky_view: None, launch_gateway: Callable[..., GatewayProcess],
            gateway_config: Callable[..., str]) -> Iterator[GatewayProcess]:
    gateway = launch_gateway(config_text=bounced_config(gateway_config, bouncer, pooler="pgbouncer"))
    yield gateway
    gateway.stop()  # before its PgBouncer


@pytest.fixture(scope="module")
def bounced_as(bounced: GatewayProcess, call_as: Callable[..., Api]) -> Callable[..., Api]:
    def make(subject: str, **claims: object) -> Api:
        return call_as(bounced, subject, **claims)

    return make


# ---------------------------------------------------------------------------- the API through PgBouncer


def test_a_query_answers_through_pgbouncer(bounced_as):
    response = bounced_as("writer", tenant="acme").query("select $1::int + 1 as n, $2::text as t", "41", "x")
    assert rows(response) == [{"n": 42, "t": "x"}]


def test_a_long_result_streams_as_ndjson(bounced_as):
    response, body = stream(bounced_as("writer", tenant="acme"),
                            "select g, md5(g::text) as h from generate_series(1, 30000) g", ndjson=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(NDJSON)
    lines = ndjson_lines(body)
    assert len(lines) == 30002
    assert lines[1] == {"g": 1, "h": md5(1)} and lines[-2] == {"g": 30000, "h": md5(30000)}
    assert lines[-1]["rowCount"] == 30000


def test_a_batch_commits_together(bounced_as, superuser: Superuser):
    first, second = f"pgb-batch-{uuid.uuid4()}", f"pgb-batch-{uuid.uuid4()}"
    response = batch(bounced_as("writer", tenant="acme"), ("insert into ledger (note) values ($1)", first),
                     ("select count(*) as n from ledger where note = $1", first),
                     ("insert into ledger (note) values ($1)", second))
    assert response.status_code == 200, response.text
    assert response.json()["results"][1]["rows"] == [{"n": "1"}]
    assert ledger_has(superuser, first) and ledger_has(superuser, second)


def test_a_batch_rolls_back_when_a_statement_fails(bounced_as, superuser: Superuser):
    note = f"pgb-rollback-{uuid.uuid4()}"
    response = batch(bounced_as("writer", tenant="acme"), ("insert into ledger (note) values ($1)", note),
                     ("select 1 / 0 as boom",))
    assert response.status_code == 400
    assert response.json()["error"]["sqlstate"] == "22012"
    assert not ledger_has(superuser, note)


def test_sql_fields_carry_the_row_description(bounced_as, superuser: Superuser):
    response = neon(bounced_as("writer", tenant="acme"), {"query": "select id, 1::int8 as n from orders where id = 1"})
    assert response.status_code == 200, response.text
    table = int(superuser.fetchval("select 'public.orders'::regclass::oid"))
    assert response.json()["fields"] == [
        {"name": "id", "dataTypeID": 20, "tableID": table, "columnID": 1, "dataTypeSize": 8, "dataTypeModifier": -1,
         "format": "text"},
        {"name": "n", "dataTypeID": 20, "tableID": 0, "columnID": 0, "dataTypeSize": 8, "dataTypeModifier": -1,
         "format": "text"},
    ]  # fmt: skip
    assert response.json()["rows"] == [["1", "1"]]


def test_errors_keep_their_codes(bounced_as):
    writer = bounced_as("writer", tenant="acme")
    unknown = writer.query("select nosuchcolumn from orders")
    assert (unknown.status_code, unknown.json()["error"]["sqlstate"]) == (400, "42703")
    parameter = writer.query("select $1::int4 as n", "x")
    assert (parameter.status_code, parameter.json()["error"]["code"]) == (400, "bad_request")
    assert parameter.json()["error"]["message"].startswith("parameter $1:")
    assert rows(writer.query("select 1 as ok")) == [{"ok": 1}]


def test_the_statement_timeout_holds(bounced_as):
    response = bounced_as("hasty").query(SLOW_SQL)
    assert (response.status_code, response.json()["error"]["code"]) == (504, "statement_timeout")


def test_row_level_security_sees_the_verified_tenant(bounced_as):
    sql = "select id from orders where id <= 3 order by id"
    assert rows(bounced_as("writer", tenant="acme").query(sql)) == [{"id": "1"}, {"id": "2"}]
    assert rows(bounced_as("writer", tenant="globex").query(sql)) == [{"id": "3"}]


# ---------------------------------------------------------------------------- nothing left on a server session

SETTINGS_SQL = (
    "select pg_backend_pid() as pid, current_user as role, current_setting('statement_timeout') as timeout, "
    "current_setting('request.jwt.claims', true)::jsonb ->> 'tenant' as tenant, "
    "current_setting('extra_float_digits') as digits"
)


def settings_on(api: Api, pid: int) -> dict:
    """The settings a request sees on the server session `pid` (PgBouncer hands out the session
    used last first: a few tries reach it)."""

    def probe() -> dict | None:
        row = only_row(api.query(SETTINGS_SQL))
        return row if row["pid"] == pid else None

    return eventually(probe, f"a request on server session {pid}", deadline=5)


def test_settings_and_claims_do_not_pass_to_the_next_request(bounced_as):
    leaked = only_row(bounced_as("inspector", tenant="acme").query(
        f"select pg_backend_pid() as pid, d from {LEAKY_VIEW}"))
    row = settings_on(bounced_as("inspector-reader"), leaked["pid"])
    assert (row["role"], row["timeout"], row["tenant"], row["digits"]) == ("demo_reader", "9s", None, "1")


def test_a_request_that_fails_leaves_nothing_behind(bounced_as):
    """ROLLBACK, not the reset before COMMIT, undoes what the failed transaction changed."""
    inspector = bounced_as("inspector", tenant="acme")
    # The failing statement names its server session in its error (an integer that is not one).
    failed = batch(inspector, (f"select d from {LEAKY_VIEW}",), ("select (pg_backend_pid()::text || 'x')::int as n",))
    assert failed.status_code == 400, failed.text
    pid = int(re.search(r'"(\d+)x"', failed.json()["error"]["message"]).group(1))
    assert settings_on(inspector, pid)["digits"] == "1"


def test_a_temporary_table_does_not_pass_to_the_next_request(bounced_as):
    tempo = bounced_as("tempo")
    created = batch(tempo, ("create table pg_temp.pgb_rows (n int)",), ("insert into pg_temp.pgb_rows values (1)",),
                    ("select n, pg_backend_pid() as pid from pg_temp.pgb_rows",))
    assert created.status_code == 200, created.text
    pid = created.json()["results"][2]["rows"][0]["pid"]

    def on_that_session() -> dict | None:
        row = only_row(tempo.query("select pg_backend_pid() as pid, to_regclass('pg_temp.pgb_rows')::text as t"))
        return row if row["pid"] == pid else None

    assert eventually(on_that_session, f"a request on server session {pid}", deadline=5)["t"] is None


# ---------------------------------------------------------------------------- concurrency


def test_more_requests_than_server_connections_all_succeed(bounced_as, bounced: GatewayProcess):
    """Each request's statements are prepared inside its own transaction: a statement prepared
    on one server session is never looked for on another."""
    inspector, writer = bounced_as("inspector", tenant="acme"), bounced_as("writer", tenant="acme")

    def one(number: int) -> tuple[int, object]:
        if number % 3 == 0:
            response = batch(writer, (f"select $1::int * {number % 5} as n", str(number)),
                             ("select count(*) as c from orders where id = $1", "1"))
            return response.status_code, response.json()["results"][0]["rows"] if response.is_success else response.text
        response = inspector.query(f"select pg_backend_pid() as pid, $1::int + {number % 7} as n", str(number))
        return response.status_code, response.json()

    with ThreadPoolExecutor(max_workers=GATEWAY_CONNECTIONS) as pool:
        answers = list(pool.map(one, range(96)))
    failures = [answer for answer in answers if answer[0] != 200]
    assert not failures, failures[:3]
    pids = set()
    for number, (_, body) in enumerate(answers):
        if number % 3 == 0:
            assert body == [{"n": number * (number % 5)}]
        else:
            (row,) = body["rows"]
            assert row["n"] == number + number % 7
            pids.add(row["pid"])
    assert len(pids) <= SERVER_CONNECTIONS  # every request went through PgBouncer's pool
    assert "prepared statement" not in bounced.output()


# ---------------------------------------------------------------------------- what the pooler setting decides


def loaded(text: str) -> GatewayConfig:
    return parse_config(tomllib.loads(text))


def test_the_pooler_is_none_unless_set_and_one_of_three():
    database = {"url": "postgresql://db/app"}
    assert parse_config({"name": "g", "database": database}).database.pooler == "none"
    with pytest.raises(ConfigError, match=r"database\.pooler: expected one of 'none', 'session', 'pgbouncer'"):
        parse_config({"name": "g", "database": {**database, "pooler": "transaction"}})


@pytest.fixture
def secrets_in_env(gateway_env: dict[str, str], database: PgServer, monkeypatch: pytest.MonkeyPatch) -> None:
    """The secrets a gateway reads, for the gateway's own code run in this process."""
    for name, value in {**gateway_env, ADMIN_SECRET: database.admin_password}.items():
        monkeypatch.setenv(name, value)


def test_without_the_pooler_setting_the_gateway_refuses_to_start(bouncer, gateway_config, secrets_in_env):
    """What `gateway serve` checks before it listens (`preflight`), here in-process."""
    refusal = run(preflight(loaded(bounced_config(gateway_config, bouncer, pooler="none"))))
    assert refusal is not None and 'refusing to start: the database URL reaches PostgreSQL through a connection ' \
        'pooler or proxy' in refusal and 'set pooler = "pgbouncer"' in refusal
    assert run(preflight(loaded(bounced_config(gateway_config, bouncer, pooler="pgbouncer")))) is None


def test_an_admin_login_through_pgbouncer_is_refused_naming_the_cause(bouncer, database: PgServer, gateway_config,
                                                                     secrets_in_env):
    """The admin login's connection sets its timeouts as startup parameters, which PgBouncer
    refuses: admin_url must reach PostgreSQL itself."""
    admin = credentials_section(database).replace(database.url(ADMIN_ROLE, host="localhost"),
                                                  bouncer.url(ADMIN_ROLE, TEST_DATABASE))
    refusal = run(preflight(loaded(bounced_config(gateway_config, bouncer, admin, pooler="pgbouncer"))))
    assert refusal is not None and "unsupported startup parameter: statement_timeout" in refusal
    assert "admin_url must reach PostgreSQL itself" in refusal


def test_a_session_pooler_is_taken_at_its_word(bouncer, database: PgServer, tls_files: TlsFiles):
    """The start-up check compares process ids: it cannot tell a session pooler from a
    transaction pooler, so `pooler = "session"` skips it, and `"none"` refuses both."""

    async def check(pooler: str) -> None:
        connection = await asyncpg.connect(bouncer.url(LOGIN_ROLE, TEST_DATABASE), password=database.login_password,
                                           ssl=ssl.create_default_context(cafile=str(tls_files.ca)))
        try:
            await check_pooler(connection, pooler)
        finally:
            await connection.close()

    run(check("session"))
    with pytest.raises(PoolerError):
        run(check("none"))


def test_behind_pgbouncer_nothing_listens_through_it(bounced: GatewayProcess):
    assert "catalog notifications: not listening" in bounced.output()


def test_listen_url_listens_on_postgresql_directly(bouncer, database: PgServer, gateway_config, secrets_in_env):
    config = loaded(bounced_config(gateway_config, bouncer, pooler="pgbouncer",
                                   listen_url=database.url(LOGIN_ROLE, host="localhost")))

    async def listeners_before_and_while_keeping() -> tuple[int, int]:
        superuser, pool = await database.connect(), Database(config.database, config.secret_store())
        keeper = CatalogKeeper(pool, config.identity_roles(), lambda _snapshot: None, None, 5.0)
        try:
            before = await superuser.fetchval(LISTENERS_SQL)
            await pool.open()
            await keeper.start()
            for _ in range(100):  # within five seconds
                if keeper.listening:
                    break
                await asyncio.sleep(0.05)
            return before, await superuser.fetchval(LISTENERS_SQL)
        finally:
            await keeper.stop()
            await pool.close()
            await superuser.close()

    before, during = run(listeners_before_and_while_keeping())
    assert during == before + 1

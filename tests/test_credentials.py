"""The credentials broker (issue 12), against the real PostgreSQL and a real `gateway serve`:
temporary logins issued to identities with `[identities.credentials]`, used by psycopg 3 and
asyncpg with `sslmode=verify-full` (the suite's CA), listed, revoked by their own identity,
reaped when expired (their sessions ended) — at start too — and audited.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import psycopg
import pytest

from conftest import (
    ADMIN_ROLE,
    ADMIN_SECRET,
    ISSUED_PASSWORDS,
    Api,
    GatewayProcess,
    PgServer,
    Superuser,
    TlsFiles,
    credentials_section,
    eventually,
    run,
)
from gateway.cli import main
from gateway_client import AsyncGatewayClient, GatewayClient, StaticToken

SCRATCH = "broker_scratch"  # a schema where demo_writer may create tables

IDENTITIES = """
[[identities]]
name = "analyst"
issuer = "dev"
match = { sub = "analyst" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

  [identities.credentials]
  ttl = "10m"
  max_ttl = "1h"
  max_active = 2
  connection_limit = 2

[[identities]]
name = "loader"
issuer = "dev"
match = { sub = "loader" }
role = "demo_writer"

  [[identities.rules]]
  allow = ["select", "insert"]
  tables = ["public.orders"]

  [identities.credentials]
  max_active = 3
"""


@pytest.fixture(scope="module")
def broker_config(gateway_config: Callable[..., str], database: PgServer) -> Callable[..., str]:
    """`broker_config(reap_interval="1h")` -> the test configuration with the broker's
    identities and a [credentials] section with those settings."""

    def make(**settings: str) -> str:
        return gateway_config(IDENTITIES + credentials_section(database, **settings))

    return make


@pytest.fixture(scope="module")
def admin_env(database: PgServer) -> dict[str, str]:
    return {ADMIN_SECRET: database.admin_password}


@pytest.fixture(scope="module")
def broker(launch_gateway, broker_config, admin_env) -> Iterator[GatewayProcess]:
    """A gateway whose reaper runs every 300 ms, so that expiry tests take seconds; stopped
    with the module, its reaper with it."""
    gateway = launch_gateway(config_text=broker_config(reap_interval="300ms"), env=admin_env)
    yield gateway
    gateway.stop()


@pytest.fixture
def as_identity(broker: GatewayProcess, call_as: Callable[..., Api]) -> Callable[[str], Api]:
    return lambda subject: call_as(broker, subject)


@pytest.fixture(scope="module")
def scratch_schema(database: PgServer) -> Iterator[str]:
    database.execute(f"CREATE SCHEMA {SCRATCH}; GRANT USAGE, CREATE ON SCHEMA {SCRATCH} TO demo_writer")
    yield SCRATCH
    database.execute(f"DROP SCHEMA {SCRATCH} CASCADE")


DROP_TEMPORARY_LOGINS = r"""
DO $$
DECLARE login text;
BEGIN
  FOR login IN SELECT rolname FROM pg_catalog.pg_roles WHERE rolname LIKE 'gw\_tmp\_%' LOOP
    PERFORM pg_catalog.pg_terminate_backend(pid, 5000) FROM pg_catalog.pg_stat_activity WHERE usename = login;
    EXECUTE format('DROP OWNED BY %I', login);
    EXECUTE format('DROP ROLE %I', login);
  END LOOP;
END $$
"""


@pytest.fixture(autouse=True)
def no_logins_left(database: PgServer) -> Iterator[None]:
    """Each test starts with no temporary login (max_active counts across tests otherwise)."""
    yield
    database.execute(DROP_TEMPORARY_LOGINS)


# ---------------------------------------------------------------------------- helpers


def issue(api: Api, body: Any = None) -> dict[str, Any]:
    response = api.post("/v1/credentials", body)
    assert response.status_code == 201, response.text
    issued = response.json()
    ISSUED_PASSWORDS.append(issued["password"])
    return issued


def psycopg_session(url: str, tls: TlsFiles) -> psycopg.Connection:
    return psycopg.connect(url, sslrootcert=str(tls.ca), connect_timeout=10, autocommit=True)


def asyncpg_url(url: str, tls: TlsFiles) -> str:
    return f"{url}&sslrootcert={tls.ca}"


def login_refused(url: str, tls: TlsFiles) -> str:
    """PostgreSQL's answer to a new login with `url`, which must be refused."""
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg_session(url, tls).close()
    return str(refused.value)


def session_is_gone(session: psycopg.Connection) -> bool:
    try:
        session.execute("SELECT 1")
    except psycopg.OperationalError:
        return True
    return False


def role_exists(superuser: Superuser, name: str) -> bool:
    return bool(superuser.fetchval("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname = $1", name))


def audit_records(gateway: GatewayProcess, credential: str) -> dict[str, dict[str, Any]]:
    """The gateway's audit records about one temporary login, by kind."""
    records = {}
    for line in gateway.output().splitlines():
        if line.startswith("{") and '"requestId"' in line:
            record = json.loads(line)
            if record.get("credential") == credential:
                records[record["kind"]] = record
    return records


# ---------------------------------------------------------------------------- issuing


def test_psycopg_connects_with_the_issued_url_verifying_the_server(as_identity, tls_files, database):
    issued = issue(as_identity("analyst"), {"ttl": "15m"})
    assert issued["url"].startswith(f"postgresql://{issued['user']}:")
    assert issued["url"].endswith(f"@localhost:{database.port}/gw_test?sslmode=verify-full")
    assert (issued["host"], issued["port"], issued["database"], issued["sslmode"]) == (
        "localhost", database.port, "gw_test", "verify-full")
    with psycopg_session(issued["url"], tls_files) as session:
        user, ssl = session.execute(
            "SELECT current_user, ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()"
        ).fetchone()
    assert (user, ssl) == (issued["user"], True)


def test_asyncpg_connects_with_the_issued_url_verifying_the_server(as_identity, tls_files):
    issued = issue(as_identity("analyst"))

    async def session() -> asyncpg.Record:
        connection = await asyncpg.connect(asyncpg_url(issued["url"], tls_files), timeout=10)
        try:
            return await connection.fetchrow(
                "SELECT current_user AS user, ssl FROM pg_catalog.pg_stat_ssl WHERE pid = pg_catalog.pg_backend_pid()"
            )
        finally:
            await connection.close()

    row = run(session())
    assert (row["user"], row["ssl"]) == (issued["user"], True)


def test_a_login_can_do_what_its_identity_role_may_and_nothing_more(as_identity, tls_files):
    """The analyst runs as demo_reader: it reads customers (beyond its rules: only grants
    bind these sessions), and cannot write orders, read what demo_reader may not, or become
    another role."""
    issued = issue(as_identity("analyst"))
    with psycopg_session(issued["url"], tls_files) as session:
        assert session.execute("SELECT count(*) FROM public.customers").fetchone()[0] > 0
        for refused in (
            "INSERT INTO public.orders (customer_id, total) VALUES (1, 1)",
            "SELECT * FROM public.secrets",
            "SET ROLE demo_writer",
            "CREATE ROLE escalated",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                session.execute(refused)


def test_the_role_is_a_plain_login_valid_until_expires_at_within_its_connection_limit(as_identity, superuser):
    issued = issue(as_identity("analyst"), {"ttl": 300})
    role = superuser.fetch(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolinherit, rolconnlimit, rolvaliduntil, "
        "pg_catalog.pg_has_role(oid, 'demo_reader', 'USAGE') AS reader "
        "FROM pg_catalog.pg_roles WHERE rolname = $1",
        issued["user"],
    )[0]
    assert not any((role["rolsuper"], role["rolcreaterole"], role["rolcreatedb"], role["rolbypassrls"]))
    assert role["rolinherit"] and role["reader"]
    assert role["rolconnlimit"] == 2
    assert role["rolvaliduntil"] == datetime.fromisoformat(issued["expiresAt"])
    assert abs(role["rolvaliduntil"] - datetime.now(UTC) - timedelta(seconds=300)) < timedelta(seconds=30)


def test_a_login_opens_at_most_connection_limit_sessions(as_identity, tls_files):
    issued = issue(as_identity("analyst"))
    with psycopg_session(issued["url"], tls_files), psycopg_session(issued["url"], tls_files):
        assert "too many connections for role" in login_refused(issued["url"], tls_files)


def test_without_a_ttl_the_identity_default_applies(as_identity):
    before = datetime.now(UTC)
    expires_at = datetime.fromisoformat(issue(as_identity("analyst"))["expiresAt"])
    assert timedelta(minutes=10) - timedelta(seconds=30) < expires_at - before < timedelta(minutes=10, seconds=30)


def test_the_password_is_answered_not_to_be_stored(as_identity):
    response = as_identity("analyst").post("/v1/credentials", {})
    assert response.status_code == 201
    assert response.headers["cache-control"] == "no-store"


def test_an_identity_without_credentials_settings_is_refused(as_identity, superuser):
    reader = as_identity("reader")
    for response in (reader.post("/v1/credentials", {}), reader.get("/v1/credentials")):
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "credentials_not_allowed"
    assert not superuser.fetchval("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname LIKE 'gw\\_tmp\\_%'")


def test_a_ttl_over_max_ttl_is_refused_and_max_ttl_itself_is_issued(as_identity, superuser):
    analyst = as_identity("analyst")
    refused = analyst.post("/v1/credentials", {"ttl": "61m"})
    assert refused.status_code == 400
    assert "max_ttl" in refused.json()["error"]["message"]
    assert not superuser.fetchval("SELECT count(*) FROM pg_catalog.pg_roles WHERE rolname LIKE 'gw\\_tmp\\_%'")
    issue(analyst, {"ttl": "1h"})


@pytest.mark.parametrize("ttl", ["soon", 0, -5, True, [1]])
def test_a_ttl_that_is_no_duration_is_a_bad_request(as_identity, ttl):
    response = as_identity("analyst").post("/v1/credentials", {"ttl": ttl})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"


def test_over_max_active_is_429_until_one_is_revoked(as_identity):
    analyst = as_identity("analyst")
    first, _ = issue(analyst), issue(analyst)
    refused = analyst.post("/v1/credentials", {"ttl": "5m"})
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "too_many_credentials"
    assert 500 <= int(refused.headers["retry-after"]) <= 600  # until the first expires (10 minutes)
    assert as_identity("loader").post("/v1/credentials", {}).status_code == 201  # another identity's count
    assert analyst.delete(f"/v1/credentials/{first['user']}").status_code == 204
    issue(analyst)


def test_concurrent_requests_never_exceed_max_active(broker, call_as):
    """Issuing is serialised per identity in PostgreSQL (an advisory lock), so requests racing
    on any number of replicas cannot together pass max_active."""
    import httpx

    token = call_as(broker, "analyst").token

    async def race() -> list[int]:
        async with httpx.AsyncClient(timeout=30) as client:
            answers = await asyncio.gather(
                *(client.post(f"{broker.url}/v1/credentials", json={}, headers={"Authorization": f"Bearer {token}"})
                  for _ in range(6))
            )
        return sorted(answer.status_code for answer in answers)

    assert run(race()) == [201, 201, 429, 429, 429, 429]


# ---------------------------------------------------------------------------- listing and revoking


def test_the_list_holds_the_callers_unexpired_logins_soonest_first(as_identity):
    analyst, loader = as_identity("analyst"), as_identity("loader")
    later, sooner = issue(analyst, {"ttl": "20m"}), issue(analyst, {"ttl": "5m"})
    issue(loader)
    listed = analyst.get("/v1/credentials").json()["credentials"]
    assert listed == [{"user": login["user"], "expiresAt": login["expiresAt"]} for login in (sooner, later)]
    assert len(loader.get("/v1/credentials").json()["credentials"]) == 1


def test_revoking_ends_the_sessions_and_refuses_new_logins(as_identity, tls_files, superuser):
    analyst = as_identity("analyst")
    issued = issue(analyst)
    session = psycopg_session(issued["url"], tls_files)
    try:
        assert analyst.delete(f"/v1/credentials/{issued['user']}").status_code == 204
        assert session_is_gone(session)
    finally:
        session.close()
    assert not role_exists(superuser, issued["user"])
    assert f'password authentication failed for user "{issued["user"]}"' in login_refused(issued["url"], tls_files)
    assert analyst.get("/v1/credentials").json()["credentials"] == []


def test_only_the_identity_a_login_was_issued_to_may_revoke_it(as_identity, tls_files):
    issued = issue(as_identity("analyst"))
    refused = as_identity("loader").delete(f"/v1/credentials/{issued['user']}")
    assert refused.status_code == 404
    assert refused.json()["error"]["code"] == "not_found"
    with psycopg_session(issued["url"], tls_files) as session:
        assert session.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("user", ["gw_tmp_0123456789abcdef", "demo_reader", "gateway_admin"])
def test_revoking_a_login_that_is_none_of_the_callers_is_404(as_identity, superuser, user):
    assert as_identity("analyst").delete(f"/v1/credentials/{user}").status_code == 404
    if user != "gw_tmp_0123456789abcdef":
        assert role_exists(superuser, user)


def test_objects_a_login_made_are_handed_to_the_identity_role_when_it_goes(as_identity, tls_files, scratch_schema,
                                                                          superuser):
    loader = as_identity("loader")
    issued = issue(loader)
    table = f"made_{uuid.uuid4().hex[:8]}"
    with psycopg_session(issued["url"], tls_files) as session:
        session.execute(f"CREATE TABLE {scratch_schema}.{table} (id int)")
    assert loader.delete(f"/v1/credentials/{issued['user']}").status_code == 204
    owner = superuser.fetchval(
        "SELECT tableowner FROM pg_catalog.pg_tables WHERE schemaname = $1 AND tablename = $2", scratch_schema, table
    )
    assert owner == "demo_writer"


# ---------------------------------------------------------------------------- expiry and the reaper


def test_after_expiry_sessions_are_ended_new_logins_refused_and_the_role_dropped(as_identity, tls_files, superuser):
    issued = issue(as_identity("analyst"), {"ttl": "2s"})
    psycopg_connection = psycopg_session(issued["url"], tls_files)

    async def asyncpg_session_after_expiry() -> bool:
        connection = await asyncpg.connect(asyncpg_url(issued["url"], tls_files), timeout=10)
        try:
            await asyncio.sleep(max(0.0, (datetime.fromisoformat(issued["expiresAt"]) - datetime.now(UTC))
                                    .total_seconds()) + 3)
            await connection.fetchval("SELECT 1")
        except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, ConnectionError,
                asyncpg.exceptions.AdminShutdownError):
            return True
        finally:
            connection.terminate()
        return False

    try:
        assert run(asyncpg_session_after_expiry())  # the reaper ended it
        eventually(lambda: session_is_gone(psycopg_connection), "the psycopg session to end")
    finally:
        psycopg_connection.close()
    eventually(lambda: not role_exists(superuser, issued["user"]), "the expired role to be dropped")
    login_refused(issued["url"], tls_files)


def test_issue_revocation_and_expiry_are_audited_without_the_password(broker, as_identity, superuser):
    analyst = as_identity("analyst")
    expiring, revoked = issue(analyst, {"ttl": "1s"}), issue(analyst)
    assert analyst.delete(f"/v1/credentials/{revoked['user']}").status_code == 204
    eventually(lambda: not role_exists(superuser, expiring["user"]), "the expired role to be dropped")
    expired = eventually(lambda: audit_records(broker, expiring["user"]).get("credentials.expire"),
                         "the expiry's audit record")
    assert (expired["endpoint"], expired["identity"], expired["role"]) == ("credentials reaper", "analyst",
                                                                          "demo_reader")
    assert audit_records(broker, expiring["user"])["credentials.issue"]["status"] == 201
    records = audit_records(broker, revoked["user"])
    assert (records["credentials.issue"]["identity"], records["credentials.issue"]["sub"]) == ("analyst", "analyst")
    assert records["credentials.issue"]["reason"] == f"valid until {revoked['expiresAt']}"
    assert records["credentials.revoke"]["status"] == 204
    output = broker.output()
    assert expiring["password"] not in output and revoked["password"] not in output


def test_the_password_never_reaches_the_database_log_in_clear(as_identity, superuser):
    """CREATE ROLE is sent the SCRAM verifier: PostgreSQL stores it as is, and a server
    logging statements logs nothing that logs in."""
    issued = issue(as_identity("analyst"))
    stored = superuser.fetchval("SELECT rolpassword FROM pg_catalog.pg_authid WHERE rolname = $1", issued["user"])
    assert stored.startswith("SCRAM-SHA-256$4096:") and issued["password"] not in stored


def test_the_reaper_touches_only_roles_this_gateway_issued(broker, as_identity, database, superuser):
    """Expired roles that look like temporary logins but lack the name's shape, this
    gateway's marker or any marker outlive a reap that drops a real one. They are made like
    real ones, by the admin login itself, which could drop them."""
    marker = {"issuedBy": "edge-sql-gateway", "gateway": "test-gateway", "identity": "analyst", "role": "demo_reader"}
    ours, others = json.dumps(marker), json.dumps({**marker, "gateway": "another-gateway"})
    lookalikes = {
        "gw_tmp_00000000000000aa": None,  # no marker
        "gw_tmp_00000000000000bb": others,  # another gateway's
        "gw_tmp_short": ours,  # not the name's shape
        "gw_expired_lookalike": ours,  # not the prefix
    }

    async def as_admin(statements: list[str]) -> None:
        admin = await asyncpg.connect(database.url(ADMIN_ROLE), password=database.admin_password, ssl="prefer")
        try:
            for statement in statements:
                await admin.execute(statement)
        finally:
            await admin.close()

    made = []
    for name, comment in lookalikes.items():
        made.append(f"CREATE ROLE {name} LOGIN VALID UNTIL '2000-01-01' IN ROLE demo_reader")
        if comment is not None:
            made.append(f"COMMENT ON ROLE {name} IS '{comment}'")
    run(as_admin(made))
    try:
        issued = issue(as_identity("analyst"), {"ttl": "1s"})
        eventually(lambda: not role_exists(superuser, issued["user"]), "the expired login to be reaped")
        time.sleep(1)  # and a few more passes of the reaper
        assert all(role_exists(superuser, name) for name in lookalikes)
    finally:
        superuser.execute("; ".join(f"DROP ROLE IF EXISTS {name}" for name in lookalikes))


def test_a_login_that_cannot_be_dropped_does_not_hold_up_the_others(broker, as_identity, database, superuser):
    """A login owning a table in another database of the cluster (DROP OWNED reaches only the
    admin's database): it stays, expired, and the reaper drops the others all the same."""
    analyst = as_identity("analyst")
    stuck, other = issue(analyst, {"ttl": "1s"}), issue(analyst, {"ttl": "1s"})

    async def give_a_table_elsewhere() -> None:
        elsewhere = await database.connect("postgres")
        try:
            await elsewhere.execute(f"CREATE TABLE broker_elsewhere (id int); "
                                    f"ALTER TABLE broker_elsewhere OWNER TO {stuck['user']}")
        finally:
            await elsewhere.close()

    async def drop_the_table() -> None:
        elsewhere = await database.connect("postgres")
        try:
            await elsewhere.execute("DROP TABLE broker_elsewhere")
        finally:
            await elsewhere.close()

    run(give_a_table_elsewhere())
    try:
        eventually(lambda: not role_exists(superuser, other["user"]), "the other expired login to be dropped")
        eventually(lambda: f"expired database login {stuck['user']} not dropped" in broker.output(),
                   "the reaper to log the login it could not drop")
        assert role_exists(superuser, stuck["user"])
    finally:
        run(drop_the_table())
    eventually(lambda: not role_exists(superuser, stuck["user"]), "the login to be dropped once it owns nothing")


def test_logins_left_by_a_killed_gateway_are_reaped_at_the_next_start(launch_gateway, broker_config, admin_env,
                                                                    call_as, tls_files, scratch_schema, superuser):
    """A gateway killed outright reaps nothing; its expired login opens no new session (VALID
    UNTIL), and the next gateway to start ends its sessions and drops it — with what it owns,
    here, as owned_objects = "drop" says. (A gateway of another name: the module's gateway
    reaps only its own logins.)"""
    config = broker_config(reap_interval="1h", owned_objects="drop").replace(
        'name = "test-gateway"', 'name = "restarted-gateway"', 1
    )
    killed = launch_gateway(config_text=config, env=admin_env)
    issued = issue(call_as(killed, "loader"), {"ttl": "2s"})
    table = f"left_{uuid.uuid4().hex[:8]}"
    session = psycopg_session(issued["url"], tls_files)
    try:
        session.execute(f"CREATE TABLE {scratch_schema}.{table} (id int)")
        os.kill(killed.process.pid, signal.SIGKILL)
        killed.process.wait(10)
        time.sleep(max(0.0, (datetime.fromisoformat(issued["expiresAt"]) - datetime.now(UTC)).total_seconds()) + 0.5)
        login_refused(issued["url"], tls_files)
        assert role_exists(superuser, issued["user"]) and not session_is_gone(session)
        restarted = launch_gateway(config_text=config, env=admin_env)  # answers once its first reap is done
        restarted.stop()
        assert not role_exists(superuser, issued["user"])
        assert session_is_gone(session)
    finally:
        session.close()
    assert not superuser.fetchval("SELECT to_regclass($1) IS NOT NULL", f"{scratch_schema}.{table}")


# ---------------------------------------------------------------------------- the Python client


def test_the_client_takes_a_url_and_its_expiry(broker, mint, tls_files):
    with GatewayClient(broker.url, StaticToken(mint("analyst"))) as client:
        credential = client.credentials(ttl="15m")
    ISSUED_PASSWORDS.append(credential.password)
    assert credential.expires_at - datetime.now(UTC) > timedelta(minutes=14)
    assert credential.password not in repr(credential)
    with psycopg_session(credential.url, tls_files) as session:
        assert session.execute("SELECT current_user").fetchone() == (credential.user,)


def test_the_async_client_takes_a_url_and_its_expiry(broker, mint, tls_files):
    async def take_and_use() -> tuple[Any, str]:
        async with AsyncGatewayClient(broker.url, StaticToken(mint("analyst"))) as client:
            credential = await client.credentials()
        connection = await asyncpg.connect(asyncpg_url(credential.url, tls_files), timeout=10)
        try:
            return credential, await connection.fetchval("SELECT current_user")
        finally:
            await connection.close()

    credential, user = run(take_and_use())
    ISSUED_PASSWORDS.append(credential.password)
    assert user == credential.user
    assert credential.expires_at - datetime.now(UTC) > timedelta(minutes=9)


# ---------------------------------------------------------------------------- gateway check --database


CHECKED_IDENTITY = """
[[identities]]
name = "auditor"
issuer = "dev"
match = { sub = "auditor" }
role = "broker_auditor"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

  [identities.credentials]
"""


@pytest.fixture
def auditor_role(database: PgServer) -> Iterator[str]:
    """A role that reads customers as well as orders, which is all its identity's rules allow."""
    database.execute("CREATE ROLE broker_auditor NOLOGIN; GRANT USAGE ON SCHEMA public TO broker_auditor;"
                     "GRANT SELECT ON public.orders, public.customers TO broker_auditor")
    yield "broker_auditor"
    database.execute("DROP OWNED BY broker_auditor; DROP ROLE broker_auditor")


def test_check_warns_when_a_role_of_an_identity_with_credentials_holds_more(
    gateway_config, database, auditor_role, tmp_path: Path, capsys, monkeypatch
):
    config = tmp_path / "gateway.toml"
    config.write_text(gateway_config(CHECKED_IDENTITY + credentials_section(database)))
    monkeypatch.setenv("TEST_DB_PASSWORD", database.login_password)
    assert main(["check", "--config", str(config), "--identity", "auditor", "--sql", "select 1", "--database"]) == 1
    captured = capsys.readouterr()
    assert json.loads(captured.out)["roles"][0]["credentials"] == ["auditor"]
    assert "warning: role broker_auditor holds more than the rules of its identities (auditor) allow" in captured.err
    assert "identities auditor may take database logins of this role" in captured.err


def test_check_does_not_warn_of_a_role_no_identity_with_credentials_runs_as(
    gateway_config, database, auditor_role, tmp_path: Path, capsys, monkeypatch
):
    config = tmp_path / "gateway.toml"
    without = CHECKED_IDENTITY.replace("  [identities.credentials]\n", "")
    config.write_text(gateway_config(without + credentials_section(database)))
    monkeypatch.setenv("TEST_DB_PASSWORD", database.login_password)
    assert main(["check", "--config", str(config), "--identity", "auditor", "--sql", "select 1", "--database"]) == 1
    assert "warning" not in capsys.readouterr().err

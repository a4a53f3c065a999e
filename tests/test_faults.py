"""Faults (issue 10): a database that freezes, restarts, has its backends terminated or
killed; a gateway told to stop with requests open; failures nobody foresaw. Every fault is
real — PostgreSQL's processes stopped (SIGSTOP), killed, terminated or restarted under a real
`gateway serve` — and those that would disturb other tests hit a PostgreSQL of this module's
own. Bounds on time are the ones the issue sets (a deadline, a grace period), with room for
a loaded machine.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import orjson
import pytest

from conftest import (
    LOGIN_ROLE,
    SLOW_SQL,
    SOLO_IDENTITIES,
    GatewayProcess,
    PgServer,
    Superuser,
    TlsFiles,
    create_test_database,
    eventually,
    gateway_config_text,
    local_pg_server,
    run,
)
from gateway.embedded import LocalPostgres

NDJSON = "application/x-ndjson"
SLACK = 2.0  # seconds a loaded machine may add to any bound below
HUNG_AFTER = 30.0  # a request unanswered this long has hung

# A unique key checked at COMMIT: a COMMIT that waits for another transaction's row.
DEFERRED_NOTES = """
CREATE TABLE public.deferred_notes (note text UNIQUE DEFERRABLE INITIALLY DEFERRED);
GRANT INSERT ON public.deferred_notes TO demo_writer;
"""
COMMITTER = """
[[identities]]
name = "committer"
issuer = "dev"
match = {{ sub = "committer" }}
role = "demo_writer"
statement_timeout = "{statement_timeout}"

  [[identities.rules]]
  allow = ["insert"]
  tables = ["public.deferred_notes"]
"""


# ---------------------------------------------------------------------------- a PostgreSQL to fault


@pytest.fixture(scope="module")
def own_server(tls_files: TlsFiles) -> Iterator[PgServer]:
    """A PostgreSQL of this module's own, set up as the suite's, to stop, kill and freeze."""
    if os.environ.get("TEST_DATABASE_URL"):
        pytest.skip("needs PostgreSQL servers of its own (TEST_DATABASE_URL is set)")
    with local_pg_server(tls_files) as server:
        run(create_test_database(server))
        admin(server, DEFERRED_NOTES)
        yield server


def local(server: PgServer) -> LocalPostgres:
    assert server.local is not None
    return server.local


def admin(server: PgServer, sql: str, *args: Any) -> list:
    """`sql` as the superuser on a connection of its own (the server may have restarted
    since the last one): its rows, or none for several statements without arguments."""

    async def fetch() -> list:
        connection = await server.connect()
        try:
            if args or ";" not in sql.strip().rstrip(";"):
                return await connection.fetch(sql, *args)
            await connection.execute(sql)
            return []
        finally:
            await connection.close()

    return asyncio.run(fetch())


def with_settings(config_text: str, table: str, **settings: str) -> str:
    """The configuration with settings added to one of its tables."""
    lines = "".join(f'{key} = "{value}"\n' for key, value in settings.items())
    return config_text.replace(f"[{table}]\n", f"[{table}]\n{lines}", 1)


@pytest.fixture(scope="module")
def launch_on_own(own_server: PgServer, tls_files: TlsFiles,
                  launch_gateway: Callable[..., GatewayProcess]) -> Iterator[Callable[..., GatewayProcess]]:
    """`launch_on_own(settings={"database": {...}}, pool_min=6, extra=TOML, **overrides)` -> a
    gateway on the module's server; stopped with the module, before the server is."""
    launched: list[GatewayProcess] = []

    def launch(*, settings: dict[str, dict[str, str]] | None = None, pool_min: int = 1, extra: str = "",
               **overrides: Any) -> GatewayProcess:
        text = gateway_config_text(own_server, tls_files, **overrides)
        text = text.replace("pool_min = 1\n", f"pool_min = {pool_min}\n")
        # The writer's requests may take the whole pool (no share of its own): the faults here
        # are the database's, not an identity's.
        writer = 'match = { sub = "writer" }\n'
        text = text.replace(writer, f"{writer}max_connections = 1000\n")
        for table, values in (settings or {}).items():
            text = with_settings(text, table, **values)
        gateway = launch_gateway(config_text=text + extra,
                                 env={"TEST_DB_PASSWORD": own_server.login_password})
        launched.append(gateway)
        return gateway

    yield launch
    for gateway in launched:
        gateway.stop()


def children(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == parent:
                found.append(int(stat.parent.name))
    return found


@contextmanager
def frozen(server: LocalPostgres) -> Iterator[None]:
    """Every process of the server stopped (SIGSTOP): its connections stay open and nothing
    answers, not even its own statement_timeout. The postmaster first, so that it starts no
    process after the others are listed; all continued (SIGCONT) however the block ends."""
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    stopped = [postmaster]
    os.kill(postmaster, signal.SIGSTOP)
    try:
        for pid in children(postmaster):
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


# ---------------------------------------------------------------------------- calling the gateway


@dataclass
class Answer:
    status: int | None  # None: the client gave up waiting
    seconds: float
    body: Any = None
    retry_after: str | None = None


def ask(gateway: GatewayProcess, token: str, sql: str, *params: Any, timeout: float = HUNG_AFTER,
        request_id: str | None = None) -> Answer:
    """One `/v1/query` on a client of its own, timed."""
    headers = {"Authorization": f"Bearer {token}"}
    if request_id:
        headers["X-Request-Id"] = request_id
    started = time.monotonic()
    with httpx.Client(timeout=timeout) as client:
        try:
            response = client.post(gateway.url + "/v1/query", json={"sql": sql, "params": list(params)},
                                   headers=headers)
        except httpx.TimeoutException:
            return Answer(None, time.monotonic() - started)
    return Answer(response.status_code, time.monotonic() - started, response.json(),
                  response.headers.get("retry-after"))


def audit_records(gateway: GatewayProcess, request_id: str) -> list[dict]:
    lines = [line for line in gateway.output().splitlines() if line.startswith("{") and request_id in line]
    return [record for record in map(orjson.loads, lines) if record.get("requestId") == request_id]


def assert_unavailable(answer: Answer, code: str = "database_unavailable") -> None:
    assert answer.status == 503, answer
    assert answer.body["error"]["code"] == code, answer
    assert int(answer.retry_after) >= 1, answer


# Faults in the gateway's own code, for the tests below: loaded into a gateway under test
# through PYTHONPATH (`sitecustomize`), they make statements with these column names raise a
# plain exception — at once, or after the first rows were sent — and make the cleanup of a
# request tagged "slow-close" take a while. The database, the JWT library and the parsers
# are the real ones.
INJECTED = """
import asyncio
import os

import gateway.api.results as results
import gateway.db.catalog as catalog
import gateway.db.asyncpg_compat as compat
import gateway.db.session as session

statement_columns = compat.statement_columns
write_rows = results.ResultWriter.rows
close_transaction = session.Transaction.close


def failing_statement_columns(state):
    columns = statement_columns(state)
    if any(column.name == "unforeseen" for column in columns):
        raise RuntimeError("a failure nobody foresaw")
    return columns


def rows_failing_later(writer, records):
    if {"name": "unforeseen_later", "type": "int4"} in writer.columns_json and writer.rows_sent:
        raise RuntimeError("a failure nobody foresaw, mid-stream")
    return write_rows(writer, records)


async def slow_close(transaction):
    if "slow-close" in transaction._setup_sql:
        await asyncio.sleep(0.15)
    if "stuck-close" in transaction._setup_sql:
        await never_ending()
    await close_transaction(transaction)


async def never_ending():
    while True:  # deaf to cancellation
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass


async def stuck_stop(keeper):
    await never_ending()


if os.environ.get("STUCK_SHUTDOWN"):
    catalog.CatalogKeeper.stop = stuck_stop
compat.statement_columns = failing_statement_columns
results.ResultWriter.rows = rows_failing_later
session.Transaction.close = slow_close
"""


@pytest.fixture(scope="module")
def injected(tmp_path_factory) -> dict[str, str]:
    """The environment that loads the faults above into a gateway."""
    folder = tmp_path_factory.mktemp("injected")
    (folder / "sitecustomize.py").write_text(INJECTED)
    return {"PYTHONPATH": os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))}


@pytest.fixture(scope="module")
def unforeseen_gateway(launch_gateway, gateway_config, injected) -> GatewayProcess:
    return launch_gateway(config_text=gateway_config(pool_max=1), env=injected)


# ---------------------------------------------------------------------------- 2. a deadline on every wait

STATEMENT_TIMEOUT = 2.0  # long enough to see the requests waiting before the server is frozen
RESPONSE_MARGIN = 1.0
ACQUIRE_TIMEOUT = 2.0
MAX_WAIT = STATEMENT_TIMEOUT + RESPONSE_MARGIN
LOCKED = "select count(*) as waited from public.ledger"  # waits to be prepared (a table lock)
ROW_LOCKED = "select id as row_waited from public.orders where id = $1 for update"  # waits to run
LEAVES = "select count(*) as left_early from public.ledger"
STREAMED = "select g, repeat('x', 100) as filler from generate_series(1, 200000) g"


def read_stream_across(gateway: GatewayProcess, token: str, started: threading.Event,
                       freeze: threading.Event) -> tuple[list[dict], float]:
    """An NDJSON stream read up to its first chunk, then, once the server is frozen, to its
    end: its lines, and the seconds that took."""
    headers = {"Authorization": f"Bearer {token}", "Accept": NDJSON, "X-Request-Id": "frozen-stream"}
    with httpx.Client(timeout=HUNG_AFTER) as client, \
            client.stream("POST", gateway.url + "/v1/query", json={"sql": STREAMED}, headers=headers) as response:
        chunks = response.iter_bytes()
        body = next(chunks)
        started.set()
        freeze.wait(HUNG_AFTER)
        resumed = time.monotonic()
        body += b"".join(chunks)
    return [orjson.loads(line) for line in body.splitlines()], time.monotonic() - resumed


def raw_query(gateway: GatewayProcess, token: str, sql: str, request_id: str) -> socket.socket:
    """A `/v1/query` sent on a socket the test closes when it wants the client gone."""
    address = urlparse(gateway.url)
    body = orjson.dumps({"sql": sql})
    client = socket.create_connection((address.hostname, address.port))
    client.sendall(f"POST /v1/query HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
                   f"X-Request-Id: {request_id}\r\nContent-Length: {len(body)}\r\n\r\n".encode() + body)
    return client


def test_requests_on_a_frozen_database_are_answered_within_their_deadline(own_server, launch_on_own, mint):
    """PostgreSQL frozen with SIGSTOP keeps its connections open and answers nothing; its own
    statement_timeout cannot fire either. Each wait on it ends within the statement timeout
    plus the margin, while the freeze goes on: a statement being prepared and one running
    (each waiting on a lock), a COMMIT (waiting on a deferred unique check, which PostgreSQL's
    statement_timeout does not end even when it is not frozen), a stream's next batch, a new
    transaction's setup, and a rollback after the client left; waiting for a free connection
    ends within the acquire timeout. The freeze lasts only until every one is answered (about
    four seconds, not the issue's 40): a gateway that waited for the database would not be
    answered before it continues. Their connections are dropped, not returned to the pool."""
    statement_timeout = f"{STATEMENT_TIMEOUT:g}s"
    gateway = launch_on_own(
        pool_min=7, pool_max=7, statement_timeout=statement_timeout, lock_timeout="60s",
        acquire_timeout=f"{ACQUIRE_TIMEOUT:g}s", settings={"database": {"response_margin": f"{RESPONSE_MARGIN:g}s"}},
        extra=COMMITTER.format(statement_timeout=statement_timeout),
    )
    writer, committer = mint("writer", tenant="acme"), mint("committer", tenant="acme")
    assert ask(gateway, writer, "select 1").status == 200
    holder = Superuser(own_server)
    started, freeze = threading.Event(), threading.Event()
    leaving = None
    try:
        with ThreadPoolExecutor(7) as pool:
            stream = pool.submit(read_stream_across, gateway, writer, started, freeze)
            assert started.wait(HUNG_AFTER)
            holder.execute("begin")
            holder.execute("lock table public.ledger in access exclusive mode")
            holder.execute("insert into public.deferred_notes values ('frozen')")
            row = holder.fetchval("select id from public.orders where tenant = 'acme' order by id limit 1 for update")
            locked = pool.submit(ask, gateway, writer, LOCKED)
            row_locked = pool.submit(ask, gateway, writer, ROW_LOCKED, row)
            committing = pool.submit(ask, gateway, committer, "insert into public.deferred_notes values ('frozen')")
            leaving = raw_query(gateway, writer, LEAVES, "frozen-client-leaves")

            def all_four_waiting() -> list[int]:
                pids = [pid for sql in (LOCKED, ROW_LOCKED, LEAVES)
                        for pid in holder.backends_running(sql, waiting_on_lock=True)]
                # The message that ends a transaction ends with COMMIT.
                committing = holder.activity("query LIKE '%COMMIT' AND state = 'active' AND wait_event_type = 'Lock'")
                pids += [row["pid"] for row in committing]
                return pids if len(pids) == 4 else []

            # Before PostgreSQL's own statement timeout would end the first of them.
            waiting = eventually(all_four_waiting, "the four to wait", deadline=STATEMENT_TIMEOUT - 0.5)
            streaming = [row["pid"] for row in holder.activity("application_name LIKE '%frozen-stream%'")]
            assert len(streaming) == 1
            with frozen(local(own_server)):
                freeze.set()
                # Two connections are idle: two of these wait for their setup; the third waits
                # for a connection to come free.
                arriving = [pool.submit(ask, gateway, writer, "select 2 as arriving") for _ in range(3)]
                leaving.close()
                (record,) = eventually(lambda: audit_records(gateway, "frozen-client-leaves"),
                                       "the leaver's audit record", deadline=MAX_WAIT + SLACK)
                assert record["status"] == 499
                waited, set_up = [], []
                for answer in (locked.result(), row_locked.result(), committing.result(),
                               *(future.result() for future in arriving)):
                    assert answer.status is not None, f"no answer in {HUNG_AFTER:g}s: {answer}"
                    (waited if answer.body["error"]["code"] == "overloaded" else set_up).append(answer)
                assert len(waited) == 1, waited
                assert_unavailable(waited[0], "overloaded")
                assert waited[0].seconds <= ACQUIRE_TIMEOUT + SLACK, waited
                for answer in set_up:
                    assert_unavailable(answer)
                    assert f"did not answer within {MAX_WAIT:g}s" in answer.body["error"]["message"]
                    assert answer.seconds <= MAX_WAIT + SLACK, answer
                lines, seconds = stream.result()
                assert lines[-1]["error"]["code"] == "database_unavailable", lines[-1]
                assert seconds <= MAX_WAIT + SLACK
        holder.execute("rollback")
        eventually(lambda: ask(gateway, writer, "select 4 as recovered").status == 200, "the gateway to recover")
        dropped = waiting + streaming
        eventually(lambda: not holder.fetch("select pid from pg_stat_activity where pid = any($1::int[])", dropped),
                   "the frozen requests' backends to end: their connections were dropped")
    finally:
        freeze.set()  # the stream's reader goes on, whatever failed before the freeze
        if leaving is not None:
            leaving.close()
        holder.close()


# ---------------------------------------------------------------------------- 4. shutdown is bounded

SHUTDOWN_GRACE = 1.0


def terminate_and_time(gateway: GatewayProcess) -> float:
    """SIGTERM, and the seconds until the process has exited."""
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    try:
        gateway.process.wait(HUNG_AFTER)
    except subprocess.TimeoutExpired:
        gateway.process.kill()
        raise AssertionError(f"the gateway did not exit within {HUNG_AFTER:g}s:\n{gateway.output()}") from None
    return time.monotonic() - started


def test_sigterm_cuts_the_requests_still_open_after_the_grace_rolled_back_and_audited(
    launch_gateway, gateway_config, mint, superuser
):
    """A slow reader's stream (of a statement that also wrote a row, so that the rollback
    shows) and a statement waiting on a lock are still open when SIGTERM comes: each gets
    the grace period, then is cut, rolled back and audited (503, with what it sent), and the
    process exits within the grace period plus one second."""
    config = gateway_config(lock_timeout="60s")
    gateway = launch_gateway(config_text=with_settings(config, "server", shutdown_grace=f"{SHUTDOWN_GRACE:g}s"))
    token = mint("writer", tenant="acme")
    note = f"cut-{uuid.uuid4().hex}"
    # More than the socket buffers between the gateway and a client that stopped reading hold.
    writing = ("with written as (insert into public.ledger (note) values ($1) returning note) "
               "select g, repeat(md5(g::text), 10) as filler, (select count(*) from written) as wrote "
               "from generate_series(1, 300000) g")
    headers = {"Authorization": f"Bearer {token}", "Accept": NDJSON, "X-Request-Id": "cut-stream"}
    superuser.execute("begin")
    try:
        superuser.execute("lock table public.customers in access exclusive mode")
        with ThreadPoolExecutor(1) as pool, httpx.Client(timeout=HUNG_AFTER) as client, client.stream(
            "POST", gateway.url + "/v1/query", json={"sql": writing, "params": [note]}, headers=headers
        ) as response:
            chunks = response.iter_bytes()
            next(chunks)  # and no more: a reader that stopped reading
            (streaming,) = superuser.activity("application_name LIKE '%cut-stream%'")
            assert streaming["backend_xid"] is not None  # it has written its row
            waiting_sql = "select count(*) as waiting from public.customers"
            pool.submit(ask, gateway, token, waiting_sql, request_id="cut-waiting")
            eventually(lambda: superuser.backends_running(waiting_sql, waiting_on_lock=True), "the select to wait")
            seconds = terminate_and_time(gateway)
    finally:
        superuser.execute("rollback")
    assert SHUTDOWN_GRACE - 0.5 <= seconds <= SHUTDOWN_GRACE + 1, seconds
    (streamed,) = audit_records(gateway, "cut-stream")
    assert streamed["status"] == 503
    assert streamed["rows"] >= 5000 and streamed["bytes"] > 0, streamed
    (waited,) = audit_records(gateway, "cut-waiting")
    assert waited["status"] == 503
    assert superuser.fetchval("select count(*) from public.ledger where note = $1", note) == 0


def cut_while_waiting(launch_gateway, gateway_config, injected, mint, superuser,
                      request_id: str) -> tuple[GatewayProcess, float]:
    """A gateway with the injected faults, SIGTERM while request `request_id` waits on a
    lock: the gateway, and the seconds it took to exit."""
    config = with_settings(gateway_config(lock_timeout="60s"), "server", shutdown_grace=f"{SHUTDOWN_GRACE:g}s")
    gateway = launch_gateway(config_text=config, env=injected)
    token = mint("writer", tenant="acme")
    waiting_sql = f"select count(*) as {request_id.replace('-', '_')} from public.customers"
    superuser.execute("begin")
    try:
        superuser.execute("lock table public.customers in access exclusive mode")
        with ThreadPoolExecutor(1) as pool:
            pool.submit(ask, gateway, token, waiting_sql, request_id=request_id)
            eventually(lambda: superuser.backends_running(waiting_sql, waiting_on_lock=True), "the select to wait")
            return gateway, terminate_and_time(gateway)
    finally:
        superuser.execute("rollback")


def test_sigterm_waits_for_each_cut_request_to_be_audited(launch_gateway, gateway_config, injected, mint,
                                                         superuser):
    """A cut request whose cleanup takes a while (injected: 0.15 s) is still audited:
    the shutdown waits for every cut request's task before closing the audit sink."""
    gateway, seconds = cut_while_waiting(launch_gateway, gateway_config, injected, mint, superuser, "slow-close")
    assert seconds <= SHUTDOWN_GRACE + 1, seconds
    (record,) = audit_records(gateway, "slow-close")
    assert record["status"] == 503


def test_sigterm_exits_in_time_even_when_a_cut_request_never_unwinds(launch_gateway, gateway_config, injected,
                                                                      mint, superuser):
    """A cut request whose cleanup never ends (injected: it ignores cancellation) is given
    a quarter of a second; the rest of the shutdown goes on without it."""
    gateway, seconds = cut_while_waiting(launch_gateway, gateway_config, injected, mint, superuser, "stuck-close")
    assert seconds <= SHUTDOWN_GRACE + 1, seconds
    assert gateway.process.returncode == -signal.SIGTERM  # a clean exit, not the last resort
    assert "Application shutdown complete" in gateway.output()


def test_sigterm_exits_in_time_whatever_holds_the_shutdown_up(launch_gateway, gateway_config, injected):
    """Whatever holds the shutdown up (injected: a part whose stop never ends), the process
    exits within the grace period plus a second, saying so and showing where it was."""
    config = with_settings(gateway_config(), "server", shutdown_grace=f"{SHUTDOWN_GRACE:g}s")
    gateway = launch_gateway(config_text=config, env={**injected, "STUCK_SHUTDOWN": "1"})
    seconds = terminate_and_time(gateway)
    assert seconds <= SHUTDOWN_GRACE + 1, seconds
    assert gateway.process.returncode == 1
    output = gateway.output()
    assert "shutdown did not finish within" in output
    assert "Current thread" in output  # the stacks, for whoever finds out why


def test_sigterm_exits_in_time_even_with_the_database_frozen(own_server, launch_on_own, mint):
    """The cut does not wait for a database that does not answer: connections are dropped
    (PostgreSQL rolls back what they held when it sees them close), not closed politely."""
    gateway = launch_on_own(settings={"server": {"shutdown_grace": f"{SHUTDOWN_GRACE:g}s"}}, lock_timeout="60s")
    token = mint("writer", tenant="acme")
    holder = Superuser(own_server)
    try:
        holder.execute("begin")
        holder.execute("lock table public.ledger in access exclusive mode")
        with ThreadPoolExecutor(1) as pool:
            pool.submit(ask, gateway, token, LOCKED, request_id="cut-frozen")
            eventually(lambda: holder.backends_running(LOCKED, waiting_on_lock=True), "the select to wait")
            with frozen(local(own_server)):
                seconds = terminate_and_time(gateway)
        holder.execute("rollback")
    finally:
        holder.close()
    assert seconds <= SHUTDOWN_GRACE + 1, seconds
    (record,) = audit_records(gateway, "cut-frozen")
    assert record["status"] == 503


# ---------------------------------------------------------------------------- 5. faults are never a 500


def backend_pid(inspector) -> int:
    response = inspector.query("select pg_backend_pid() as pid")
    assert response.status_code == 200, response.text
    return response.json()["rows"][0]["pid"]


def test_connections_whose_backends_ended_while_idle_are_replaced_before_anything_runs(
    own_server, launch_on_own, call_as
):
    """Backends that end while their connections sit in the pool (a restart ends them all;
    here pg_terminate_backend) are found out only when a connection is next used: asyncpg
    refuses it with `InternalClientError` until it has read the socket's end. Nothing of the
    request has run on it, so the request starts again, once, on a fresh connection — not on
    the next pooled one, which looks as alive and is as dead. Thirty times in a row, each as
    soon as the backends are gone: without the retry every run fails. (A backend that ends
    while the request is on its way is a 503: the statement, sent with its transaction's
    setup, may have reached it.)"""
    gateway = launch_on_own(pool_min=3, pool_max=3, extra=SOLO_IDENTITIES)
    inspector = call_as(gateway, "inspector", tenant="acme")
    holder = Superuser(own_server)
    idle = "usename = $1 and backend_type = 'client backend' and application_name = ''"
    try:
        for _ in range(30):
            pid = backend_pid(inspector)
            ended = [row["pid"] for row in holder.fetch(
                f"select pid, pg_terminate_backend(pid) from pg_stat_activity where {idle}", LOGIN_ROLE)]
            eventually(lambda ended=ended: not holder.activity("pid = any($1::int[])", ended), "the backends ended")
            assert backend_pid(inspector) != pid
    finally:
        holder.close()


def test_a_connection_lost_while_its_statement_runs_is_a_503_and_not_run_again(solo_as, superuser):
    writer = solo_as("writer", tenant="acme")
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(writer.query, SLOW_SQL)
        (pid,) = eventually(lambda: superuser.backends_running(SLOW_SQL), "the statement to start")
        superuser.fetch("select pg_terminate_backend($1)", pid)
        response = running.result()
    assert response.status_code == 503, response.text
    assert response.json()["error"]["code"] == "database_unavailable"
    assert int(response.headers["retry-after"]) >= 1
    assert not superuser.backends_running(SLOW_SQL)
    assert writer.query("select 1").status_code == 200


def logged_failures(gateway: GatewayProcess, request_id: str) -> list[dict]:
    lines = [line for line in gateway.output().splitlines() if line.startswith("{") and request_id in line]
    return [line for line in map(orjson.loads, lines) if "exception" in line]


def assert_audited_and_logged_once(gateway: GatewayProcess, request_id: str) -> dict:
    (record,) = eventually(lambda: audit_records(gateway, request_id), "the audit record")
    assert record["status"] == 500
    (logged,) = logged_failures(gateway, request_id)
    assert "RuntimeError: a failure nobody foresaw" in logged["exception"]
    return record


def test_an_unforeseen_failure_is_a_500_in_the_native_shape_audited_and_logged_once(unforeseen_gateway, call_as):
    writer = call_as(unforeseen_gateway, "writer", tenant="acme")
    response = writer.post("/v1/query", {"sql": "select 1 as unforeseen"}, headers={"X-Request-Id": "unforeseen-v1"})
    assert response.status_code == 500
    assert response.json() == {"error": {
        "code": "internal_error", "message": "internal error", "postgresMessage": None,
        "requestId": "unforeseen-v1", "sqlstate": None, "detail": None, "hint": None, "position": None}}
    assert_audited_and_logged_once(unforeseen_gateway, "unforeseen-v1")
    assert writer.query("select 1 as after").status_code == 200  # rolled back; the connection is back


def test_an_unforeseen_failure_is_a_500_in_the_neon_shape(unforeseen_gateway, call_as):
    writer = call_as(unforeseen_gateway, "writer", tenant="acme")
    response = writer.post("/sql", {"query": "select 1 as unforeseen", "params": []},
                           headers={"X-Request-Id": "unforeseen-sql"})
    assert response.status_code == 500
    assert response.json() == {"message": "internal error", "code": "internal_error"}
    assert_audited_and_logged_once(unforeseen_gateway, "unforeseen-sql")


def test_an_unforeseen_failure_mid_stream_ends_the_body_with_the_error(unforeseen_gateway, call_as):
    writer = call_as(unforeseen_gateway, "writer", tenant="acme")
    sql = "select g as unforeseen_later from generate_series(1, 20000) g"
    response = writer.post("/v1/query", {"sql": sql},
                           headers={"Accept": NDJSON, "X-Request-Id": "unforeseen-stream"})
    assert response.status_code == 200  # sent before the failure
    lines = [orjson.loads(line) for line in response.content.splitlines()]
    assert lines[-1]["error"]["code"] == "internal_error"
    assert len(lines) == 1 + 5000 + 1
    record = assert_audited_and_logged_once(unforeseen_gateway, "unforeseen-stream")
    assert record["rows"] == 5000


# ---------------------------------------------------------------------------- the fault run

CLIENTS = 4
RUN_BOUND = ACQUIRE_TIMEOUT + MAX_WAIT + SLACK
FREEZE = MAX_WAIT + 1.0  # longer than any wait may last
WRITE = "insert into public.ledger (note) values ($1) returning id"
READ = "select count(*) as notes from public.ledger"


@dataclass
class Outcome:
    phase: str  # the fault begun last when the request was sent (it may be answered during the next)
    note: str | None  # what a write wrote
    status: int | None = None  # None: no answer within HUNG_AFTER (hung), or none at all
    seconds: float = 0.0
    ended: float = 0.0
    retry_after: str | None = None
    code: str | None = None  # the error's code
    failure: str | None = None  # how the exchange failed below HTTP, if it did


def steady_load(gateway: GatewayProcess, token: str, run_id: str, client_number: int,
                phase: dict[str, str]) -> list[Outcome]:
    """One client's requests until the phase is "done": writes (each of a note of its own)
    and reads in turn, on a keep-alive connection; after a failure it waits a moment."""
    outcomes = []
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.Client(timeout=HUNG_AFTER) as client:
        for number in itertools.count():
            if phase["now"] == "done":
                return outcomes
            note = f"{run_id}-{client_number}-{number}" if number % 2 == 0 else None
            outcome = Outcome(phase["now"], note)
            started = time.monotonic()
            try:
                response = client.post(gateway.url + "/v1/query", headers=headers,
                                       json={"sql": WRITE, "params": [note]} if note else {"sql": READ})
                outcome.status, outcome.retry_after = response.status_code, response.headers.get("retry-after")
                if outcome.status != 200:
                    outcome.code = response.json()["error"]["code"]
            except httpx.TransportError as error:  # a timeout included: hung
                outcome.failure = repr(error)
            outcome.ended = time.monotonic()
            outcome.seconds = outcome.ended - started
            outcomes.append(outcome)
            if outcome.status != 200:
                time.sleep(0.05)
    return outcomes


def gateway_backends(server: PgServer) -> list[int]:
    rows = admin(server, "select pid from pg_stat_activity where usename = $1 and backend_type = 'client backend'",
                 LOGIN_ROLE)
    return [row["pid"] for row in rows]


def test_a_fault_run_loses_no_acknowledged_write_hangs_nothing_and_never_answers_500(own_server, launch_on_own, mint):
    """Steady load — reads and acknowledged writes from several clients over real HTTP —
    through a PostgreSQL restart, pg_terminate_backend of every gateway backend, a backend
    killed (PostgreSQL then restarts all of them), and a four-second SIGSTOP freeze.
    Every request is answered, within its bound (acquire timeout + statement timeout +
    margin), never with a 500; every write answered 200 is in the table afterwards. The
    numbers are printed for the issue's closing note (`pytest -s`)."""
    gateway = launch_on_own(statement_timeout=f"{STATEMENT_TIMEOUT:g}s", acquire_timeout=f"{ACQUIRE_TIMEOUT:g}s",
                            settings={"database": {"response_margin": f"{RESPONSE_MARGIN:g}s"}})
    token = mint("writer", tenant="acme")
    run_id = f"run-{uuid.uuid4().hex[:8]}"
    server = local(own_server)
    phase = {"now": "steady"}
    with ThreadPoolExecutor(CLIENTS) as pool:
        clients = [pool.submit(steady_load, gateway, token, run_id, number, phase) for number in range(CLIENTS)]
        try:
            time.sleep(0.5)
            phase["now"] = "restart"
            server.stop(mode="fast")
            server.start()
            time.sleep(1.0)
            phase["now"] = "pg_terminate_backend"
            admin(own_server, "select pg_terminate_backend(pid) from pg_stat_activity where usename = $1", LOGIN_ROLE)
            time.sleep(1.0)
            phase["now"] = "backend killed"
            os.kill(eventually(lambda: gateway_backends(own_server), "a gateway backend")[0], signal.SIGKILL)
            time.sleep(1.5)
            phase["now"] = f"frozen {FREEZE:g}s"
            with frozen(server):
                time.sleep(FREEZE)
            phase["now"] = "after"
            recovered = time.monotonic()
            time.sleep(1.0)
        finally:
            phase["now"] = "done"
        outcomes = [outcome for client in clients for outcome in client.result()]
    acknowledged = {outcome.note for outcome in outcomes if outcome.note and outcome.status == 200}
    written = {row["note"] for row in admin(own_server, "select note from public.ledger where note like $1",
                                            f"{run_id}-%")}
    statuses = Counter(outcome.status for outcome in outcomes)
    slowest = max(outcome.seconds for outcome in outcomes)
    hung = [outcome for outcome in outcomes if outcome.status is None]
    print(f"\nfault run: {len(outcomes)} requests, statuses {dict(sorted(statuses.items(), key=str))}, "
          f"max latency {slowest:.2f}s, hung {len(hung)}, 500s {statuses[500]}, "
          f"acknowledged writes {len(acknowledged)}, lost {len(acknowledged - written)}")
    for name in dict.fromkeys(outcome.phase for outcome in outcomes):
        during = [outcome for outcome in outcomes if outcome.phase == name]
        print(f"  {name}: {len(during)} requests, {dict(Counter(outcome.status for outcome in during))} "
              f"{dict(Counter(outcome.code for outcome in during if outcome.code))}, "
              f"max latency {max(outcome.seconds for outcome in during):.2f}s")
    assert not hung, hung[:3]
    assert statuses[500] == 0
    assert set(statuses) <= {200, 503, 504}, statuses
    assert all(int(outcome.retry_after) >= 1 for outcome in outcomes if outcome.status == 503)
    assert acknowledged <= written, sorted(acknowledged - written)[:5]
    assert slowest <= RUN_BOUND, slowest
    assert statuses[503], statuses  # the faults were felt
    assert any(outcome.status == 200 and outcome.ended > recovered for outcome in outcomes)

"""Several replicas behind one address: two real `gateway serve` processes on loopback ports
sharing one redis-server and the suite's database, with the load spread over both. An
identity's rate and concurrency hold across the pair, each audit record names its replica,
approvals and temporary logins decided on one are seen on the other, a replica stopped
(SIGTERM) under a write load loses no write it acknowledged, and with Redis stopped under load
each replica counts alone (no 5xx; the log line, the metric and `/readyz` say so) until Redis
is back.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import orjson
import pytest
from test_approvals import IDENTITIES as APPROVAL_IDENTITIES
from test_approvals import LOG_TABLE, setup_command
from test_credentials import DROP_TEMPORARY_LOGINS
from test_credentials import IDENTITIES as CREDENTIAL_IDENTITIES

from conftest import (
    ADMIN_ROLE,
    ADMIN_SECRET,
    ISSUED_PASSWORDS,
    TEST_DATABASE,
    Api,
    GatewayProcess,
    PgServer,
    RedisServer,
    Superuser,
    credentials_section,
    eventually,
)

LOCKED_SQL = "select count(*) from customers"

def paced(name: str) -> str:
    """An identity of 20 requests a second that reads orders."""
    return f"""
[[identities]]
name = "{name}"
issuer = "dev"
match = {{ sub = "{name}" }}
role = "demo_reader"
rate = "20/s"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]
"""


# "rated" only for the test of its rate, so that its bucket is full whichever test ran before.
IDENTITIES = paced("rated") + paced("paced") + """
[[identities]]
name = "pair-capped"
issuer = "dev"
match = { sub = "pair-capped" }
role = "demo_reader"
concurrency = 2

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.customers"]
"""


@pytest.fixture(scope="module")
def config_for(gateway_config: Callable[..., str], database: PgServer,
               module_redis: RedisServer) -> Callable[[str], str]:
    """The pair's configuration, `replica` naming one of them: the shared Redis, statements that
    wait for locks as long as a test holds them, and the approvals and credentials features."""
    limits = f'\n[limits]\nredis_url = "{module_redis.url}"\nredis_timeout = "1s"\nredis_retry = "200ms"\n'
    # One analysis worker each: three replicas start on the machine at once.
    limits += "\n[policy]\nanalysis_workers = 1\n"
    identities = IDENTITIES + APPROVAL_IDENTITIES + CREDENTIAL_IDENTITIES
    common = gateway_config(identities + credentials_section(database) + limits, lock_timeout="30s")
    server = '[server]\nreplica = "{}"\nreadyz_cache = "50ms"\n'
    return lambda replica: common.replace("[server]\n", server.format(replica), 1)


@pytest.fixture(scope="module")
def set_up(database: PgServer, config_for: Callable[[str], str], gateway_env: dict[str, str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """`gateway setup` (the approvals table) and the table approved statements write to, undone
    afterwards with any temporary login left."""
    superuser = Superuser(database)
    superuser.execute(LOG_TABLE + f"GRANT CREATE ON DATABASE {TEST_DATABASE} TO {ADMIN_ROLE}")
    env = {**os.environ, **gateway_env, ADMIN_SECRET: database.admin_password}
    try:
        done = setup_command(config_for("setup"), tmp_path_factory.mktemp("setup"), env)
        assert done.returncode == 0, done.stderr
        yield
    finally:
        superuser.execute(DROP_TEMPORARY_LOGINS)
        superuser.execute("DROP SCHEMA IF EXISTS gateway CASCADE; DROP TABLE public.approval_log;"
                          f"REVOKE CREATE ON DATABASE {TEST_DATABASE} FROM {ADMIN_ROLE}")
        superuser.close()


@pytest.fixture(scope="module")
def replicas(set_up: None, launch_gateway: Callable[..., GatewayProcess], config_for: Callable[[str], str],
             database: PgServer) -> Iterator[dict[str, GatewayProcess]]:
    """Replicas A and B, and C, which a test stops; stopped with the module."""
    names = ("replica-a", "replica-b", "replica-c")
    env = {ADMIN_SECRET: database.admin_password}
    started = [launch_gateway(config_text=config_for(name), env=env) for name in names]
    yield dict(zip(names, started, strict=True))
    for replica in started:
        replica.stop()


@pytest.fixture(scope="module")
def pair(replicas: dict[str, GatewayProcess]) -> tuple[GatewayProcess, GatewayProcess]:
    return replicas["replica-a"], replicas["replica-b"]


@pytest.fixture
def spread(pair: tuple[GatewayProcess, GatewayProcess], call_as: Callable[..., Api]) -> Callable[..., list[Api]]:
    """`spread("paced")` -> the caller on replica A and on replica B."""
    return lambda subject: [call_as(replica, subject, tenant="acme") for replica in pair]


# ---------------------------------------------------------------------------- limits across the pair


def test_an_identitys_rate_holds_across_the_pair(spread):
    """rate 20/s: a burst of 20, then 20 a second, whichever replica is asked; each replica
    counting alone would admit about twice as many."""
    apis = spread("rated")
    statuses: list[tuple[int, int]] = []  # (replica, status)

    def hammer(offset: int, until: float) -> None:
        n = offset
        while time.monotonic() < until:
            statuses.append((n % 2, apis[n % 2].query("select id from orders where id = $1", 1).status_code))
            n += 1

    for api in apis:  # each replica's first use of the text (its analysis) is not timed
        assert api.query("select id from orders where id = $1", 1).status_code == 200
    started = time.monotonic()
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(hammer, (0, 1), [started + 1.5] * 2))
    elapsed = time.monotonic() - started
    admitted = [replica for replica, status in statuses if status == 200]
    assert {status for _, status in statuses} == {200, 429}
    allowed = 20 + 20 * elapsed
    assert 0.75 * allowed <= len(admitted) <= allowed + 2, (len(admitted), elapsed, len(statuses))
    assert set(admitted) == {0, 1}  # both replicas served the identity


def test_an_identitys_concurrency_holds_across_the_pair(spread, superuser):
    on_a, on_b = spread("pair-capped")
    superuser.execute("begin")
    superuser.execute("lock table public.customers in access exclusive mode")
    with ThreadPoolExecutor(2) as pool:
        try:
            blocked = [pool.submit(api.query, LOCKED_SQL) for api in (on_a, on_b)]
            eventually(lambda: len(superuser.backends_running(LOCKED_SQL, waiting_on_lock=True)) == 2,
                       "a statement of the identity waiting on each replica")
            refused = [api.query("select 1 from customers") for api in (on_a, on_b)]
        finally:
            superuser.execute("commit")
        assert [future.result().status_code for future in blocked] == [200, 200]
    for response in refused:
        assert response.status_code == 429, response.text
        assert "2 statements in flight (its concurrency is 2)" in response.json()["error"]["message"]
    eventually(lambda: on_b.query(LOCKED_SQL).status_code == 200, "the leases to be given back")


# ---------------------------------------------------------------------------- one record per replica


def audit_records(replica: GatewayProcess, request_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in replica.output().splitlines() if f'"requestId":"{request_id}"' in line]


def test_audit_records_and_logs_name_the_replica_that_wrote_them(pair, spread):
    for replica, api, name in zip(pair, spread("paced"), ("replica-a", "replica-b"), strict=True):
        request_id = f"replica-check-{name}"
        response = api.post("/v1/query", {"sql": "select 1 from orders limit 1"}, headers={"X-Request-Id": request_id})
        assert response.status_code in (200, 429)
        (record,) = eventually(lambda replica=replica, request_id=request_id: audit_records(replica, request_id),
                               "the audit record")
        assert record["replica"] == name
        logs = [orjson.loads(line) for line in replica.output().splitlines() if '"logger":' in line]
        assert logs and {log["replica"] for log in logs} == {name}


# ---------------------------------------------------------------------------- state in the database


def test_an_approval_asked_on_one_replica_is_decided_on_the_other(spread, superuser):
    clerk_on_a, _ = spread("clerk")
    _, approver_on_b = spread("approver")
    note = f"approved-across-{time.monotonic_ns()}"
    held = clerk_on_a.query("insert into public.approval_log (note) values ($1)", note)
    assert held.status_code == 202, held.text
    approval = held.json()["approval"]["id"]
    assert approval in [item["id"] for item in approver_on_b.get("/v1/approvals").json()["approvals"]]
    decided = approver_on_b.post(f"/v1/approvals/{approval}", {"decision": "approve"})
    assert decided.status_code == 200 and decided.json()["approval"]["status"] == "done", decided.text
    fetched = clerk_on_a.get(f"/v1/approvals/{approval}").json()["approval"]
    assert fetched["status"] == "done" and fetched["result"]["rowCount"] == 1
    assert superuser.fetchval("select count(*) from public.approval_log where note = $1", note) == 1


def test_a_login_issued_on_one_replica_is_listed_and_revoked_on_the_other(spread):
    on_a, on_b = spread("analyst")
    issued = on_a.post("/v1/credentials", {})
    assert issued.status_code == 201, issued.text
    ISSUED_PASSWORDS.append(issued.json()["password"])
    user = issued.json()["user"]
    assert [login["user"] for login in on_b.get("/v1/credentials").json()["credentials"]] == [user]
    assert on_b.delete(f"/v1/credentials/{user}").status_code == 204
    assert on_a.get("/v1/credentials").json()["credentials"] == []


# ---------------------------------------------------------------------------- a replica stopped under load


def test_a_replica_stopped_under_a_write_load_loses_no_acknowledged_write(replicas, pair, call_as, superuser):
    leaving = replicas["replica-c"]
    apis = [call_as(pair[0], "writer", tenant="acme"), call_as(leaving, "writer", tenant="acme")]
    acknowledged: dict[int, list[str]] = {0: [], 1: []}
    other_answers: list[int | str] = []
    stop = threading.Event()

    def write(worker: int) -> None:
        n = 0
        while not stop.is_set():
            side, note = n % 2, f"sigterm-{worker}-{n}-{time.monotonic_ns()}"
            n += 1
            try:
                response = apis[side].query("insert into public.ledger (note) values ($1) returning note", note)
            except httpx.TransportError as error:  # the stopped replica no longer listens
                other_answers.append(type(error).__name__)
                continue
            if 200 <= response.status_code < 300:
                acknowledged[side].append(response.json()["rows"][0]["note"])
            else:
                other_answers.append(response.status_code)

    with ThreadPoolExecutor(3) as pool:
        writers = [pool.submit(write, worker) for worker in range(3)]
        try:
            eventually(lambda: len(acknowledged[1]) >= 10, "writes acknowledged by the replica to stop")
            leaving.process.send_signal(signal.SIGTERM)
            try:
                leaving.process.wait(15)
            except subprocess.TimeoutExpired:
                pytest.fail("the replica did not stop within 15s")
            assert leaving.process.returncode == -signal.SIGTERM  # a clean exit, not the last resort
            stopped_at = len(acknowledged[0])
            eventually(lambda: len(acknowledged[0]) >= stopped_at + 10, "the other replica to go on acknowledging")
        finally:
            stop.set()
        for writer in writers:
            writer.result(timeout=30)
    notes = acknowledged[0] + acknowledged[1]
    stored = {row["note"] for row in superuser.fetch("select note from public.ledger where note = any($1)", notes)}
    assert stored == set(notes)
    assert all(not isinstance(answer, int) or answer < 500 for answer in other_answers), other_answers


# ---------------------------------------------------------------------------- Redis stopped under load


def metric(replica: GatewayProcess, name: str) -> float:
    for line in httpx.get(f"{replica.url}/metrics", timeout=5).text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"{name} is not in /metrics")


def limits_state(replica: GatewayProcess) -> str:
    response = httpx.get(f"{replica.url}/readyz", timeout=5)
    assert response.status_code == 200, response.text  # counting alone is no reason to stop serving
    return response.json()["checks"]["limits"]


def states(pair: tuple[GatewayProcess, ...]) -> set[str]:
    return {limits_state(replica) for replica in pair}


class Load:
    """Requests spread over the pair as fast as one thread sends them, every status kept
    (with the replica that answered), until the block ends."""

    def __init__(self, apis: list[Api]) -> None:
        self.apis = apis
        self.statuses: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        n = 0
        while not self._stop.is_set():
            response = self.apis[n % 2].query("select id from orders where id = $1", 1)
            self.statuses.append((n % 2, response.status_code))
            n += 1

    def refused_since(self, start: int) -> set[int]:
        """The replicas that refused a request over the rate since the `start`th status."""
        return {replica for replica, status in self.statuses[start:] if status == 429}

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join(10)


def test_with_redis_stopped_under_load_each_replica_counts_alone_until_it_returns(pair, spread, module_redis):
    with Load(spread("paced")) as load:
        eventually(lambda: load.refused_since(0), "the shared rate to refuse some requests")
        assert states(pair) == {"shared"}
        assert [metric(replica, "gateway_shared_limits_up") for replica in pair] == [1, 1]
        outages = [metric(replica, "gateway_shared_limits_outages_total") for replica in pair]
        module_redis.stop()
        eventually(lambda: states(pair) == {"per_replica"}, "/readyz to say each replica counts alone")
        assert [metric(replica, "gateway_shared_limits_up") for replica in pair] == [0, 0]
        during = len(load.statuses)
        # 20/s on each replica, counted by itself: both go on refusing what is over the rate.
        eventually(lambda: load.refused_since(during) == {0, 1}, "each replica to refuse over its own count")
        module_redis.start()
        eventually(lambda: states(pair) == {"shared"}, "/readyz to say limits are shared again")
        assert [metric(replica, "gateway_shared_limits_up") for replica in pair] == [1, 1]
        after = len(load.statuses)
        eventually(lambda: load.refused_since(after), "the shared rate to refuse again")
    assert {status for _, status in load.statuses} == {200, 429}  # never a 5xx
    for replica, before in zip(pair, outages, strict=True):
        assert metric(replica, "gateway_shared_limits_outages_total") == before + 1
        logged = [line for line in replica.output().splitlines() if '"gateway.limits"' in line]
        # One line as the outage began and one as it ended, however many requests came between.
        assert sum("did not answer" in line for line in logged) == before + 1
        assert sum("answers again" in line for line in logged) == before + 1

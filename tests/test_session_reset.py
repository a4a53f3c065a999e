"""No session state survives a request (issue 10, item 8), including what the policy cannot
see: functions PostgreSQL calls on its own for triggers, rules, defaults, checks, domains,
index expressions, row-level-security policies and views, through views, cascading foreign
keys and partitions. The catalog snapshot marks such statements for the full reset; settings
PostgreSQL reports (TimeZone, ...) are caught when they change anyway; advisory locks and
sequence positions are released at the end of every transaction. A real `gateway serve`
with one connection, so the next request shares the backend; and each piece of the full
reset, run by the pool on a real connection.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator

import asyncpg
import pytest

from conftest import LOGIN_ROLE, Api, PgServer, Superuser, TlsFiles, gateway_config_text, run
from gateway.config import parse_config
from gateway.db.pool import FULL_RESET, Database

SCHEMA_SQL = """
CREATE FUNCTION public.reset_leave_digits() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('extra_float_digits', '-15', false); RETURN NULL; END $$;
CREATE FUNCTION public.reset_digits() RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('extra_float_digits', '-15', false); RETURN true; END $$;
CREATE FUNCTION public.reset_digits_key(int) RETURNS int IMMUTABLE LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('extra_float_digits', '-15', false); RETURN $1; END $$;
CREATE FUNCTION public.reset_digits_step(total int, value int) RETURNS int LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('extra_float_digits', '-15', false); RETURN COALESCE(total, 0) + value; END $$;
CREATE AGGREGATE public.reset_sum(int) (SFUNC = public.reset_digits_step, STYPE = int);
CREATE FUNCTION public.reset_digits_equal(int, int) RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('extra_float_digits', '-15', false); RETURN $1 = $2; END $$;
CREATE OPERATOR public.=== (LEFTARG = int, RIGHTARG = int, FUNCTION = public.reset_digits_equal);
CREATE FUNCTION public.reset_leave_timezone() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.set_config('TimeZone', 'Pacific/Kiritimati', false); RETURN NULL; END $$;
CREATE FUNCTION public.reset_take_lock() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.pg_advisory_lock(4242); RETURN NULL; END $$;
CREATE FUNCTION public.reset_take_lock_and_fail() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN PERFORM pg_catalog.pg_advisory_lock(4245); RAISE EXCEPTION 'refused after locking'; END $$;

CREATE TABLE public.reset_trigger (id int);
CREATE TRIGGER reset_trigger_digits AFTER INSERT ON public.reset_trigger
    FOR EACH ROW EXECUTE FUNCTION public.reset_leave_digits();
CREATE TABLE public.reset_rule (id int);
CREATE TABLE public.reset_rule_log (ok boolean);
CREATE RULE reset_rule_also AS ON INSERT TO public.reset_rule
    DO ALSO INSERT INTO public.reset_rule_log VALUES (public.reset_digits());
CREATE TABLE public.reset_default (id int, ok boolean DEFAULT public.reset_digits());
CREATE TABLE public.reset_check (id int CHECK (public.reset_digits()));
CREATE DOMAIN public.reset_domain AS int CHECK (public.reset_digits());
CREATE TABLE public.reset_domain_table (ids public.reset_domain[]);
CREATE TABLE public.reset_index (id int);
CREATE INDEX reset_index_key ON public.reset_index (public.reset_digits_key(id));
CREATE TABLE public.reset_policy (id int);
INSERT INTO public.reset_policy VALUES (1);
ALTER TABLE public.reset_policy ENABLE ROW LEVEL SECURITY;
CREATE POLICY reset_policy_rows ON public.reset_policy USING (public.reset_digits());
CREATE VIEW public.reset_view AS SELECT public.reset_digits() AS ok;
CREATE VIEW public.reset_view_of_view AS SELECT ok FROM public.reset_view;
CREATE VIEW public.reset_view_of_set_config AS
    SELECT pg_catalog.set_config('extra_float_digits', '-15', false) AS digits;
CREATE VIEW public.reset_view_of_aggregate AS SELECT public.reset_sum(1) AS total;
CREATE VIEW public.reset_view_of_window AS SELECT public.reset_sum(1) OVER () AS total;
CREATE VIEW public.reset_view_of_operator AS SELECT 1 OPERATOR(public.===) 1 AS same;
CREATE TABLE public.reset_parent (id int PRIMARY KEY);
CREATE TABLE public.reset_child (parent int REFERENCES public.reset_parent ON DELETE CASCADE);
CREATE TRIGGER reset_child_digits AFTER DELETE ON public.reset_child
    FOR EACH ROW EXECUTE FUNCTION public.reset_leave_digits();
INSERT INTO public.reset_parent VALUES (1);
INSERT INTO public.reset_child VALUES (1);
CREATE TABLE public.reset_partitioned (id int) PARTITION BY RANGE (id);
CREATE TABLE public.reset_partition PARTITION OF public.reset_partitioned FOR VALUES FROM (0) TO (100);
CREATE TRIGGER reset_partition_digits AFTER INSERT ON public.reset_partition
    FOR EACH ROW EXECUTE FUNCTION public.reset_leave_digits();
CREATE TABLE public.reset_late_timezone (id int);
CREATE TABLE public.reset_late_lock (id int);
CREATE TABLE public.reset_late_failing_lock (id int);

GRANT SELECT, INSERT, DELETE ON public.reset_trigger, public.reset_rule, public.reset_default, public.reset_check,
    public.reset_domain_table, public.reset_index, public.reset_policy, public.reset_parent,
    public.reset_partitioned, public.reset_late_timezone, public.reset_late_lock, public.reset_late_failing_lock
    TO demo_writer;
GRANT SELECT ON public.reset_view, public.reset_view_of_view, public.reset_view_of_set_config,
    public.reset_view_of_aggregate, public.reset_view_of_window, public.reset_view_of_operator TO demo_writer;
"""
DROP_SQL = """
DROP VIEW public.reset_view_of_set_config;
DROP TABLE public.reset_trigger, public.reset_rule, public.reset_rule_log, public.reset_default, public.reset_check,
    public.reset_domain_table, public.reset_index, public.reset_policy, public.reset_child, public.reset_parent,
    public.reset_partitioned, public.reset_late_timezone, public.reset_late_lock, public.reset_late_failing_lock
    CASCADE;
DROP DOMAIN public.reset_domain;
DROP FUNCTION public.reset_leave_digits(), public.reset_digits() CASCADE;
DROP FUNCTION public.reset_digits_key(int), public.reset_leave_timezone(), public.reset_take_lock(),
    public.reset_take_lock_and_fail();
DROP AGGREGATE public.reset_sum(int) CASCADE;
DROP FUNCTION public.reset_digits_step(int, int);
DROP FUNCTION public.reset_digits_equal(int, int) CASCADE;
"""

IDENTITIES = """
[[identities]]
name = "resetter"
issuer = "dev"
match = { sub = "resetter" }
role = "demo_writer"

  [[identities.rules]]
  allow = ["select", "insert", "delete"]
  tables = ["public.*"]

[[identities]]
name = "watcher"
issuer = "dev"
match = { sub = "watcher" }
role = "demo_reader"
functions = ["current_setting", "pg_backend_pid", "lastval"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.*"]

[policy]
catalog_refresh = "1h"
"""

WATCH_SQL = (
    "select pg_backend_pid() as pid, current_setting('extra_float_digits') as digits, "
    "current_setting('TimeZone') as timezone"
)


@pytest.fixture(scope="module")
def reset_schema(database: PgServer) -> Iterator[None]:
    database.execute(SCHEMA_SQL)
    yield
    database.execute(DROP_SQL)


@pytest.fixture(scope="module")
def one_connection(reset_schema, launch_gateway, gateway_config):
    """Started after the schema exists: its catalog snapshot knows every object above."""
    return launch_gateway(config_text=gateway_config(IDENTITIES, pool_max=1))


@pytest.fixture
def resetter(one_connection, call_as) -> Api:
    return call_as(one_connection, "resetter")


@pytest.fixture
def watcher(one_connection, call_as) -> Api:
    return call_as(one_connection, "watcher")


def watch(watcher: Api) -> dict:
    response = watcher.query(WATCH_SQL)
    assert response.status_code == 200, response.text
    (row,) = response.json()["rows"]
    return row


# ---------------------------------------------------------------------------- code the policy cannot see

# Each statement calls no function itself; PostgreSQL calls public.reset_digits (or a trigger
# doing the same, or set_config itself) on its own, which leaves extra_float_digits changed
# for the session: a setting PostgreSQL does not report, so only the catalog snapshot can tell.
UNSEEN = {
    "trigger": "insert into reset_trigger (id) values (1)",
    "rule": "insert into reset_rule (id) values (1)",
    "default": "insert into reset_default (id) values (1)",
    "check-constraint": "insert into reset_check (id) values (1)",
    "domain-of-an-array": "insert into reset_domain_table (ids) values ('{1,2}')",
    "index-expression": "insert into reset_index (id) values (1)",
    "row-level-security": "select id from reset_policy",
    "view": "select ok from reset_view",
    "view-of-a-view": "select ok from reset_view_of_view",
    "view-calling-set_config": "select digits from reset_view_of_set_config",
    "view-calling-an-aggregate": "select total from reset_view_of_aggregate",
    "view-calling-a-window-function": "select total from reset_view_of_window",
    "view-calling-an-operator": "select same from reset_view_of_operator",
    "cascading-foreign-key": "delete from reset_parent where id = 1",
    "partition": "insert into reset_partitioned (id) values (1)",
}


@pytest.mark.parametrize("sql", UNSEEN.values(), ids=UNSEEN.keys())
def test_settings_changed_by_code_postgresql_runs_on_its_own_do_not_reach_the_next_request(resetter, watcher, sql):
    before = watch(watcher)
    response = resetter.query(sql)
    assert response.status_code == 200, response.text
    after = watch(watcher)
    assert after == before
    assert after["digits"] == "1"


def test_a_reported_setting_changed_by_a_trigger_the_snapshot_has_not_seen_yet_is_reset(
    resetter, watcher, superuser: Superuser
):
    superuser.execute(
        "CREATE TRIGGER late_timezone AFTER INSERT ON public.reset_late_timezone "
        "FOR EACH ROW EXECUTE FUNCTION public.reset_leave_timezone()"
    )
    before = watch(watcher)
    assert resetter.query("insert into reset_late_timezone (id) values (1)").status_code == 200
    assert watch(watcher) == before


def test_an_advisory_lock_taken_by_a_trigger_is_released_before_the_answer(resetter, superuser: Superuser):
    superuser.execute(
        "CREATE TRIGGER late_lock AFTER INSERT ON public.reset_late_lock "
        "FOR EACH ROW EXECUTE FUNCTION public.reset_take_lock()"
    )
    assert resetter.query("insert into reset_late_lock (id) values (1)").status_code == 200
    held = "select count(*) from pg_catalog.pg_locks where locktype = 'advisory' and objid = 4242"
    assert superuser.fetchval(held) == 0


def test_an_advisory_lock_taken_by_a_statement_that_failed_is_released_too(resetter, superuser: Superuser):
    """Also when the statement went out with its transaction's setup (the second time, once
    prepared) and failed there: the transaction is rolled back and the locks released."""
    superuser.execute(
        "CREATE TRIGGER late_failing_lock AFTER INSERT ON public.reset_late_failing_lock "
        "FOR EACH ROW EXECUTE FUNCTION public.reset_take_lock_and_fail()"
    )
    held = "select count(*) from pg_catalog.pg_locks where locktype = 'advisory' and objid = 4245"
    for _ in range(2):
        response = resetter.query("insert into reset_late_failing_lock (id) values (1)")
        assert response.status_code == 400 and response.json()["error"]["sqlstate"] == "P0001", response.text
        assert superuser.fetchval(held) == 0


def test_the_position_of_a_sequence_is_not_left_to_the_next_request(resetter, watcher):
    response = resetter.query("insert into ledger (note) values ('reset-sequence-probe') returning id")
    assert response.status_code == 200, response.text
    response = watcher.query("select lastval() as last")
    assert response.status_code == 400, response.text
    # 42501 (no privilege on the sequence) would mean the session still knew the insert's id.
    assert response.json()["error"]["sqlstate"] == "55000"


# ---------------------------------------------------------------------------- the full reset, piece by piece


LAST_VALUE_UNDEFINED = "lastval is not yet defined in this session"
# What a request could leave behind that one piece of FULL_RESET, and no other, removes; and
# what the next user of the connection sees afterwards.
PIECES = {
    "RESET ROLE": (["SET ROLE demo_reader"], "SELECT current_user", LOGIN_ROLE),
    "CLOSE ALL": (["BEGIN", "DECLARE held CURSOR WITH HOLD FOR SELECT 1", "COMMIT"],
                  "SELECT count(*) FROM pg_catalog.pg_cursors WHERE name = 'held'", "0"),
    "UNLISTEN *": (["LISTEN reset_probe"], "SELECT count(*) FROM pg_catalog.pg_listening_channels()", "0"),
    "RESET ALL": (["SET extra_float_digits = -15"], "SELECT pg_catalog.current_setting('extra_float_digits')", "1"),
    "pg_advisory_unlock_all()": (
        ["SELECT pg_catalog.pg_advisory_lock(4243)"],
        "SELECT count(*) FROM pg_catalog.pg_locks WHERE locktype = 'advisory' AND pid = pg_catalog.pg_backend_pid()",
        "0",
    ),
    "DISCARD TEMP": (["CREATE TEMP TABLE reset_probe (id int)"],
                     "SELECT count(*) FROM pg_catalog.pg_class WHERE relnamespace = pg_catalog.pg_my_temp_schema()",
                     "0"),
    "DISCARD SEQUENCES": (
        ["BEGIN", "SET LOCAL ROLE demo_writer", "INSERT INTO public.ledger (note) VALUES ('reset-probe')", "ROLLBACK"],
        "SELECT pg_catalog.lastval()",
        LAST_VALUE_UNDEFINED,
    ),
}


async def _left_after_reset(config_text: str, poison: list[str], observe: str) -> str:
    """What `observe` answers on the pool's one connection after `poison` ran on it and it
    went back to the pool marked for the full reset."""
    config = parse_config(tomllib.loads(config_text))
    database = Database(config.database, config.secret_store())
    await database.open(size=1)
    try:
        async with database.connection() as connection:
            for statement in poison:
                await connection.execute(statement)
            connection.needs_full_reset = True
        async with database.connection() as connection:
            try:
                return str(await connection.fetchval(observe))
            except asyncpg.PostgresError as error:
                return error.message
    finally:
        await database.close()


@pytest.mark.parametrize("piece", PIECES, ids=PIECES.keys())
def test_each_piece_of_the_full_reset_removes_what_it_is_for(
    piece, database: PgServer, tls_files: TlsFiles, monkeypatch: pytest.MonkeyPatch
):
    assert piece in FULL_RESET
    monkeypatch.setenv("TEST_DB_PASSWORD", database.login_password)
    poison, observe, expected = PIECES[piece]
    assert run(_left_after_reset(gateway_config_text(database, tls_files), poison, observe)) == expected

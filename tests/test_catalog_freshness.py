"""The gateway and PostgreSQL never resolve a name differently (issue: stale name resolution).

An identity that can create objects in a schema ahead of `public` on its search path once
created `scratch.customers`, waited for a refresh, dropped it, and read `public.customers`
through a name the gateway still resolved to the dropped table. Here: DDL run through the
gateway is followed by a fresh snapshot before any further decision; an unqualified name a
relation in such a schema could take over must be written qualified; DDL from elsewhere
reaches every gateway within a second through the event trigger of docs/catalog-events.sql
(or, from another gateway, through its NOTIFY); and the listening connection survives being
terminated. Against a real PostgreSQL and real `gateway serve` processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import LOGIN_ROLE, Api, GatewayProcess, Superuser, eventually

SCHEMA = "scratch_e2e"
ROLE = "scratch_e2e_role"
EVENTS_SQL = Path(__file__).resolve().parent.parent / "docs" / "catalog-events.sql"

IDENTITIES = f"""
[policy]
catalog_refresh = "1h"
catalog_read_timeout = "1s"

[[identities]]
name = "scratcher"
issuer = "dev"
match = {{ sub = "scratcher" }}
role = "{ROLE}"
schemas = ["{SCHEMA}", "public"]

  [[identities.rules]]
  allow = ["ddl", "select"]
  tables = ["{SCHEMA}.*"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.customers"]
  columns = {{ "public.customers" = ["id", "name"] }}
"""


@pytest.fixture(scope="module")
def scratch_role(database) -> Iterator[None]:
    """A role that may create in `scratch_e2e` and, in the database, read every column of
    customers: the policy is the only thing narrowing it."""
    admin = Superuser(database)
    admin.execute(
        f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; DROP ROLE IF EXISTS {ROLE}; CREATE ROLE {ROLE}; "
        f"CREATE SCHEMA {SCHEMA}; GRANT USAGE, CREATE ON SCHEMA {SCHEMA} TO {ROLE}; "
        f"GRANT USAGE ON SCHEMA public TO {ROLE}; GRANT SELECT ON public.customers TO {ROLE}; "
        f"GRANT {ROLE} TO {LOGIN_ROLE}"
    )
    try:
        yield
    finally:
        admin.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; DROP OWNED BY {ROLE}; DROP ROLE {ROLE}")
        admin.close()


@pytest.fixture(scope="module")
def scratch_gateways(scratch_role, launch_gateway, gateway_config) -> tuple[GatewayProcess, GatewayProcess]:
    """Two gateways on the same database: what one does, the other must learn of."""
    config = gateway_config(IDENTITIES)
    return launch_gateway(config_text=config), launch_gateway(config_text=config)


@pytest.fixture
def scratcher(scratch_gateways, call_as) -> Api:
    return call_as(scratch_gateways[0], "scratcher")


@pytest.fixture
def other_scratcher(scratch_gateways, call_as) -> Api:
    return call_as(scratch_gateways[1], "scratcher")


@pytest.fixture
def event_trigger(superuser: Superuser) -> Iterator[None]:
    superuser.execute(EVENTS_SQL.read_text())
    try:
        yield
    finally:
        superuser.execute(
            "DROP EVENT TRIGGER IF EXISTS edge_sql_gateway_ddl_end; "
            "DROP EVENT TRIGGER IF EXISTS edge_sql_gateway_sql_drop; "
            "DROP FUNCTION IF EXISTS public.edge_sql_gateway_catalog_changed()"
        )


@contextlib.contextmanager
def table_created_outside(superuser: Superuser) -> Iterator[None]:
    """`scratch_e2e.customers`, created and dropped by an administrator, not the gateway."""
    superuser.execute(f"CREATE TABLE {SCHEMA}.customers (id int)")
    try:
        yield
    finally:
        superuser.execute(f"DROP TABLE {SCHEMA}.customers")


def ok(api: Api, sql: str) -> dict:
    response = api.query(sql)
    assert response.status_code == 200, response.text
    return response.json()


def resolved(api: Api, sql: str) -> list[str]:
    response = api.post("/v1/explain", {"sql": sql})
    assert response.status_code == 200, response.text
    return response.json()["tables"]


def within(seconds: float, condition: Callable[[], bool], what: str) -> float:
    """How long `condition` took to hold; fails past `seconds`."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > seconds:
            pytest.fail(f"not within {seconds}s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


# ---------------------------------------------------------------------------- the attack, replayed


def test_a_table_dropped_through_the_gateway_no_longer_resolves_its_name(scratcher):
    ok(scratcher, f"create table {SCHEMA}.customers (id int, tenant text, country text)")
    try:
        assert resolved(scratcher, "select id from customers") == [f"{SCHEMA}.customers"]
        ok(scratcher, "select id, tenant, country from customers")  # its own table: allowed
    finally:
        ok(scratcher, f"drop table {SCHEMA}.customers")
    # The very next decision is made with the catalog as it is now.
    assert resolved(scratcher, "select id from customers") == ["public.customers"]
    response = scratcher.query("select id, tenant, country from customers")
    assert response.status_code == 403, response.text


def test_a_view_over_the_moved_name_is_not_created(scratcher):
    response = scratcher.query(f"create view {SCHEMA}.v as select id, tenant, country from customers")
    assert response.status_code == 403, response.text
    assert "write public.customers" in response.json()["error"]["message"]


def test_the_unqualified_name_must_be_qualified_and_then_the_column_rules_apply(scratcher):
    response = scratcher.query("select id, name from customers")
    assert response.status_code == 403, response.text
    assert "can create relations in scratch_e2e" in response.json()["error"]["message"]
    assert ok(scratcher, "select id, name from public.customers order by id limit 1")["rows"]
    assert scratcher.query("select id, tenant from public.customers").status_code == 403


# ---------------------------------------------------------------------------- changes from elsewhere


def test_ddl_through_one_gateway_reaches_another_within_a_second(scratcher, other_scratcher):
    # Earlier tests' DDL reaches it the same way: let it settle first.
    within(1.0, lambda: resolved(other_scratcher, "select id from customers") == ["public.customers"],
           "the other gateway to be current")
    ok(scratcher, f"create table {SCHEMA}.customers (id int)")
    try:
        within(1.0, lambda: resolved(other_scratcher, "select id from customers") == [f"{SCHEMA}.customers"],
               "the other gateway to see the new table")
    finally:
        ok(scratcher, f"drop table {SCHEMA}.customers")
    within(1.0, lambda: resolved(other_scratcher, "select id from customers") == ["public.customers"],
           "the other gateway to see the table gone")


def test_ddl_outside_the_gateway_reaches_it_within_a_second_with_the_event_trigger(
    event_trigger, scratcher, superuser
):
    with table_created_outside(superuser):
        within(1.0, lambda: resolved(scratcher, "select id from customers") == [f"{SCHEMA}.customers"],
               "the snapshot to see a table created by an administrator")
    within(1.0, lambda: resolved(scratcher, "select id from customers") == ["public.customers"],
           "the snapshot to see the table dropped by an administrator")


def test_without_the_event_trigger_outside_changes_wait_for_the_refresh(scratcher, superuser):
    with table_created_outside(superuser):
        time.sleep(1.0)
        assert resolved(scratcher, "select id from customers") == ["public.customers"]  # as documented


def test_the_listening_connection_comes_back_after_it_is_terminated(event_trigger, scratcher, superuser):
    listeners = lambda: superuser.activity("application_name = 'gw catalog listener'")  # noqa: E731
    before = {row["pid"] for row in eventually(listeners, "the gateways' listening connections")}
    superuser.fetch(
        "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity WHERE pid = ANY($1::int[])",
        sorted(before),
    )
    eventually(lambda: {row["pid"] for row in listeners()} - before, "a new listening connection")
    with table_created_outside(superuser):
        within(3.0, lambda: resolved(scratcher, "select id from customers") == [f"{SCHEMA}.customers"],
               "notifications to arrive on the new connection")


def test_decisions_held_after_ddl_go_on_when_the_catalog_cannot_be_read(scratcher, superuser):
    """The listening connections' backends are frozen, so the refresh owed to DDL cannot read
    the catalog: it gives up after `catalog_read_timeout` (1 s here), and decisions go on with
    the snapshot in use."""
    listeners = [row["pid"] for row in superuser.activity("application_name = 'gw catalog listener'")]
    assert listeners
    for pid in listeners:
        os.kill(pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        ok(scratcher, f"create table {SCHEMA}.held (id int)")
        ddl_answered = time.monotonic() - started
        response = scratcher.post("/v1/explain", {"sql": "select id from orders"})
        next_answered = time.monotonic() - started
        assert response.status_code == 200, response.text
    finally:
        for pid in listeners:
            os.kill(pid, signal.SIGCONT)
        ok(scratcher, f"drop table {SCHEMA}.held")
    assert ddl_answered <= 1.0 + 1.0 and next_answered <= 1.0 + 1.0, (ddl_answered, next_answered)

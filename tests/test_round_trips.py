"""A transaction's BEGIN and settings go out with its first statement (`Portal.first` with a
prelude) when the statement was prepared on the connection before: one round trip for the
statement and its setup, one for COMMIT; with its Parse when it is new to the connection.
What that must not change: every row of a result longer than its first batch, the isolation
level asked for, and the connection's state after a statement that failed.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from conftest import PgServer, TlsFiles, run
from gateway.config import DatabaseConfig
from gateway.db import asyncpg_compat as compat
from gateway.db.pool import Database
from gateway.db.session import Transaction, TransactionSettings
from gateway.secrets import SecretStore

SQL = "select $1::int + 1 as n"


async def _round_trips_of_two_transactions(database: Database) -> list[int]:
    """Round trips of two transactions running the same statement on one connection."""
    settings = TransactionSettings("demo_reader", ("public",), 5000, 1000, 30000)
    counts = []
    for _ in range(2):
        transaction = Transaction(database, settings, settings.setup_statements("gw test", "{}"))
        try:
            await transaction.begin()
            before = compat.round_trips(transaction.connection)
            run_ = await transaction.run(SQL, ["1"], 10, 10)
            assert [row["n"] for batch in [b async for b in run_.batches()] for row in batch] == ["2"]
            await transaction.commit()
            counts.append(compat.round_trips(transaction.connection) - before)
        finally:
            await transaction.close()
    return counts


def test_a_statement_prepared_before_runs_with_its_setup_in_one_round_trip(database: PgServer, tls_files: TlsFiles,
                                                                           monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TEST_DB_PASSWORD", database.login_password)
    config = DatabaseConfig(url=database.url("gateway_login", host="localhost"), password_secret="TEST_DB_PASSWORD",
                            sslrootcert=str(tls_files.ca), pool_min=1, pool_max=1)
    pool = Database(config, SecretStore())

    async def scenario() -> list[int]:
        await pool.open()
        try:
            return await _round_trips_of_two_transactions(pool)
        finally:
            await pool.close()

    # New to the connection: the setup with the statement's Parse (a prepare, which the count
    # leaves out), the statement, then COMMIT. Seen before: the statement with its setup, then
    # COMMIT.
    assert run(scenario()) == [2, 2]


def test_a_long_result_of_a_statement_seen_before_arrives_whole(solo_as: Callable):
    inspector = solo_as("inspector")
    for _ in range(3):  # the later runs go out with their setup, their first batch suspended
        response = inspector.query("select g from generate_series(1, 5000) g", rowMode="array")
        assert response.status_code == 200, response.text
        body = response.json()
        assert (body["rowCount"], len(body["rows"]), body["rows"][-1]) == (5000, 5000, [5000])


@pytest.mark.parametrize("level", ["serializable", "repeatable read", "read uncommitted"])
def test_a_statement_new_to_the_connection_runs_at_the_isolation_level_asked_for(solo_as: Callable, level: str):
    """Preparing a statement leaves the server in an implicit transaction that a BEGIN sent
    after it would join too late to set its isolation level."""
    sql = f"select current_setting('transaction_isolation') as level -- {uuid.uuid4()}"
    inspector = solo_as("inspector")
    for _ in range(2):  # new, then prepared before
        response = inspector.post("/v1/batch", {"statements": [{"sql": sql}], "isolation": level})
        assert response.status_code == 200, response.text
        assert response.json()["results"][0]["rows"] == [{"level": level}]


def test_a_statement_that_fails_with_its_setup_leaves_the_connection_clean(solo_as: Callable):
    """The one connection's transaction is rolled back after the failure, not left aborted
    for the next request's BEGIN."""
    inspector = solo_as("inspector")
    sql = "select 10 / $1::int as q"
    assert inspector.query(sql, "2").json()["rows"] == [{"q": 5}]
    failed = inspector.query(sql, "0")  # prepared before: the failure comes with the setup's answers
    assert failed.status_code == 400 and failed.json()["error"]["sqlstate"] == "22012", failed.text
    for _ in range(3):
        assert inspector.query(sql, "5").json()["rows"] == [{"q": 2}]
        assert inspector.query("select current_user as u").json()["rows"] == [{"u": "demo_writer"}]

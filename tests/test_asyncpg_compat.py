"""The asyncpg compatibility module's self-test, against the real PostgreSQL: it passes on the
installed asyncpg, and refuses — before the gateway serves — an asyncpg whose version is
outside the checked range or whose internals no longer behave as the gateway relies on."""

from __future__ import annotations

import asyncpg
import asyncpg.pool
import pytest

from conftest import PgServer, run
from gateway.db import asyncpg_compat as compat


def self_test(database: PgServer) -> None:
    async def go() -> None:
        connection = await database.connect()
        try:
            await compat.self_test(connection)
        finally:
            await connection.close()

    run(go())


def test_the_installed_asyncpg_passes(database):
    self_test(database)


def test_a_version_outside_the_checked_range_is_refused(database, monkeypatch):
    monkeypatch.setattr(asyncpg, "__version__", "0.40.1")
    with pytest.raises(compat.UnsupportedAsyncpg, match=r"0\.40\.1 is outside the range"):
        self_test(database)


@pytest.mark.parametrize(
    ("target", "name", "replacement", "complaint"),
    [
        # The RowDescription is no longer where the garbage collector's references reach it.
        (compat.gc, "get_referents", lambda *_: [], "RowDescription"),
        # The portal's one-round-trip read is gone.
        (asyncpg.protocol.Protocol, "bind_execute", None, "not callable"),
        # A connection method the gateway calls is gone.
        (asyncpg.Connection, "_drop_global_statement_cache", None, "_drop_global_statement_cache"),
        (asyncpg.Connection, "_cancel_current_command", None, "_cancel_current_command"),
        (asyncpg.Connection, "_on_release", None, "_on_release"),
        (asyncpg.pool.PoolConnectionHolder, "release", None, "PoolConnectionHolder.release"),
    ],
)
def test_internals_that_changed_are_refused(database, monkeypatch, target, name, replacement, complaint):
    monkeypatch.setattr(target, name, replacement, raising=False)
    with pytest.raises(compat.UnsupportedAsyncpg, match=complaint):
        self_test(database)


def test_the_gateway_refuses_to_start_on_changed_internals(database, gateway_config, tmp_path, monkeypatch):
    """Through the pool's first connection, as `gateway serve` opens it."""
    from gateway.config import load_config
    from gateway.db.pool import Database

    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config())
    monkeypatch.setenv("TEST_DB_PASSWORD", database.login_password)
    monkeypatch.setenv("TEST_JWT_SECRET", "unused")
    config = load_config(str(path))
    monkeypatch.setattr(asyncpg, "__version__", "0.29.0")

    async def go() -> None:
        db = Database(config.database, config.secret_store())
        try:
            await db.open(size=1)
        finally:
            await db.close()

    with pytest.raises(compat.UnsupportedAsyncpg, match=r"0\.29\.0"):
        run(go())

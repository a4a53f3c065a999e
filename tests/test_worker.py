"""The example Worker (wrangler-like-config/worker) in workerd, the Workers runtime, from npm.

A generated workerd config loads the Worker's `main` module and the Neon driver's ES module
as they are (no bundler), binds GATEWAY_URL and GATEWAY_TOKEN as `wrangler.toml` and
`wrangler secret put` would, and lets the Worker fetch the gateway on loopback; both of the
Worker's routes are then called over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import REPO, GatewayProcess
from gateway.embedded import free_loopback_port

WORKER_DIR = REPO / "wrangler-like-config" / "worker"
NEON_MODULE = Path("node_modules/@neondatabase/serverless/index.mjs")

CONFIG = """using Workerd = import "/workerd/workerd.capnp";

const config :Workerd.Config = (
  services = [
    (name = "orders-worker", worker = .worker),
    # A Worker may fetch only public addresses unless its network service allows more; the
    # gateway here is on loopback.
    (name = "network", network = (allow = ["public", "private", "local"])),
  ],
  sockets = [(name = "http", address = "127.0.0.1:{port}", http = (), service = "orders-worker")],
);

const worker :Workerd.Worker = (
  modules = [
    (name = "index.js", esModule = embed "{main}"),
    # The driver's ESM build imports nothing: it loads as one module, under the name the
    # Worker imports it by.
    (name = "@neondatabase/serverless", esModule = embed "{neon}"),
  ],
  compatibilityDate = "{compatibility_date}",
  bindings = [
    (name = "GATEWAY_URL", text = "{gateway_url}"),
    (name = "GATEWAY_TOKEN", text = "{token}"),
  ],
  globalOutbound = "network",
);
"""


def workerd_config(folder: Path, node_packages: Path, port: int, gateway_url: str, token: str) -> Path:
    """The config for the Worker as its wrangler.toml describes it. `embed` paths are
    relative to the config file."""
    wrangler = tomllib.loads((WORKER_DIR / "wrangler.toml").read_text())
    config = folder / "config.capnp"
    config.write_text(CONFIG.format(
        port=port,
        main=os.path.relpath(WORKER_DIR / wrangler["main"], folder),
        neon=os.path.relpath(node_packages / NEON_MODULE, folder),
        compatibility_date=wrangler["compatibility_date"],
        gateway_url=gateway_url,
        token=token,
    ))  # fmt: skip
    return config


def wait_until_serving(url: str, process: subprocess.Popen, log: Path, deadline: float = 20) -> None:
    give_up = time.monotonic() + deadline
    while time.monotonic() < give_up:
        if process.poll() is not None:
            pytest.fail(f"workerd exited with {process.returncode}:\n{log.read_text(errors='replace')}")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    pytest.fail(f"workerd did not answer within {deadline}s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def worker(node_packages: Path, gateway: GatewayProcess, mint: Callable[..., str],
           tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    folder = tmp_path_factory.mktemp("workerd")
    port = free_loopback_port()
    config = workerd_config(folder, node_packages, port, gateway.url, mint("writer", tenant="acme"))
    log = folder / "workerd.log"
    # npx runs workerd as its child: a session of their own lets both be stopped together.
    process = subprocess.Popen(["npx", "--no", "--", "workerd", "serve", str(config)], cwd=node_packages,
                               stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, process, log)
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(10)


ORDER_2 = [{"id": "2", "status": "new", "total": "3.00"}]


def test_the_worker_reads_through_plain_fetch_to_v1_query(worker, http):
    response = http.get(f"{worker}/orders/2")
    assert response.status_code == 200, response.text
    assert response.json() == {"via": "fetch", "rows": ORDER_2}


def test_the_worker_reads_through_the_neon_driver_on_sql(worker, http):
    response = http.get(f"{worker}/orders/2/neon")
    assert response.status_code == 200, response.text
    assert response.json() == {"via": "neon", "rows": ORDER_2}


@pytest.mark.parametrize("route", ["/orders/3", "/orders/3/neon"])
def test_row_level_security_holds_for_the_workers_token_either_way(worker, http, route):
    """Order 3 is another tenant's."""
    assert http.get(worker + route).json()["rows"] == []

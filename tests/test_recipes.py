"""The recipes in docs/recipes/ run as written against the real gateway: the Cloud Function
through functions-framework's own app with the GCP metadata server as a loopback stand-in,
and the Prefect flow for real, on Prefect's temporary local API, with GitHub Actions' token
endpoint as a loopback stand-in."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from types import ModuleType

import orjson
import psycopg
import pytest

from conftest import ADMIN_SECRET, REPO, credentials_section
from standins import ACTIONS_TOKEN_PATH, actions_token_endpoint, gcp_metadata_server

RECIPES = REPO / "docs" / "recipes"


def load_recipe(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"recipes.{name}", RECIPES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_cloud_function_recipe_lists_and_adds_orders(gateway, mint, monkeypatch):
    import functions_framework

    with gcp_metadata_server(gateway.url, lambda: mint("writer", tenant="acme")) as metadata:
        monkeypatch.setenv("GATEWAY_URL", gateway.url)
        monkeypatch.setenv("GCE_METADATA_HOST", metadata.url.removeprefix("http://"))
        app = functions_framework.create_app(target="handler", source=str(RECIPES / "cloud_function.py"))
        web = app.test_client()
        created = web.post("/", json={"customer_id": 1, "total": "9.90"})
        assert created.status_code == 201, created.text
        listed = web.get("/?status=new")
        assert listed.status_code == 200, listed.text
        assert created.json["id"] in [order["id"] for order in listed.json["orders"]]
        refused = web.post("/", json={"customer_id": 1, "total": "lots"})
        assert refused.status_code == 400
        assert "numeric" in refused.json["error"]
    assert len(metadata.seen) == 1  # one token for every request


@pytest.fixture(scope="module")
def prefect_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect's temporary local API for the module's flow runs (it takes ~15 s to start);
    nothing leaves loopback."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as settings:
        settings.setenv("PREFECT_HOME", str(tmp_path_factory.mktemp("prefect")))
        settings.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        settings.setenv("PREFECT_SERVER_UI_ENABLED", "false")
        settings.delenv("PREFECT_API_URL", raising=False)
        with prefect_test_harness(server_startup_timeout=60):
            yield


def test_prefect_flow_recipe_runs_on_prefect(gateway, mint, monkeypatch, tmp_path, superuser, prefect_api):
    recipe = load_recipe("prefect_flow")
    with actions_token_endpoint("job-request-token", gateway.url, lambda: mint("writer", tenant="acme")) as endpoint:
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{endpoint.url}{ACTIONS_TOKEN_PATH}?api-version=2.0")
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "job-request-token")
        report = recipe.orders_report(gateway.url, str(tmp_path / "orders.ndjson"))
    exported = [orjson.loads(line) for line in (tmp_path / "orders.ndjson").read_bytes().splitlines()]
    assert report["exported"] == len(exported) == sum(item["orders"] for item in report["totals"].values())
    assert {order["status"] for order in exported} == set(report["totals"])
    note = superuser.fetchval("select note from ledger where id = $1", int(report["ledger_id"]))
    assert note.startswith("orders report ") and note.endswith(f"{len(exported)} exported")
    assert len(endpoint.seen) == 1  # one token for the whole run


CUSTOMER_REPORT = """
[[identities]]
name = "customers-report"
issuer = "dev"
match = { sub = "customers-report" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.customers"]

  [identities.credentials]
  ttl = "15m"
  max_ttl = "15m"
"""


def test_prefect_database_url_recipe_reads_through_an_issued_login(
    launch_gateway, gateway_config, database, tls_files, mint, monkeypatch, prefect_api, superuser, request
):
    """pandas is not installed here: the task's read is swapped for psycopg 3 reading through
    the same issued URL; the flow, its task and the login are real."""
    broker = launch_gateway(config_text=gateway_config(CUSTOMER_REPORT + credentials_section(database)),
                            env={ADMIN_SECRET: database.admin_password})
    request.addfinalizer(broker.stop)
    recipe = load_recipe("prefect_database_url")
    users = []

    def read_customers(url: str) -> list[tuple]:
        with psycopg.connect(url, connect_timeout=10) as connection:
            users.append(connection.execute("select current_user").fetchone()[0])
            return connection.execute(recipe.CUSTOMERS_SQL).fetchall()

    monkeypatch.setattr(recipe, "read_customers", read_customers)
    monkeypatch.setenv("GATEWAY_TOKEN", mint("customers-report"))
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL", raising=False)
    monkeypatch.setenv("PGSSLROOTCERT", str(tls_files.ca))  # libpq's CA for the URL's sslmode=verify-full
    report = recipe.customers_report(broker.url)
    assert report == {"customers": superuser.fetchval("select count(*) from customers")}
    assert len(users) == 1 and users[0].startswith("gw_tmp_")
    superuser.execute(f"DROP ROLE {users[0]}")

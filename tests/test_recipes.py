"""The recipes in docs/recipes/ run as written against the real gateway: the Cloud Function
through functions-framework's own app with the GCP metadata server as a loopback stand-in,
and the Prefect flow for real, on Prefect's temporary local API, with GitHub Actions' token
endpoint as a loopback stand-in."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

import orjson

from conftest import REPO
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


def test_prefect_flow_recipe_runs_on_prefect(gateway, mint, monkeypatch, tmp_path, superuser):
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "prefect"))
    monkeypatch.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no traffic beyond loopback
    monkeypatch.setenv("PREFECT_SERVER_UI_ENABLED", "false")
    monkeypatch.delenv("PREFECT_API_URL", raising=False)
    recipe = load_recipe("prefect_flow")
    from prefect.testing.utilities import prefect_test_harness

    with actions_token_endpoint("job-request-token", gateway.url, lambda: mint("writer", tenant="acme")) as endpoint:
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{endpoint.url}{ACTIONS_TOKEN_PATH}?api-version=2.0")
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "job-request-token")
        with prefect_test_harness(server_startup_timeout=60):
            report = recipe.orders_report(gateway.url, str(tmp_path / "orders.ndjson"))
    exported = [orjson.loads(line) for line in (tmp_path / "orders.ndjson").read_bytes().splitlines()]
    assert report["exported"] == len(exported) == sum(item["orders"] for item in report["totals"].values())
    assert {order["status"] for order in exported} == set(report["totals"])
    note = superuser.fetchval("select note from ledger where id = $1", int(report["ledger_id"]))
    assert note.startswith("orders report ") and note.endswith(f"{len(exported)} exported")
    assert len(endpoint.seen) == 1  # one token for the whole run

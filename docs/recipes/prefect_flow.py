"""Recipe: a Prefect flow that reports on orders through the gateway, storing no credential.
In GitHub Actions its token is the job's OIDC token (the workflow needs
`permissions: id-token: write`); on any other worker it is what the platform puts in
GATEWAY_TOKEN (for a Kubernetes projected token, use `FileToken(path)` instead).

    python docs/recipes/prefect_flow.py https://gateway.example.com
"""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path
from typing import Any

import orjson
from prefect import flow, task
from prefect.runtime import flow_run

from gateway_client import EnvToken, GatewayClient, GithubActionsToken


@functools.cache
def gateway(url: str) -> GatewayClient:
    """One client per worker process, shared by the flow's tasks (they run in threads): its
    connections stay open and a fetched token is kept until shortly before it expires."""
    if os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
        return GatewayClient(url, GithubActionsToken(audience=url))
    return GatewayClient(url, EnvToken("GATEWAY_TOKEN"))


@task(retries=2, retry_delay_seconds=5)
def totals_by_status(gateway_url: str) -> dict[str, dict[str, Any]]:
    result = gateway(gateway_url).query(
        "select status, count(*) as orders, sum(total) as total from orders group by status order by status",
        idempotent=True,  # a read: safe to retry after any 429 or 503
    )
    return {row["status"]: {"orders": int(row["orders"]), "total": row["total"]} for row in result.rows}


@task(retries=2, retry_delay_seconds=5)
def export_orders(gateway_url: str, path: Path) -> int:
    """Every order to an NDJSON file as it streams in: memory stays flat at any size."""
    sql = "select id, customer_id, status, total, created_at from orders order by id"
    with gateway(gateway_url).stream(sql, idempotent=True) as rows, path.open("wb") as out:
        for row in rows:
            out.write(orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE))
    return rows.row_count or 0


@task
def record_report(gateway_url: str, totals: dict[str, dict[str, Any]], exported: int) -> str:
    """A line in the ledger saying what this run saw. Not idempotent, so no task retries."""
    counts = ", ".join(f"{status}: {numbers['orders']}" for status, numbers in totals.items())
    note = f"orders report {flow_run.id}: {counts}; {exported} exported"
    result = gateway(gateway_url).query("insert into ledger (note) values ($1) returning id", note)
    return result.rows[0]["id"]


@flow(name="orders-report")
def orders_report(gateway_url: str, export_to: str = "orders.ndjson") -> dict[str, Any]:
    totals = totals_by_status(gateway_url)
    exported = export_orders(gateway_url, Path(export_to))
    ledger_id = record_report(gateway_url, totals, exported)
    return {"totals": totals, "exported": exported, "ledger_id": ledger_id}


if __name__ == "__main__":
    print(orders_report(sys.argv[1]))

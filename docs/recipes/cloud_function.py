"""Recipe: an HTTP Cloud Function (2nd gen, functions-framework) that reads and writes orders
through the gateway as the function's own service account. It stores no credential: each
token is the service account's identity token from the metadata server, minted for the
gateway's URL, and kept until shortly before it expires.

    gcloud functions deploy orders-api --gen2 --runtime=python312 --trigger-http \\
        --entry-point=handler --service-account=orders-fn@PROJECT.iam.gserviceaccount.com \\
        --set-env-vars=GATEWAY_URL=https://gateway.example.com
"""

from __future__ import annotations

import functools
import os
from typing import Any

import flask
import functions_framework

from gateway_client import BadRequest, GatewayClient, GcpIdentityToken, SqlError


@functools.cache
def gateway() -> GatewayClient:
    """One client per instance, reused by every request it serves: warm connections, and
    one metadata-server round trip per token lifetime rather than per request."""
    url = os.environ["GATEWAY_URL"]
    return GatewayClient(url, GcpIdentityToken(audience=url))


@functions_framework.http
def handler(request: flask.Request) -> tuple[dict[str, Any], int]:
    """GET ?status=new lists that status's orders; POST {"customer_id", "total"} adds one."""
    try:
        if request.method == "POST":
            return add_order(request.get_json(silent=True) or {}), 201
        return list_orders(request.args.get("status", "new")), 200
    except (BadRequest, SqlError) as error:  # the caller's input did not fit; anything else is ours: 500
        return {"error": error.message}, 400


def list_orders(status: str) -> dict[str, Any]:
    result = gateway().query(
        "select id, status, total, created_at from orders where status = $1 order by id",
        status,
        idempotent=True,  # a read: safe to retry after any 429 or 503
    )
    return {"orders": result.rows, "truncated": result.truncated}


def add_order(order: dict[str, Any]) -> dict[str, Any]:
    # Not idempotent: retried only on answers that say nothing ran (rate_limited, overloaded).
    result = gateway().query(
        "insert into orders (customer_id, total) values ($1, $2) returning id",
        order.get("customer_id"),
        order.get("total"),
    )
    return {"id": result.rows[0]["id"]}

"""The baseline for `bench/http_bench.py`: Starlette + asyncpg running the caller's statement.

Nothing else: no authentication, policy, transaction, role switch or audit; asyncpg's pool
with its default settings. It reads its connection string from `BARE_APP_DSN`. Never deploy it.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import asyncpg
import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

DSN_VARIABLE = "BARE_APP_DSN"


def encode_value(value: Any) -> str:
    """orjson's fallback: numeric comes back from asyncpg as Decimal and goes out as a string."""
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"cannot encode {type(value).__name__}")


async def query(request: Request) -> Response:
    body = orjson.loads(await request.body())
    rows = await request.app.state.pool.fetch(body["sql"], *body.get("params", []))
    payload = {"rowCount": len(rows), "rows": [dict(row) for row in rows]}
    return Response(orjson.dumps(payload, default=encode_value), media_type="application/json")


async def healthz(request: Request) -> Response:
    return PlainTextResponse("ok")


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    async with asyncpg.create_pool(os.environ[DSN_VARIABLE]) as pool:
        app.state.pool = pool
        yield


app = Starlette(
    routes=[Route("/v1/query", query, methods=["POST"]), Route("/healthz", healthz)],
    lifespan=lifespan,
)

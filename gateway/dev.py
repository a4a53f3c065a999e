"""`gateway dev`: the gateway on an embedded PostgreSQL with a demo schema, in one command.

Owns the dev cache directory (the data directory and generated secrets survive between
runs), the demo database's first-time setup, and the banner with a ready token and
examples. Ctrl-C stops the gateway, then the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import secrets as random_source
import shutil
from importlib import resources
from pathlib import Path

import asyncpg
import platformdirs

from gateway.auth import mint_hs256_token
from gateway.config import GatewayConfig, load_config
from gateway.embedded import LocalPostgres, find_bindir, free_loopback_port

DEV_DATABASE = "app"
DEV_LOGIN = "gateway_login"
DEMO_ROLES = ("demo_reader", "demo_writer")
TOKEN_TTL_SECONDS = 24 * 3600


def cache_dir() -> Path:
    return Path(os.environ.get("GATEWAY_DEV_HOME") or platformdirs.user_cache_dir("edge-sql-gateway")) / "dev"


def _dev_secrets(home: Path) -> dict[str, str]:
    """Generated once per cache directory; the file is readable by this user only."""
    path = home / "secrets.json"
    if path.exists():
        return json.loads(path.read_text())
    values = {name: random_source.token_urlsafe(24) for name in ("superuser", "login", "jwt")}
    home.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as handle:
        json.dump(values, handle)
    return values


def _packaged(name: str) -> Path:
    return Path(str(resources.files("gateway") / "dev_assets" / name))


async def _create_demo(port: int, passwords: dict[str, str]) -> None:
    admin = f"postgresql://postgres@127.0.0.1:{port}"
    server = await asyncpg.connect(f"{admin}/postgres", password=passwords["superuser"], ssl=False)
    try:
        if await server.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DEV_DATABASE):
            return
        await server.execute(f"CREATE DATABASE {DEV_DATABASE}")
    finally:
        await server.close()
    database = await asyncpg.connect(f"{admin}/{DEV_DATABASE}", password=passwords["superuser"], ssl=False)
    try:
        async with database.transaction():
            await database.execute(_packaged("demo.sql").read_text())
            await database.execute(
                f"CREATE ROLE {DEV_LOGIN} LOGIN NOINHERIT PASSWORD '{passwords['login']}';"
                f"GRANT {', '.join(DEMO_ROLES)} TO {DEV_LOGIN};"
                f"GRANT CONNECT ON DATABASE {DEV_DATABASE} TO {DEV_LOGIN};"
            )
    finally:
        await database.close()


def dev_config(db_port: int, http_port: int) -> GatewayConfig:
    config = load_config(_packaged("gateway.dev.toml"))
    url = f"postgresql://{DEV_LOGIN}@127.0.0.1:{db_port}/{DEV_DATABASE}"
    return dataclasses.replace(
        config,
        database=dataclasses.replace(config.database, url=url),
        server=dataclasses.replace(config.server, port=http_port),
    )


def banner(config: GatewayConfig, token: str) -> str:
    base = f"http://{config.server.host}:{config.server.port}"
    body = '{"sql": "select id, status, total from orders where status = $1", "params": ["new"]}'
    return f"""
edge-sql-gateway dev is running at {base}
  database: embedded PostgreSQL, data in {cache_dir()}
  identity "orders-worker" (role demo_writer, tenant "acme"); token valid 24h:

{token}

Try it:

  curl -s {base}/v1/query \\
    -H 'Authorization: Bearer {token}' \\
    -d '{body}'

From a Cloudflare Worker:

  const res = await fetch(env.GATEWAY_URL + "/v1/query", {{
    method: "POST",
    headers: {{ Authorization: `Bearer ${{env.GATEWAY_TOKEN}}` }},
    body: JSON.stringify({{ sql: "select * from orders where id = $1", params: [1] }}),
  }});
  const {{ rows }} = await res.json();

Press Ctrl-C to stop the gateway and the database.
"""


def run_dev(port: int = 8080, reset: bool = False) -> int:
    from gateway.server import serve

    home = cache_dir()
    cluster = LocalPostgres(home / "pgdata", find_bindir())
    if reset:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
    passwords = _dev_secrets(home)
    if not cluster.initialized:
        print("creating the demo database (first run only)...", flush=True)
        cluster.initdb("postgres", passwords["superuser"])
    cluster.stop()  # a server left running by an interrupted run
    db_port = free_loopback_port()
    cluster.configure(db_port, hba_lines=["host all all 127.0.0.1/32 scram-sha-256"])
    cluster.start()
    try:
        asyncio.run(_create_demo(db_port, passwords))
        os.environ["GATEWAY_DEV_DB_PASSWORD"] = passwords["login"]
        os.environ["GATEWAY_DEV_SECRET"] = passwords["jwt"]
        config = dev_config(db_port, port)
        token = mint_hs256_token(
            config.issuer("dev"), passwords["jwt"], "orders-worker", TOKEN_TTL_SECONDS, {"tenant": "acme"}
        )
        print(banner(config, token), flush=True)
        return serve(config, host=config.server.host, port=port, workers=1, config_path=None, env=None)
    finally:
        cluster.stop()
        print("stopped the gateway and the database.", flush=True)

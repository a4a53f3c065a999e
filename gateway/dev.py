"""`gateway dev`: the gateway on an embedded PostgreSQL with a demo schema, in one command.

Owns the dev cache directory (the data directory and generated secrets survive between
runs) and its lock (one `gateway dev` per directory), the demo database's first-time setup,
and the banner with a ready token and examples. Ctrl-C stops the gateway, then the database.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import json
import os
import secrets as random_source
import shutil
import socket
import sys
from importlib import resources
from pathlib import Path
from typing import TextIO

import asyncpg
import platformdirs

from gateway.auth import mint_hs256_token
from gateway.config import GatewayConfig, load_config
from gateway.embedded import LocalPostgres, demo_bindir, free_loopback_port

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


def _lock_cache_dir(home: Path) -> TextIO | None:
    """An exclusive lock on the dev directory, held as long as the returned file stays open
    (the kernel drops it when the process ends, however it ends); None when another process
    holds it. The lock file lies beside the directory, so `--reset` cannot delete it."""
    home.parent.mkdir(parents=True, exist_ok=True)
    handle = (home.parent / f"{home.name}.lock").open("a+")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")  # for the message the next one prints
    handle.flush()
    return handle


def _lock_holder(home: Path) -> str:
    return (home.parent / f"{home.name}.lock").read_text().strip() or "unknown"


def _port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds it
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


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

From an AI agent (MCP over Streamable HTTP): the URL {base}/mcp, the header
Authorization: Bearer <the token above>.

Press Ctrl-C to stop the gateway and the database.
"""


def run_dev(port: int = 8080, reset: bool = False) -> int:
    home = cache_dir()
    lock = _lock_cache_dir(home)
    if lock is None:
        print(
            f"gateway dev: another gateway dev (pid {_lock_holder(home)}) is running with the data in {home}; "
            "stop it first (Ctrl-C), or set GATEWAY_DEV_HOME to use another directory",
            file=sys.stderr,
        )
        return 1
    with lock:
        return _run_locked(home, port, reset)


def _run_locked(home: Path, port: int, reset: bool) -> int:
    host = load_config(_packaged("gateway.dev.toml")).server.host
    if not _port_is_free(host, port):  # before the database starts and the banner claims the port
        print(f"gateway dev: {host}:{port} is in use; choose another port with --port", file=sys.stderr)
        return 1
    cluster = LocalPostgres(home / "pgdata", demo_bindir())
    from gateway.server import serve  # imported once the server binaries are known to be there: a slow import

    if reset:
        cluster.stop()
        shutil.rmtree(home, ignore_errors=True)
    passwords = _dev_secrets(home)
    if not cluster.initialized:
        print("creating the demo database (first run only)...", flush=True)
        cluster.initdb("postgres", passwords["superuser"])
    cluster.stop()  # a server left running by an interrupted run: with the lock held, no one else's
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

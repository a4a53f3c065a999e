"""`gateway dev`: the gateway on an embedded PostgreSQL with a demo schema, in one command;
with `--config FILE`, the user's own configuration against the same embedded database.

Owns the dev cache directory (the data directory, generated secrets and the audit file
survive between runs) and its lock (one `gateway dev` per directory), the demo database's
first-time setup, what of a user's configuration `dev` replaces (`dev_config`), the roles and
grants a user's identities need there, and the banner with ready tokens, a `psql` URL and
examples. Ctrl-C stops the gateway, then the database.
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
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TextIO

import asyncpg
import platformdirs

from gateway.auth import mint_hs256_token
from gateway.config import AuditConfig, ConfigError, GatewayConfig, load_config
from gateway.embedded import LocalPostgres, demo_bindir, free_loopback_port
from gateway.secrets import MissingSecret

DEV_DATABASE = "app"
DEV_HOST = "127.0.0.1"  # the gateway and the embedded server listen on loopback only
DEV_LOGIN = "gateway_login"
DEMO_ROLES = ("demo_reader", "demo_writer")
TOKEN_TTL_SECONDS = 24 * 3600
DB_PASSWORD_SECRET = "GATEWAY_DEV_DB_PASSWORD"
AUDIT_FILE = "audit.jsonl"
# The demo's printed token is of tenant "acme": row-level security on orders keys on it.
DEMO_CLAIMS = {"orders-worker": {"tenant": "acme"}}


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
    admin = f"postgresql://postgres@{DEV_HOST}:{port}"
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


def dev_config(source: Path, db_port: int, http_port: int, home: Path) -> GatewayConfig:
    """`source` as `gateway dev` runs it: [database] is the embedded server's (the dev login and
    its password, no TLS: every other setting, pool sizes and timeouts, is kept), the gateway
    listens on loopback at `http_port`, and audit records go to a file in `home`, a short line
    per request to the terminal. A [credentials] section is refused: its admin login and
    temporary logins have no counterpart in the embedded database."""
    config = load_config(source)
    if config.credentials is not None:
        raise ConfigError(f"{source}: [credentials] is not supported by gateway dev; use gateway serve")
    database = dataclasses.replace(
        config.database,
        url=f"postgresql://{DEV_LOGIN}@{DEV_HOST}:{db_port}/{DEV_DATABASE}",
        password_secret=DB_PASSWORD_SECRET,
        login_secret=None,
        sslmode="disable",  # loopback only; the embedded server is built without TLS
        sslrootcert=None,
        sslcert=None,
        sslkey_secret=None,
    )
    return dataclasses.replace(
        config,
        database=database,
        server=dataclasses.replace(config.server, host=DEV_HOST, port=http_port, workers=1),
        audit=AuditConfig(sink=str(home / AUDIT_FILE), chain=config.audit.chain, summary=True),
    )


def supply_secrets(config: GatewayConfig, passwords: dict[str, str]) -> None:
    """The embedded database's password, and dev's signing secret for every HS256 issuer
    whose secret the configuration's own store does not hold (environment or secrets_dir)."""
    os.environ[DB_PASSWORD_SECRET] = passwords["login"]
    store = config.secret_store()
    for issuer in config.issuers:
        if issuer.hs256_secret is None:
            continue
        try:
            store.get(issuer.hs256_secret)
        except MissingSecret:
            os.environ[issuer.hs256_secret] = passwords["jwt"]


async def _grant_identity_roles(port: int, passwords: dict[str, str], config: GatewayConfig) -> None:
    """Each identity role the embedded database lacks is created (NOLOGIN) and granted to the
    dev login, and given what the rules allow of the tables that exist. Nothing is revoked:
    the demo roles keep what the demo needs, whatever a user's rules say of them."""
    from gateway.db.privileges import read_privileges
    from gateway.grants import plan_grants, quoted

    roles = config.identity_roles()
    database = await asyncpg.connect(_superuser_url(port), password=passwords["superuser"], ssl=False)
    try:
        async with database.transaction():
            present = await read_privileges(database, roles)
            for role in sorted(present.missing_roles):
                await database.execute(f"CREATE ROLE {quoted(role)} NOLOGIN; GRANT {quoted(role)} TO {DEV_LOGIN}")
            plan = plan_grants(config, await read_privileges(database, roles))
            for statement in plan.statements:
                if statement.startswith("GRANT "):
                    await database.execute(statement)
    finally:
        await database.close()


def _superuser_url(port: int, password: str | None = None) -> str:
    who = f"postgres:{password}" if password else "postgres"
    return f"postgresql://{who}@{DEV_HOST}:{port}/{DEV_DATABASE}"


@dataclass(frozen=True)
class DevToken:
    identity: str
    token: str
    ttl: float  # seconds
    claims: dict[str, str]

    def describe(self) -> str:
        lifetime = f"{self.ttl / 3600:g}h" if self.ttl % 3600 == 0 else f"{self.ttl:g}s"
        extra = "".join(f', {name} "{value}"' for name, value in self.claims.items())
        return f'  identity "{self.identity}"{extra}; token valid {lifetime}:\n\n{self.token}\n'


def dev_tokens(config: GatewayConfig, demo: bool) -> list[DevToken]:
    """A token for each identity of an HS256 issuer matched by `sub` alone (which a token of
    that subject reaches), valid 24 hours or the issuer's max_token_lifetime if shorter; the
    demo's carries its tenant claim."""
    tokens = []
    store = config.secret_store()
    for identity in config.identities:
        issuer = config.issuer(identity.issuer)
        sub = identity.match.get("sub")
        if issuer.hs256_secret is None or set(identity.match) != {"sub"} or not isinstance(sub, str):
            continue
        claims = DEMO_CLAIMS.get(identity.name, {}) if demo else {}
        ttl = min(TOKEN_TTL_SECONDS, issuer.max_token_lifetime)
        token = mint_hs256_token(issuer, store.get(issuer.hs256_secret), sub, ttl, claims)
        tokens.append(DevToken(identity.name, token, ttl, claims))
    return tokens


def banner(config: GatewayConfig, tokens: list[DevToken], home: Path, psql_url: str) -> str:
    base = f"http://{config.server.host}:{config.server.port}"
    body = '{"sql": "select id, status, total from orders where status = $1", "params": ["new"]}'
    listed = "\n".join(token.describe() for token in tokens)
    token = tokens[0].token if tokens else "<token>"
    return f"""
edge-sql-gateway dev is running at {base}
  configuration: {config.source}
  database: embedded PostgreSQL, data in {home}
  psql (superuser, loopback only): psql '{psql_url}'
  secrets (database passwords, token signing secret): {home / "secrets.json"}
  audit records: {home / AUDIT_FILE}; below, one line per request

{listed or "  no identity of an HS256 issuer matched by sub alone: no token printed"}
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


def run_dev(port: int = 8080, reset: bool = False, config_path: Path | None = None) -> int:
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
        return _run_locked(home, port, reset, config_path)


def _run_locked(home: Path, port: int, reset: bool, config_path: Path | None) -> int:
    source = config_path or _packaged("gateway.dev.toml")
    try:
        dev_config(source, 0, port, home)  # a configuration error is reported before anything starts
    except ConfigError as error:
        print(f"gateway dev: {error}", file=sys.stderr)
        return 2
    if not _port_is_free(DEV_HOST, port):  # before the database starts and the banner claims the port
        print(f"gateway dev: {DEV_HOST}:{port} is in use; choose another port with --port", file=sys.stderr)
        return 1
    cluster = LocalPostgres(home / "pgdata", demo_bindir())  # no server binaries: fails here, before any slow import
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
        config = dev_config(source, db_port, port, home)
        if config_path is not None:
            asyncio.run(_grant_identity_roles(db_port, passwords, config))
        supply_secrets(config, passwords)
        tokens = dev_tokens(config, demo=config_path is None)
        print(banner(config, tokens, home, _superuser_url(db_port, passwords["superuser"])), flush=True)
        from gateway.server import serve  # the web stack, imported once there is something to serve

        return serve(config, host=config.server.host, port=port, workers=1, config_path=None, env=None)
    finally:
        cluster.stop()
        print("stopped the gateway and the database.", flush=True)

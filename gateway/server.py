"""Running the app under uvicorn: a pre-flight check of the database, then one process or
several workers (each with its own pool, limits and token cache), and the metrics listener
when `[metrics] listen` gives /metrics an address of its own.
"""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any
from wsgiref.simple_server import WSGIServer

import asyncpg
import uvicorn
from prometheus_client import start_http_server

from gateway.api import Front, create_app
from gateway.approvals import TABLE as APPROVALS_TABLE
from gateway.approvals import ApprovalStore
from gateway.config import CredentialsConfig, GatewayConfig, MetricsConfig, load_config
from gateway.db.admin import AdminRoleError, check_admin_can_grant, check_admin_role, connect_admin
from gateway.db.pool import CONNECTION_ERRORS, Database, LoginRoleError, PoolerError
from gateway.errors import GatewayError
from gateway.logs import configure_logging
from gateway.metrics import MULTIPROCESS_DIR, multiprocess_registry


async def preflight(config: GatewayConfig) -> str | None:
    """Why the gateway cannot serve with this configuration, or None."""
    database = Database(config.database, config.secret_store())
    try:
        await database.open(size=1)
        if config.database.check_login_role:
            await database.check_login_role(config.identity_roles())
        if config.asks_for_approval() and not await ApprovalStore(database, config.approvals.schema).exists():
            return (
                f"refusing to start: some rule has approval, but {config.approvals.schema}.{APPROVALS_TABLE} does "
                "not exist (or the login may not use it): run `gateway setup --config FILE` with the admin login"
            )
    except (LoginRoleError, PoolerError) as error:
        return f"refusing to start: {error}"
    except (GatewayError, *CONNECTION_ERRORS) as error:
        return f"cannot reach the database: {error}"
    finally:
        await database.close()
    if config.credentials is not None:
        return await _admin_preflight(config, config.credentials)
    return None


async def _admin_preflight(config: GatewayConfig, credentials: CredentialsConfig) -> str | None:
    try:
        connection = await connect_admin(config, credentials)
    except asyncpg.exceptions.ProtocolViolationError as error:  # PgBouncer refuses its timeouts at login
        return (
            f"cannot reach the database as the credentials admin login: {error} (admin_url must reach "
            "PostgreSQL itself, not PgBouncer: see docs/pgbouncer.md)"
        )
    except CONNECTION_ERRORS as error:
        return f"cannot reach the database as the credentials admin login: {error}"
    try:
        await check_admin_role(connection, credentials.admin_timeout)
        await check_admin_can_grant(connection, config.credential_roles(), credentials.admin_timeout)
    except AdminRoleError as error:
        return f"refusing to start: {error}"
    finally:
        await connection.close()
    return None


def app_from_environment() -> Front:
    """The app for uvicorn's worker processes, which re-read the configuration file."""
    config = load_config(os.environ["GATEWAY_CONFIG"], env=os.environ.get("GATEWAY_ENV") or None)
    configure_logging(config.logging.level, config.server.replica)
    return create_app(config)


def start_metrics_listener(config: MetricsConfig, app: Front | None) -> WSGIServer | None:
    """prometheus-client's own server, in a thread of the process that runs `gateway serve`:
    with one worker (`app`) that is the worker, and the pool gauges are read from this thread;
    with several (`app` None) it is uvicorn's supervisor, which serves no request and sums the
    workers' files, so a scrape is answered even while every worker is busy."""
    if config.address is None:
        return None
    registry = multiprocess_registry() if app is None else app.state.pipeline.metrics.registry
    host, port = config.address
    server, _ = start_http_server(port, host, registry=registry)
    return server


def serve(
    config: GatewayConfig, *, host: str, port: int, workers: int, config_path: str | None, env: str | None
) -> int:
    configure_logging(config.logging.level, config.server.replica)
    if workers > 1 and config.metrics.listen is not None and not os.environ.get(MULTIPROCESS_DIR):
        print(
            f"gateway: [metrics] listen with --workers {workers} needs {MULTIPROCESS_DIR}, an empty directory "
            "the workers share, so the metrics listener can sum them (see README)",
            file=sys.stderr,
        )
        return 1
    problem = asyncio.run(preflight(config))
    if problem:
        print(f"gateway: {problem}", file=sys.stderr)
        return 1
    options: dict[str, Any] = dict(
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # the audit's clientIp is the peer; forwarded headers are not trusted
        lifespan="on",
        log_config=None,  # uvicorn's loggers go through the gateway's JSON handler
        log_level=config.logging.level,
        # Open requests then get cut; the app's shutdown rolls them back and audits them.
        timeout_graceful_shutdown=config.server.shutdown_grace,
    )
    app: Front | None = None
    if workers > 1:
        assert config_path is not None
        os.environ["GATEWAY_CONFIG"] = os.path.abspath(config_path)
        if env:
            os.environ["GATEWAY_ENV"] = env
        options.update(factory=True, workers=workers)
    else:
        app = create_app(config)
    try:
        metrics_listener = start_metrics_listener(config.metrics, app)
    except OSError as error:
        print(f"gateway: cannot listen for metrics on {config.metrics.listen}: {error.strerror}", file=sys.stderr)
        return 1
    try:
        uvicorn.run(app or "gateway.server:app_from_environment", **options)
    finally:
        if metrics_listener is not None:
            metrics_listener.shutdown()
            metrics_listener.server_close()
    return 0

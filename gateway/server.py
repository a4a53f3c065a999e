"""Running the app under uvicorn: a pre-flight check of the database, then one process or
several workers (each with its own pool, limits and token cache).
"""

from __future__ import annotations

import asyncio
import os
import sys

import uvicorn
from starlette.applications import Starlette

from gateway.api import create_app
from gateway.config import GatewayConfig, load_config
from gateway.db.pool import CONNECTION_ERRORS, Database, LoginRoleError
from gateway.errors import GatewayError
from gateway.logs import configure_logging


async def preflight(config: GatewayConfig) -> str | None:
    """Why the gateway cannot serve with this configuration, or None."""
    database = Database(config.database, config.secret_store())
    try:
        await database.open(size=1)
        if config.database.check_login_role:
            await database.check_login_role(config.identity_roles())
    except LoginRoleError as error:
        return f"refusing to start: {error}"
    except (GatewayError, *CONNECTION_ERRORS) as error:
        return f"cannot reach the database: {error}"
    finally:
        await database.close()
    return None


def app_from_environment() -> Starlette:
    """The app for uvicorn's worker processes, which re-read the configuration file."""
    config = load_config(os.environ["GATEWAY_CONFIG"], env=os.environ.get("GATEWAY_ENV") or None)
    configure_logging(config.logging.level)
    return create_app(config)


def serve(
    config: GatewayConfig, *, host: str, port: int, workers: int, config_path: str | None, env: str | None
) -> int:
    configure_logging(config.logging.level)
    problem = asyncio.run(preflight(config))
    if problem:
        print(f"gateway: {problem}", file=sys.stderr)
        return 1
    options = dict(
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        access_log=False,
        proxy_headers=False,  # the audit's clientIp is the peer; forwarded headers are not trusted
        lifespan="on",
        log_config=None,  # uvicorn's loggers go through the gateway's JSON handler
        log_level=config.logging.level,
        timeout_graceful_shutdown=10,
    )
    if workers > 1:
        assert config_path is not None
        os.environ["GATEWAY_CONFIG"] = os.path.abspath(config_path)
        if env:
            os.environ["GATEWAY_ENV"] = env
        uvicorn.run("gateway.server:app_from_environment", factory=True, workers=workers, **options)
    else:
        uvicorn.run(create_app(config), **options)
    return 0

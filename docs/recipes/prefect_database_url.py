"""Recipe: a Prefect flow that reads customers into a pandas DataFrame over a real PostgreSQL
connection, with a 15-minute login the gateway issues to the flow's identity
(`POST /v1/credentials`) instead of a stored password. The token is the same as in
prefect_flow.py: the job's OIDC token in GitHub Actions, else GATEWAY_TOKEN.

    pip install ./clients/python prefect pandas sqlalchemy 'psycopg[binary]'   # the client, from a clone
    python docs/recipes/prefect_database_url.py https://gateway.example.com

The URL never leaves the task that takes it: it is no task's result or parameter, so
Prefect stores and logs nothing that logs in. The login expires on its own; the sessions it
opened end when it does.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

from prefect import flow, task

from gateway_client import EnvToken, GatewayClient, GithubActionsToken

CUSTOMERS_SQL = "select id, name, country from customers order by id"


@functools.cache
def gateway(url: str) -> GatewayClient:
    if os.environ.get("ACTIONS_ID_TOKEN_REQUEST_URL"):
        return GatewayClient(url, GithubActionsToken(audience=url))
    return GatewayClient(url, EnvToken("GATEWAY_TOKEN"))


def read_customers(url: str) -> Any:
    """The customers as a DataFrame, read with SQLAlchemy on psycopg 3 (the URL's
    `sslmode=verify-full` checks the server's certificate against the system's CAs, or
    PGSSLROOTCERT)."""
    import pandas
    import sqlalchemy

    engine = sqlalchemy.create_engine(url.replace("postgresql://", "postgresql+psycopg://", 1))
    try:
        return pandas.read_sql_query(CUSTOMERS_SQL, engine)
    finally:
        engine.dispose()


@task(retries=2, retry_delay_seconds=5)
def customers_frame(gateway_url: str) -> Any:
    """A new 15-minute login per try (the identity's max_active bounds how many are alive)."""
    login = gateway(gateway_url).credentials(ttl="15m")
    return read_customers(login.url)


@flow(name="customers-frame")
def customers_report(gateway_url: str) -> dict[str, Any]:
    frame = customers_frame(gateway_url)
    return {"customers": len(frame)}


if __name__ == "__main__":
    print(customers_report(sys.argv[1]))

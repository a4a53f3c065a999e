"""Python client of the gateway's native API, for Cloud Functions, Prefect flows and scripts.

`GatewayClient` (blocking) and `AsyncGatewayClient` (asyncio) send `query`, `batch`,
`stream` (NDJSON, row by row), `explain`, `whoami` and `credentials` (a temporary PostgreSQL
login), with a bearer token from a token provider, and raise the gateway's errors as typed
exceptions (`GatewayError` and one subclass per error code); a statement held for approval
raises `AwaitingApproval`, with the request's id. This package owns the client
side only and imports nothing from the server.

    from gateway_client import GatewayClient, GcpIdentityToken

    url = "https://gateway.example.com"
    with GatewayClient(url, GcpIdentityToken(audience=url)) as gateway:
        orders = gateway.query("select id, total from orders where status = $1", "new").rows

Retries: 429 and 503 answers, after their `Retry-After`, within `retries` tries and
`max_retry_wait` seconds; see `gateway_client._retry` for which calls retry which answers.
"""

from gateway_client._async import AsyncGatewayClient, AsyncRowStream
from gateway_client._errors import (
    BadRequest,
    CredentialsNotAllowed,
    DatabaseUnavailable,
    GatewayError,
    IncompleteResponse,
    NoIdentity,
    NotFound,
    Overloaded,
    PayloadTooLarge,
    PolicyDenied,
    RateLimited,
    ResponseTooLarge,
    SerializationFailure,
    SqlError,
    StatementTimeout,
    TokenError,
    TooManyCredentials,
    Unauthenticated,
)
from gateway_client._results import AwaitingApproval, Column, DatabaseCredential, Explanation, QueryResult
from gateway_client._sync import GatewayClient, RowStream
from gateway_client._tokens import (
    EnvToken,
    FetchedToken,
    FileToken,
    GcpIdentityToken,
    GithubActionsToken,
    StaticToken,
    TokenProvider,
)

__all__ = [
    "AsyncGatewayClient",
    "AsyncRowStream",
    "AwaitingApproval",
    "BadRequest",
    "Column",
    "CredentialsNotAllowed",
    "DatabaseCredential",
    "DatabaseUnavailable",
    "EnvToken",
    "Explanation",
    "FetchedToken",
    "FileToken",
    "GatewayClient",
    "GatewayError",
    "GcpIdentityToken",
    "GithubActionsToken",
    "IncompleteResponse",
    "NoIdentity",
    "NotFound",
    "Overloaded",
    "PayloadTooLarge",
    "PolicyDenied",
    "QueryResult",
    "RateLimited",
    "ResponseTooLarge",
    "RowStream",
    "SerializationFailure",
    "SqlError",
    "StatementTimeout",
    "StaticToken",
    "TokenError",
    "TokenProvider",
    "TooManyCredentials",
    "Unauthenticated",
]

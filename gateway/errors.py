"""Errors a request can end in: each a value with a stable code, an HTTP status and a message.

Raised where they are detected (auth, identity, policy, limits, db); turned into wire
responses in one place per wire format (`gateway.api`). Nothing here knows about HTTP
frameworks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ErrorKind:
    """One row of the error table: what a caller can be answered, and when."""

    status: int
    code: str
    when: str  # Markdown, for the README's table; the first sentence serves the OpenAPI document
    answered: bool = True  # False: only the audit record carries it (the response had started, or nobody reads it)
    headers: tuple[str, ...] = ()  # what every answer with this code carries (the OpenAPI document requires them)

    @property
    def summary(self) -> str:
        return self.when.split(";")[0].split(" (")[0]


# Every code an answer or audit record can carry. The README's "Errors" table and the OpenAPI
# document are made from it (tests/test_error_table.py keeps them equal).
ERROR_TABLE: tuple[ErrorKind, ...] = (
    ErrorKind(
        400,
        "bad_request",
        "malformed JSON or body (a body that is not UTF-8 is told so, with the offending byte), "
        "a parameter nested deeper than `server.max_param_depth`, wrong parameter count, a "
        "parameter that does not fit its type (the message names it: `parameter $1: invalid "
        'input syntax for type integer: "abc"`; `postgresMessage` is PostgreSQL\'s `invalid '
        'input syntax for type integer: "abc"`)',
    ),
    ErrorKind(
        400,
        "sql_error",
        "PostgreSQL rejected the statement; `sqlstate`, `detail`, `hint` and `position` (in "
        "your text) are passed through",
    ),
    ErrorKind(
        401,
        "unauthenticated",
        "missing, malformed, expired or otherwise invalid token; `WWW-Authenticate: Bearer "
        'error="invalid_token", error_description="<reason>"` with a stable reason '
        "(`missing_token`, `not_bearer`, `token_too_large`, `malformed_token`, "
        "`untrusted_key_header`, `unknown_issuer`, `algorithm_not_allowed`, "
        "`issuer_unavailable`, `unknown_key`, `key_algorithm_mismatch`, `bad_signature`, "
        "`missing_claim`, `expired`, `not_yet_valid`, `wrong_audience`, `claims_too_deep`, "
        "`invalid_time_claim`, `lifetime_too_long`; see [docs/identity.md](docs/identity.md))",
        headers=("WWW-Authenticate",),
    ),
    ErrorKind(
        403,
        "no_identity",
        "a valid token that matches no identity (a `role_claim` naming a role outside the "
        "identity's `roles` does not match)",
    ),
    ErrorKind(
        403,
        "policy_denied",
        "the statement is not allowed; `message` says why and what rule would allow it",
    ),
    ErrorKind(
        403,
        "credentials_not_allowed",
        "an identity without `[identities.credentials]` asked for database logins (`/v1/credentials`)",
    ),
    ErrorKind(
        403,
        "approval_not_allowed",
        "the caller asked to approve or reject its own request (`POST /v1/approvals/{id}`): another "
        "approver must decide",
    ),
    ErrorKind(
        404,
        "not_found",
        "no such path; a database login `DELETE /v1/credentials/{user}` names that was not issued to the "
        "caller's identity, or is gone; an approval request the caller neither made nor may approve; "
        "on `/mcp`, an `Mcp-Session-Id` the caller did not open (initialize "
        "a new session), or a table `describe_table` does not find among those the identity may read",
    ),
    ErrorKind(
        405,
        "method_not_allowed",
        "the path does not take this method (`Allow` names those it takes)",
    ),
    ErrorKind(
        408,
        "client_too_slow",
        "a streamed result the client took nothing of for `server.stream_idle_timeout`: the "
        "stream is aborted and rolled back, and its last line says so (the audit record's "
        "status)",
        answered=False,
    ),
    ErrorKind(
        409,
        "serialization_failure",
        "sqlstate 40001 or 40P01, or 0A000 when a statement of a batch after the first was "
        "prepared before a table it reads changed its columns: safe to retry",
    ),
    ErrorKind(
        409,
        "approval_decided",
        "the approval request was approved or rejected already: it runs at most once",
    ),
    ErrorKind(
        410,
        "approval_expired",
        "the approval request passed its `ttl` before it was approved: it can no longer run (make the request again)",
    ),
    ErrorKind(
        413,
        "payload_too_large",
        "body over `server.max_body_bytes`",
    ),
    ErrorKind(
        429,
        "rate_limited",
        "identity over its `rate` or `concurrency`, or holding its `max_connections` for longer "
        "than `acquire_timeout` (`Retry-After`)",
        headers=("Retry-After",),
    ),
    ErrorKind(
        429,
        "too_many_credentials",
        "the identity holds `max_active` unexpired database logins already: revoke one or wait "
        "(`Retry-After`: until the first expires)",
        headers=("Retry-After",),
    ),
    ErrorKind(
        499,
        "client_closed_request",
        "the client left while its statement ran; the statement was cancelled on the server "
        "(the audit record's status)",
        answered=False,
    ),
    ErrorKind(
        500,
        "internal_error",
        "a failure the gateway did not foresee (a bug): logged once with its traceback, audited "
        "with status 500; the body says nothing more",
    ),
    ErrorKind(
        503,
        "overloaded",
        "no connection free within `acquire_timeout`, or no statement analyser free in time (`Retry-After`)",
        headers=("Retry-After",),
    ),
    ErrorKind(
        503,
        "database_unavailable",
        "the database cannot be reached, lost the connection, or did not answer within the "
        "statement timeout plus `database.response_margin` (`Retry-After`)",
        headers=("Retry-After",),
    ),
    ErrorKind(
        504,
        "statement_timeout",
        "the statement ran past the identity's `statement_timeout`; it is cancelled on the server",
    ),
    ErrorKind(
        507,
        "response_too_large",
        "the result is over the identity's `max_rows` or `max_response_bytes` where it cannot "
        "be cut short (`/sql`, `/v1/batch`)",
    ),
)


def markdown_table() -> str:
    """The README's table of errors."""
    rows = [f"| {kind.status} | `{kind.code}` | {kind.when} |" for kind in ERROR_TABLE]
    return "\n".join(["| status | code | when |", "|---|---|---|", *rows])


@dataclass
class GatewayError(Exception):
    """Base of every error a caller may see. `code` is stable; `message` is for humans."""

    message: str
    status: int = 500
    code: str = "internal_error"
    sqlstate: str | None = None
    detail: str | None = None
    hint: str | None = None
    position: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    # Every field of PostgreSQL's error, its own message included (asyncpg's names), for wire
    # formats that carry them (/sql); empty for an error PostgreSQL did not raise.
    pg_fields: dict[str, Any] = field(default_factory=dict)
    parameter: int | None = None  # the parameter ($n) whose value PostgreSQL could not read

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def __str__(self) -> str:
        return self.message

    def withhold_row_data(self) -> None:
        """Drop the fields in which PostgreSQL quotes rows: DETAIL (`Key (email)=(...) already
        exists`, `Failing row contains (...)`), and the context and internal query, which
        repeat the SQL a trigger or function ran, values included. A parameter's error comes
        from Bind, before any row is read: its context only names the caller's parameter."""
        self.detail = None
        self.pg_fields.update(detail=None, internal_query=None, internal_position=None)
        if self.parameter is None:
            self.pg_fields["context"] = None


def bad_request(message: str) -> GatewayError:
    return GatewayError(message, status=400, code="bad_request")


def unauthenticated(reason: str) -> GatewayError:
    """A token failure. Only the stable reason code is disclosed, never the check's details."""
    return GatewayError(
        f"token rejected: {reason}",
        status=401,
        code="unauthenticated",
        detail=reason,
        headers={"WWW-Authenticate": f'Bearer error="invalid_token", error_description="{reason}"'},
    )


def no_identity(issuer: str) -> GatewayError:
    return GatewayError(
        f'the token from issuer "{issuer}" matches no configured identity', status=403, code="no_identity"
    )


def not_found(message: str) -> GatewayError:
    return GatewayError(message, status=404, code="not_found")


def policy_denied(reason: str) -> GatewayError:
    return GatewayError(reason, status=403, code="policy_denied")


def statement_refused(message: str, sqlstate: str, position: int | None) -> GatewayError:
    """A statement PostgreSQL itself would refuse (a syntax error, a relation that does not
    exist), answered as PostgreSQL would answer it without sending it."""
    return GatewayError(
        message,
        status=400,
        code="sql_error",
        sqlstate=sqlstate,
        position=position,
        pg_fields={"severity": "ERROR", "position": None if position is None else str(position)},
    )


def credentials_not_allowed(identity: str) -> GatewayError:
    return GatewayError(
        f'identity "{identity}" may not take database logins (it has no [identities.credentials])',
        status=403,
        code="credentials_not_allowed",
    )


def approval_not_found(approval_id: str) -> GatewayError:
    return GatewayError(
        f'no approval request "{approval_id}" that this identity made or may approve', status=404, code="not_found"
    )


def own_approval(approval_id: str) -> GatewayError:
    return GatewayError(
        f'approval request "{approval_id}" is your own: another of its approvers must decide it',
        status=403,
        code="approval_not_allowed",
    )


def approval_decided(approval_id: str, status: str) -> GatewayError:
    return GatewayError(
        f'approval request "{approval_id}" was decided already (it is {status})', status=409, code="approval_decided"
    )


def approval_expired(approval_id: str) -> GatewayError:
    return GatewayError(
        f'approval request "{approval_id}" expired before it was approved; it can no longer run',
        status=410,
        code="approval_expired",
    )


def credential_not_found(user: str) -> GatewayError:
    return GatewayError(
        f'no database login "{user}" of this identity (revoked, reaped, or never issued to it)',
        status=404,
        code="not_found",
    )


def too_many_credentials(max_active: int, retry_after: float) -> GatewayError:
    return GatewayError(
        f"this identity holds {max_active} unexpired database logins, its max_active: revoke one "
        "(DELETE /v1/credentials/{user}) or wait for one to expire",
        status=429,
        code="too_many_credentials",
        headers={"Retry-After": str(max(1, math.ceil(retry_after)))},
    )


def payload_too_large(limit: int) -> GatewayError:
    return GatewayError(f"request is too large (max is {limit} bytes)", status=413, code="payload_too_large")


def rate_limited(message: str, retry_after: float) -> GatewayError:
    return GatewayError(
        message,
        status=429,
        code="rate_limited",
        headers={"Retry-After": str(max(1, round(retry_after + 0.499)))},
    )


def overloaded(retry_after: int = 1) -> GatewayError:
    return GatewayError(
        "no database connection became free in time; retry shortly",
        status=503,
        code="overloaded",
        headers={"Retry-After": str(retry_after)},
    )


def analyser_busy(retry_after: int = 1) -> GatewayError:
    """The statement analysers could not take a new text in time: all busy with others, or the
    machine too busy for the analysis to finish."""
    return GatewayError(
        "the gateway is too busy to analyse new statements right now; retry shortly",
        status=503,
        code="overloaded",
        headers={"Retry-After": str(retry_after)},
    )


def database_unavailable(retry_after: int = 2) -> GatewayError:
    return GatewayError(
        "the database is unavailable; retry shortly",
        status=503,
        code="database_unavailable",
        headers={"Retry-After": str(retry_after)},
    )


def database_unresponsive(waited: float, retry_after: int = 2) -> GatewayError:
    """The database sent nothing for longer than PostgreSQL itself would take to end the
    statement (frozen, or cut off without the connection closing); the connection is dropped."""
    return GatewayError(
        f"the database did not answer within {waited:g}s; retry shortly",
        status=503,
        code="database_unavailable",
        headers={"Retry-After": str(retry_after)},
    )


def internal_error() -> GatewayError:
    """A failure the gateway did not foresee (a bug): logged with its traceback, never shown."""
    return GatewayError("internal error")


def response_too_large(limit: int, unit: str = "bytes") -> GatewayError:
    return GatewayError(f"response is too large (max is {limit} {unit})", status=507, code="response_too_large")


def statement_outdated(position: int) -> GatewayError:
    """Statement `position` of a transaction was prepared (on this connection, by an earlier
    request) before a table it reads changed its columns, and the statements before it had run:
    the transaction is rolled back. The statement is prepared again on the next try."""
    return GatewayError(
        f"statement {position} was prepared before a table it reads changed its columns; the transaction was "
        "rolled back and can be retried as it is",
        status=409,
        code="serialization_failure",
        sqlstate="0A000",
    )


def client_too_slow(idle_timeout: float) -> GatewayError:
    """A streamed result the client stopped taking: the stream is aborted and its transaction
    rolled back. 408 is the audit record's status; the response had started as a 200."""
    return GatewayError(
        f"the client read the result too slowly: it took nothing for {idle_timeout:g}s "
        "(server.stream_idle_timeout), so the stream was aborted and its transaction rolled back",
        status=408,
        code="client_too_slow",
    )


def query_cancelled() -> GatewayError:
    """The client left while its statement ran; the statement was cancelled on the server.
    499 is nginx's "client closed request", the status the audit record carries."""
    return GatewayError(
        "Query cancelled, connection was terminated", status=499, code="client_closed_request", sqlstate="08P01"
    )

"""Errors a request can end in: each a value with a stable code, an HTTP status and a message.

Raised where they are detected (auth, identity, policy, limits, db); turned into wire
responses in one place per wire format (`gateway.api`). Nothing here knows about HTTP
frameworks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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

"""The gateway's error answers as typed exceptions, one class per `error.code`.

Owns the exception hierarchy and turning an error body into one of them. Transport
failures (connection refused, reset) stay httpx's own exceptions.
"""

from __future__ import annotations

import email.utils
import math
import time
from typing import Any

import httpx

from gateway_client import _wire


class GatewayError(Exception):
    """An error answer from the gateway. `code` is stable; `message` is for humans."""

    code = "gateway_error"
    status = 500

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        sqlstate: str | None = None,
        detail: str | None = None,
        hint: str | None = None,
        position: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status or self.status
        self.code = code or self.code
        self.request_id = request_id
        self.sqlstate = sqlstate
        self.detail = detail
        self.hint = hint
        self.position = position
        self.retry_after = retry_after

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


class BadRequest(GatewayError):
    code, status = "bad_request", 400


class SqlError(GatewayError):
    code, status = "sql_error", 400


class Unauthenticated(GatewayError):
    code, status = "unauthenticated", 401


class NoIdentity(GatewayError):
    code, status = "no_identity", 403


class PolicyDenied(GatewayError):
    code, status = "policy_denied", 403


class CredentialsNotAllowed(GatewayError):
    code, status = "credentials_not_allowed", 403


class NotFound(GatewayError):
    code, status = "not_found", 404


class SerializationFailure(GatewayError):
    code, status = "serialization_failure", 409


class PayloadTooLarge(GatewayError):
    code, status = "payload_too_large", 413


class RateLimited(GatewayError):
    code, status = "rate_limited", 429


class TooManyCredentials(GatewayError):
    code, status = "too_many_credentials", 429


class Overloaded(GatewayError):
    code, status = "overloaded", 503


class DatabaseUnavailable(GatewayError):
    code, status = "database_unavailable", 503


class StatementTimeout(GatewayError):
    code, status = "statement_timeout", 504


class ResponseTooLarge(GatewayError):
    code, status = "response_too_large", 507


class IncompleteResponse(GatewayError):
    """A streamed result that ended without its last line: the connection was cut."""

    code, status = "incomplete_response", 502


class TokenError(Exception):
    """A token provider could not produce a token (variable unset, metadata server refused)."""


ERROR_CLASSES: dict[str, type[GatewayError]] = {
    cls.code: cls
    for cls in (
        BadRequest,
        SqlError,
        Unauthenticated,
        NoIdentity,
        PolicyDenied,
        CredentialsNotAllowed,
        NotFound,
        SerializationFailure,
        PayloadTooLarge,
        RateLimited,
        TooManyCredentials,
        Overloaded,
        DatabaseUnavailable,
        StatementTimeout,
        ResponseTooLarge,
    )
}


def error_from_body(body: Any, status: int | None = None, retry_after: float | None = None) -> GatewayError:
    """`{"error": {...}}` as its typed exception; anything else (a proxy's page) as the base
    class. Without `status` (an error that ended a 200 stream) the code's own status stands."""
    fields = body.get("error") if isinstance(body, dict) else None
    if not isinstance(fields, dict):
        return GatewayError(
            f"HTTP {status} without a gateway error body", status=status, code="http_error", retry_after=retry_after
        )
    code = fields.get("code")
    cls = ERROR_CLASSES.get(code, GatewayError) if isinstance(code, str) else GatewayError
    return cls(
        str(fields.get("message") or ""),
        status=status,
        code=code if isinstance(code, str) else None,
        request_id=fields.get("requestId"),
        sqlstate=fields.get("sqlstate"),
        detail=fields.get("detail"),
        hint=fields.get("hint"),
        position=fields.get("position"),
        retry_after=retry_after,
    )


def error_from_response(response: httpx.Response) -> GatewayError:
    """The typed error of an error response whose body has been read."""
    try:
        body = _wire.loads(response.content)
    except ValueError:
        body = None
    return error_from_body(body, response.status_code, retry_after_seconds(response.headers.get("retry-after")))


def retry_after_seconds(value: str | None) -> float | None:
    """`Retry-After` as seconds from now: delta-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = _seconds_until(value)
    return max(0.0, seconds) if seconds is not None and math.isfinite(seconds) else None


def _seconds_until(http_date: str) -> float | None:
    try:
        return email.utils.parsedate_to_datetime(http_date).timestamp() - time.time()
    except (TypeError, ValueError):
        return None

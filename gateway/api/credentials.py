"""The credentials endpoints (`/v1/credentials`): a temporary PostgreSQL login for the
caller's identity, the list of its unexpired ones, and revoking one.

Decodes the requests and encodes the answers; authentication, the broker and the audit
record are the pipeline's (`RequestScope.issue_credential` and its siblings).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.exchange import answer, decode_json, json_response, read_body, scope_headers
from gateway.api.openapi import Answer, Operation, listed
from gateway.config import parse_duration
from gateway.errors import bad_request
from gateway.pipeline import RequestScope

PATH = "/v1/credentials"
USER_PATH = "/v1/credentials/{user}"
# The answer holds a password: no cache on the way may keep it.
NO_STORE = {"Cache-Control": "no-store"}

TTL_SCHEMA = {
    "type": ["string", "number", "null"],
    "description": 'how long the login is valid: "15m", "90s" or seconds (default: the identity\'s ttl)',
}
ACTIVE_SCHEMA = {
    "type": "object",
    "required": ["user", "expiresAt"],
    "properties": {"user": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"}},
}
ISSUED_SCHEMA = {
    "type": "object",
    "required": ["user", "password", "url", "host", "port", "database", "sslmode", "expiresAt"],
    "properties": {
        **ACTIVE_SCHEMA["properties"],
        "password": {"type": "string"},
        "url": {"type": "string", "description": "postgresql://user:password@host:port/database?sslmode=..."},
        "host": {"type": "string"},
        "port": {"type": "integer"},
        "database": {"type": "string"},
        "sslmode": {"type": "string"},
    },
}
# Every call authenticates, needs an identity with [identities.credentials], and reaches the database.
CALLER_ERRORS = ("unauthenticated", "no_identity", "credentials_not_allowed", "database_unavailable")
ISSUE = Operation(
    "A temporary PostgreSQL login for the caller's identity (only its role's grants bound it)",
    {201: Answer.json("the login; its password is shown this once", ISSUED_SCHEMA, ("Cache-Control",))},
    ("bad_request", *CALLER_ERRORS, "too_many_credentials"),
    request={"type": "object", "properties": {"ttl": TTL_SCHEMA}, "examples": [{"ttl": "15m"}]},
    request_required=False,
)
ACTIVE = Operation(
    "The caller's identity's unexpired temporary logins",
    {
        200: Answer.json(
            "the logins, soonest expiry first",
            listed("credentials", ACTIVE_SCHEMA),
        )
    },
    CALLER_ERRORS,
)
REVOKE = Operation(
    "Revoke a temporary login now: its sessions end and its role is dropped",
    {204: Answer("revoked")},
    (*CALLER_ERRORS, "not_found"),
)


async def _requested_ttl(request: Request) -> float | None:
    """`{"ttl": "15m"}` (or a number of seconds); the body and the key are optional."""
    raw = await read_body(request)
    if not raw.strip():
        return None
    body = decode_json(raw)
    if not isinstance(body, dict):
        raise bad_request("the body must be a JSON object")
    ttl = body.get("ttl")
    if ttl is None:
        return None
    try:
        return parse_duration(ttl)
    except ValueError:
        raise bad_request('"ttl" must be a duration such as "15m" or "90s", or a number of seconds') from None


async def issue(request: Request) -> Response:
    return await answer(request, PATH, _issue)


async def _issue(request: Request, scope: RequestScope) -> Response:
    ttl = await _requested_ttl(request)
    issued = await scope.issue_credential(request.headers.get("authorization"), ttl)
    return json_response(scope, issued.as_json(), status=201, headers=NO_STORE)


async def active(request: Request) -> Response:
    return await answer(request, PATH, _active)


async def _active(request: Request, scope: RequestScope) -> Response:
    logins = await scope.list_credentials(request.headers.get("authorization"))
    return json_response(scope, {"credentials": [login.as_json() for login in logins]})


async def revoke(request: Request) -> Response:
    return await answer(request, USER_PATH, _revoke)


async def _revoke(request: Request, scope: RequestScope) -> Response:
    await scope.revoke_credential(request.headers.get("authorization"), request.path_params["user"])
    return Response(status_code=204, headers=scope_headers(scope))

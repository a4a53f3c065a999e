"""The credentials endpoints (`/v1/credentials`): a temporary PostgreSQL login for the
caller's identity, the list of its unexpired ones, and revoking one.

Decodes the requests and encodes the answers; authentication, the broker and the audit
record are the pipeline's (`RequestScope.issue_credential` and its siblings).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from gateway.api.exchange import answer, decode_json, json_response, read_body, scope_headers
from gateway.config import parse_duration
from gateway.errors import bad_request
from gateway.pipeline import RequestScope

PATH = "/v1/credentials"
USER_PATH = "/v1/credentials/{user}"
# The answer holds a password: no cache on the way may keep it.
NO_STORE = {"Cache-Control": "no-store"}


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

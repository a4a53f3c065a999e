"""The approvals endpoints (`/v1/approvals`): what an approver may decide, one request as its
requester or an approver sees it (with the result, for the requester), and the decision, which
runs an approved request's statements at once.

Decodes the requests and encodes the answers. Authentication, the decision's checks and the
audit records are the pipeline's (`RequestScope.decide_approval`, `execute_approved`); the
table is `gateway.approvals`'.
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

from gateway.api.exchange import (
    APPROVAL_SUMMARY_SCHEMA,
    WholeResults,
    answer,
    close_shielded,
    json_response,
    read_json,
    results_body,
    unforeseen,
)
from gateway.api.openapi import NULLABLE_STRING, STRINGS, Answer, Operation, Schema, listed
from gateway.api.results import ERROR_BODY_SCHEMA, error_body
from gateway.approvals import ApprovalRequest
from gateway.errors import GatewayError, bad_request
from gateway.pipeline import RequestScope, request_id_from

PATH = "/v1/approvals"
ID_PATH = "/v1/approvals/{id}"
# The audit record's `endpoint` for an approved request's run: no request of the requester's.
EXECUTION_ENDPOINT = "approved statement"
DECISIONS = {"approve": True, "reject": False}

# `ApprovalRequest.details()`, and for its requester the outcome (`_view`).
APPROVAL_SCHEMA: Schema = {
    "type": "object",
    "required": [
        *APPROVAL_SUMMARY_SCHEMA["required"],
        "statements",
        "requester",
        "role",
        "tables",
        "approvers",
        "createdAt",
        "decision",
    ],
    "properties": {
        **APPROVAL_SUMMARY_SCHEMA["properties"],
        "statements": {
            "type": "array",
            "items": {"type": "object", "required": ["sql", "params"], "properties": {"sql": {"type": "string"}}},
        },
        "requester": {
            "type": "object",
            "required": ["identity", "issuer", "subject"],
            "properties": {"identity": {"type": "string"}, "issuer": {"type": "string"}, "subject": NULLABLE_STRING},
        },
        "role": {"type": "string"},
        "tables": STRINGS,
        "approvers": STRINGS,
        "createdAt": {"type": "string"},
        "decision": {
            "type": ["object", "null"],
            "required": ["by", "at", "comment"],
            "properties": {"by": {"type": "string"}, "at": {"type": "string"}, "comment": NULLABLE_STRING},
        },
        "result": {
            "description": "for its requester: /v1/query's result (/v1/batch's for a batch) while the ttl lasts"
        },
        "error": {
            "anyOf": [{"type": "null"}, ERROR_BODY_SCHEMA],
            "description": "for its requester: why the run failed",
        },
    },
}
ONE_APPROVAL = {"type": "object", "required": ["approval"], "properties": {"approval": APPROVAL_SCHEMA}}
# Every call authenticates and reads or writes the approvals table.
CALLER_ERRORS = ("unauthenticated", "no_identity", "database_unavailable")
PENDING = Operation(
    "The unexpired pending requests the caller's identity may approve",
    {
        200: Answer.json(
            "the requests, oldest first",
            listed("approvals", APPROVAL_SCHEMA),
        )
    },
    CALLER_ERRORS,
)
READ = Operation(
    "One request: its requester sees the outcome (the result), its approvers the details",
    {200: Answer.json("the request", ONE_APPROVAL)},
    (*CALLER_ERRORS, "not_found"),
)
DECIDE = Operation(
    "Approve (it runs now, once, as its requester) or reject",
    {200: Answer.json("the request as decided (and run)", ONE_APPROVAL)},
    (*CALLER_ERRORS, "bad_request", "not_found", "approval_not_allowed", "approval_decided", "approval_expired"),
    request={
        "type": "object",
        "required": ["decision"],
        "properties": {"decision": {"enum": list(DECISIONS)}, "comment": {"type": ["string", "null"]}},
        "examples": [{"decision": "reject", "comment": "not before the audit"}],
    },
)


async def pending(request: Request) -> Response:
    return await answer(request, PATH, _pending)


async def _pending(request: Request, scope: RequestScope) -> Response:
    requests = await scope.pending_approvals(request.headers.get("authorization"))
    return json_response(scope, {"approvals": [item.details() for item in requests]})


async def read(request: Request) -> Response:
    return await answer(request, ID_PATH, _read)


async def _read(request: Request, scope: RequestScope) -> Response:
    approval, is_requester = await scope.read_approval(request.headers.get("authorization"), request.path_params["id"])
    return json_response(scope, {"approval": _view(approval, with_outcome=is_requester)})


def _view(approval: ApprovalRequest, *, with_outcome: bool) -> dict[str, Any]:
    """The request's details; for its requester also the outcome: the result, in `/v1/query`'s
    shape (`/v1/batch`'s for a batch), while the request's ttl lasts, or the error body."""
    view = approval.details()
    if with_outcome:
        view["result"] = None if approval.result is None else orjson.loads(approval.result)
        view["error"] = None if approval.error is None else orjson.loads(approval.error)
    return view


async def decide(request: Request) -> Response:
    return await answer(request, ID_PATH, _decide)


async def _decide(request: Request, scope: RequestScope) -> Response:
    body = await read_json(request)
    decision = body.get("decision") if isinstance(body, dict) else None
    if not isinstance(decision, str) or decision not in DECISIONS:
        raise bad_request('"decision" must be "approve" or "reject"')
    comment = body.get("comment")
    if comment is not None and not isinstance(comment, str):
        raise bad_request('"comment" must be a string')
    approve = DECISIONS[decision]
    approval_id = request.path_params["id"]
    decided = await scope.decide_approval(request.headers.get("authorization"), approval_id, approve, comment)
    if approve:
        await _run_approved(scope, decided)
        decided = await scope.pipeline.approvals.get(approval_id) or decided
    return json_response(scope, {"approval": _view(decided, with_outcome=False)})


async def _run_approved(decider: RequestScope, approval: ApprovalRequest) -> None:
    """The approved statements, once, in a request scope of their own (its audit record is the
    execution's, as the requester, linked by the approval id); the answer or the error kept."""
    execution = decider.pipeline.scope(
        EXECUTION_ENDPOINT,
        request_id=request_id_from(None),
        trace_id=decider.record.traceId,
        client_ip=decider.record.clientIp,
        user_agent=decider.record.userAgent,
    )
    results = WholeResults(execution, array_rows=False)
    error: dict[str, Any] | None = None
    try:
        await execution.execute_approved(approval, results)
    except Exception as failure:  # a GatewayError (a denial now, a database error), or a bug (logged)
        known = failure if isinstance(failure, GatewayError) else unforeseen(execution)
        execution.fail(known)
        error = error_body(known, execution.request_id)
    finally:
        await close_shielded(execution)
    answer_body = None if error is not None else results_body(results.parts) if approval.batch else results.parts[0]
    await decider.pipeline.approvals.finish(approval.id, result=answer_body, error=error)

"""The OpenAPI 3.1 document of the HTTP API, served at `GET /openapi.json`.

Written by hand from the wire formats in `gateway.api` (native.py, neon.py, mcp.py); the error
statuses and codes come from `gateway.errors.ERROR_TABLE`. Built once per process.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import orjson

from gateway import __version__
from gateway.errors import ERROR_TABLE

ISOLATION = ["read uncommitted", "read committed", "repeatable read", "serializable"]


def _error_statuses() -> dict[str, str]:
    """Each status's description: its codes from the error table, with when they are given."""
    statuses: dict[str, list[str]] = {}
    for kind in ERROR_TABLE:
        if kind.answered:
            statuses.setdefault(str(kind.status), []).append(f"{kind.code}: {kind.summary}")
    return {status: "; ".join(codes) for status, codes in statuses.items()}


ERROR_STATUSES = _error_statuses()


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"content": {"application/json": {"schema": schema}}}


def _errors(*statuses: str) -> dict[str, Any]:
    return {status: {"description": ERROR_STATUSES[status], **_json(_ref("Error"))} for status in statuses}


SCHEMAS: dict[str, Any] = {
    "Statement": {
        "type": "object",
        "required": ["sql"],
        "properties": {
            "sql": {"type": "string", "description": "one statement with $1..$n parameters"},
            "params": {"type": "array", "items": {}, "description": "a string fits any parameter type"},
            "rowMode": {"type": "string", "enum": ["object", "array"], "default": "object"},
        },
    },
    "Batch": {
        "type": "object",
        "required": ["statements"],
        "properties": {
            "statements": {"type": "array", "minItems": 1, "items": _ref("Statement")},
            "isolation": {"type": "string", "enum": ISOLATION, "default": "read committed"},
            "readOnly": {"type": "boolean", "default": False},
            "rowMode": {"type": "string", "enum": ["object", "array"], "default": "object"},
        },
    },
    "Result": {
        "type": "object",
        "properties": {
            "columns": {
                "type": "array",
                "items": {"type": "object", "properties": {"name": {"type": "string"}, "type": {"type": "string"}}},
            },
            "rows": {"type": "array", "items": {}},
            "command": {"type": "string"},
            "rowCount": {"type": ["integer", "null"]},
            "truncated": {"type": "boolean"},
        },
    },
    "Decision": {
        "type": "object",
        "properties": {
            "allowed": {"type": "boolean"},
            "identity": {"type": "string"},
            "kind": {"type": ["string", "null"]},
            "tables": {"type": "array", "items": {"type": "string"}},
            "columns": {"type": "array", "items": {"type": "string"}},
            "functions": {"type": "array", "items": {"type": "string"}},
            "reason": {"type": ["string", "null"]},
            "approval": {
                "type": ["object", "null"],
                "description": "an allowed statement a rule holds for approval: who may approve, ttl in seconds",
                "properties": {
                    "approvers": {"type": "array", "items": {"type": "string"}},
                    "ttl": {"type": "number"},
                },
            },
        },
    },
    "CredentialRequest": {
        "type": "object",
        "properties": {
            "ttl": {
                "type": ["string", "number"],
                "description": 'how long the login is valid: "15m", "90s" or seconds (default: the identity\'s ttl)',
            },
        },
    },
    "Credential": {
        "type": "object",
        "properties": {
            "user": {"type": "string"},
            "password": {"type": "string"},
            "url": {"type": "string", "description": "postgresql://user:password@host:port/database?sslmode=..."},
            "host": {"type": "string"},
            "port": {"type": "integer"},
            "database": {"type": "string"},
            "sslmode": {"type": "string"},
            "expiresAt": {"type": "string", "format": "date-time"},
        },
    },
    "ActiveCredential": {
        "type": "object",
        "properties": {"user": {"type": "string"}, "expiresAt": {"type": "string", "format": "date-time"}},
    },
    "ApprovalPending": {
        "type": "object",
        "description": "a statement a rule holds until an approver approves it (202)",
        "properties": {
            "approval": {
                "type": "object",
                "properties": {
                    "id": {"type": "string"},
                    "status": {"type": "string", "enum": ["pending"]},
                    "expiresAt": {"type": "string", "format": "date-time"},
                    "statement": {"type": ["string", "null"], "description": "null for a batch"},
                    "identity": {"type": "string"},
                },
            }
        },
    },
    "Approval": {
        "type": "object",
        "description": "a request as its requester or an approver sees it; result and error only for its requester",
        "properties": {
            "id": {"type": "string"},
            "status": {"type": "string", "enum": ["pending", "running", "done", "failed", "rejected", "expired"]},
            "expiresAt": {"type": "string", "format": "date-time"},
            "statement": {"type": ["string", "null"]},
            "identity": {"type": "string"},
            "statements": {"type": "array", "items": {"type": "object"}},
            "requester": {"type": "object"},
            "role": {"type": "string"},
            "tables": {"type": "array", "items": {"type": "string"}},
            "approvers": {"type": "array", "items": {"type": "string"}},
            "createdAt": {"type": "string", "format": "date-time"},
            "decision": {"type": ["object", "null"]},
            "result": {"description": "/v1/query's result (/v1/batch's for a batch) while the ttl lasts"},
            "error": {"description": "the error body, when the approved run failed"},
        },
    },
    "Error": {
        "type": "object",
        "properties": {
            "error": {
                "type": "object",
                "properties": {
                    "code": {"type": "string", "enum": [kind.code for kind in ERROR_TABLE if kind.answered]},
                    "message": {"type": "string"},
                    "postgresMessage": {"type": ["string", "null"]},
                    "requestId": {"type": "string"},
                    "sqlstate": {"type": ["string", "null"]},
                    "detail": {"type": ["string", "null"]},
                    "hint": {"type": ["string", "null"]},
                    "position": {"type": ["integer", "null"]},
                },
            }
        },
    },
}

STATEMENT_ERRORS = ("400", "401", "403", "409", "413", "429", "500", "503", "504")
HELD = {"202": {"description": "held until an approver approves it", **_json(_ref("ApprovalPending"))}}
APPROVAL_ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]


def _paths() -> dict[str, Any]:
    secured = [{"bearer": []}]
    return {
        "/v1/query": {
            "post": {
                "summary": "Run one statement; JSON, or NDJSON with Accept: application/x-ndjson",
                "security": secured,
                "requestBody": {"required": True, **_json(_ref("Statement"))},
                "responses": {
                    "200": {
                        "description": "the result",
                        "content": {
                            "application/json": {"schema": _ref("Result")},
                            "application/x-ndjson": {"schema": {"type": "string"}},
                        },
                    },
                    **HELD,
                    **_errors(*STATEMENT_ERRORS),
                },
            }
        },
        "/v1/batch": {
            "post": {
                "summary": "Run statements in one transaction, all or nothing",
                "security": secured,
                "requestBody": {"required": True, **_json(_ref("Batch"))},
                "responses": {
                    "200": {
                        "description": "one result per statement, sent after COMMIT",
                        **_json(
                            {"type": "object", "properties": {"results": {"type": "array", "items": _ref("Result")}}}
                        ),
                    },
                    **HELD,
                    **_errors(*STATEMENT_ERRORS),
                },
            }
        },
        "/v1/explain": {
            "post": {
                "summary": "The verdict /v1/query would give before running a statement (policy, parameters)",
                "security": secured,
                "requestBody": {"required": True, **_json(_ref("Statement"))},
                "responses": {
                    "200": {"description": "the decision", **_json(_ref("Decision"))},
                    **_errors("400", "401", "403", "413", "429"),
                },
            }
        },
        "/v1/whoami": {
            "get": {
                "summary": "The identity, role, issuer and limits the token resolves to",
                "security": secured,
                "responses": {
                    "200": {"description": "the identity", **_json({"type": "object"})},
                    **_errors("401", "403"),
                },
            }
        },
        "/v1/credentials": {
            "post": {
                "summary": "A temporary PostgreSQL login for the caller's identity (only its role's grants bound it)",
                "security": secured,
                "requestBody": {"required": False, **_json(_ref("CredentialRequest"))},
                "responses": {
                    "201": {"description": "the login; its password is shown this once", **_json(_ref("Credential"))},
                    **_errors("400", "401", "403", "413", "429", "500", "503"),
                },
            },
            "get": {
                "summary": "The caller's identity's unexpired temporary logins",
                "security": secured,
                "responses": {
                    "200": {
                        "description": "the logins, soonest expiry first",
                        **_json(
                            {
                                "type": "object",
                                "properties": {"credentials": {"type": "array", "items": _ref("ActiveCredential")}},
                            }
                        ),
                    },
                    **_errors("401", "403", "500", "503"),
                },
            },
        },
        "/v1/credentials/{user}": {
            "delete": {
                "summary": "Revoke a temporary login now: its sessions end and its role is dropped",
                "security": secured,
                "parameters": [{"name": "user", "in": "path", "required": True, "schema": {"type": "string"}}],
                "responses": {
                    "204": {"description": "revoked"},
                    **_errors("401", "403", "404", "500", "503"),
                },
            },
        },
        "/v1/approvals": {
            "get": {
                "summary": "The unexpired pending requests the caller's identity may approve",
                "security": secured,
                "responses": {
                    "200": {
                        "description": "the requests, oldest first",
                        **_json(
                            {
                                "type": "object",
                                "properties": {"approvals": {"type": "array", "items": _ref("Approval")}},
                            }
                        ),
                    },
                    **_errors("401", "403", "500", "503"),
                },
            }
        },
        "/v1/approvals/{id}": {
            "get": {
                "summary": "One request: its requester sees the outcome (the result), its approvers the details",
                "security": secured,
                "parameters": APPROVAL_ID,
                "responses": {
                    "200": {
                        "description": "the request",
                        **_json({"type": "object", "properties": {"approval": _ref("Approval")}}),
                    },
                    **_errors("401", "403", "404", "500", "503"),
                },
            },
            "post": {
                "summary": 'Approve (it runs now, once, as its requester) or reject: {"decision", "comment"}',
                "security": secured,
                "parameters": APPROVAL_ID,
                "requestBody": {
                    "required": True,
                    **_json(
                        {
                            "type": "object",
                            "required": ["decision"],
                            "properties": {
                                "decision": {"type": "string", "enum": ["approve", "reject"]},
                                "comment": {"type": "string"},
                            },
                        }
                    ),
                },
                "responses": {
                    "200": {
                        "description": "the request as decided (and run)",
                        **_json({"type": "object", "properties": {"approval": _ref("Approval")}}),
                    },
                    **_errors("400", "401", "403", "404", "409", "410", "500", "503"),
                },
            },
        },
        "/sql": {
            "post": {
                "summary": "The Neon serverless driver's HTTP protocol (see README)",
                "security": secured,
                "requestBody": {"required": True, **_json({"type": "object"})},
                "responses": {
                    "200": {"description": "fields, rows, command, rowCount", **_json({"type": "object"})},
                    "400": {"description": "a PostgreSQL-shaped error", **_json({"type": "object"})},
                },
            }
        },
        "/mcp": {
            "post": {
                "summary": "Model Context Protocol over Streamable HTTP: JSON-RPC, tools query, explain, "
                "list_tables, describe_table (see README)",
                "security": secured,
                "requestBody": {"required": True, **_json({"type": "object"})},
                "responses": {
                    "200": {"description": "the JSON-RPC answer", **_json({"type": "object"})},
                    "202": {"description": "a notification, accepted"},
                    **_errors("401", "403", "404", "413"),
                },
            }
        },
        "/healthz": {"get": {"summary": "The process is alive", "responses": {"200": {"description": "ok"}}}},
        "/readyz": {
            "get": {
                "summary": "Database reachable and issuers loaded",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/metrics": {"get": {"summary": "Prometheus text format", "responses": {"200": {"description": "metrics"}}}},
    }


@lru_cache(maxsize=1)
def openapi_document() -> bytes:
    return orjson.dumps(
        {
            "openapi": "3.1.0",
            "info": {"title": "edge-sql-gateway", "version": __version__},
            "paths": _paths(),
            "components": {
                "schemas": SCHEMAS,
                "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
            },
        }
    )

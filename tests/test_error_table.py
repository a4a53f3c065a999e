"""One error table (`gateway.errors.ERROR_TABLE`) feeds the README's "Errors" table and the
OpenAPI document, and holds every code the gateway can answer or audit with."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

from conftest import GatewayProcess
from gateway.errors import (
    ERROR_TABLE,
    analyser_busy,
    bad_request,
    database_unavailable,
    database_unresponsive,
    markdown_table,
    overloaded,
    payload_too_large,
    rate_limited,
    too_many_credentials,
    unauthenticated,
)

ROOT = Path(__file__).resolve().parent.parent
CODES = {kind.code for kind in ERROR_TABLE}


def test_the_readme_table_is_the_error_table():
    readme = (ROOT / "README.md").read_text()
    assert markdown_table() in readme, (
        "README.md's table of errors differs from gateway.errors.ERROR_TABLE; paste in the output of "
        "`python -c 'from gateway.errors import markdown_table; print(markdown_table())'`"
    )


def test_every_code_the_gateway_uses_is_in_the_table_and_every_row_is_used():
    used = set()
    for path in (ROOT / "gateway").rglob("*.py"):
        if "client" in path.parts:  # the Python client's own codes, for answers that are not the gateway's
            continue
        text = path.read_text()
        used |= set(re.findall(r'\bcode(?:: str)? ?= ?"([a-z_]+)"', text))  # the default, and each error's
        used |= set(re.findall(r'\d{3}: "([a-z_]+)"', text))  # a status -> code mapping
    assert used - CODES == set(), "codes missing from ERROR_TABLE"
    assert CODES - used == set(), "rows of ERROR_TABLE no code is raised with"


def test_every_error_carries_the_headers_its_row_names():
    made = [
        unauthenticated("expired"), rate_limited("over its rate", 1.0), too_many_credentials(2, 30.0), overloaded(),
        analyser_busy(), database_unavailable(), database_unresponsive(3.0), payload_too_large(10), bad_request("x"),
    ]
    rows = {kind.code: kind for kind in ERROR_TABLE}
    for error in made:
        assert set(error.headers) == set(rows[error.code].headers), error.code


def test_the_openapi_document_takes_its_error_codes_statuses_and_headers_from_the_table(
    gateway: GatewayProcess, http: httpx.Client
) -> None:
    document = http.get(f"{gateway.url}/openapi.json").json()
    rows = {kind.code: kind for kind in ERROR_TABLE if kind.answered}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                schema = response.get("content", {}).get("application/json", {}).get("schema", {})
                codes = _codes_of(schema)
                if not codes:
                    continue
                where = (path, method, status)
                assert all(code in rows for code in codes), where
                if path != "/sql":  # /sql answers a statement's failures as the driver's 400s
                    assert {rows[code].status for code in codes} == {int(status)}, where
                assert all(code in response["description"] for code in codes), where
                for header in set.intersection(*(set(rows[code].headers) for code in codes)):
                    assert response["headers"][header]["required"], (where, header)


def test_sql_documents_its_size_capacity_and_auth_failures(gateway: GatewayProcess, http: httpx.Client) -> None:
    """...and a statement's failures, a timeout among them, as the 400s the driver reads."""
    responses = http.get(f"{gateway.url}/openapi.json").json()["paths"]["/sql"]["post"]["responses"]
    assert set(responses) == {"200", "400", "401", "403", "413", "429", "500", "503", "507"}
    assert "response_too_large" in responses["507"]["description"]
    for code in ("statement_timeout", "policy_denied", "serialization_failure", "sql_error"):
        assert code in responses["400"]["description"]
    assert responses["400"]["content"]["application/json"]["schema"]["required"][:2] == ["message", "code"]


def _codes_of(schema: dict) -> list[str]:
    """The error codes an error answer's schema allows, in either wire format's shape."""
    error = schema.get("properties", {}).get("error", schema)
    return error.get("properties", {}).get("code", {}).get("enum", [])

"""One error table (`gateway.errors.ERROR_TABLE`) feeds the README's "Errors" table and the
OpenAPI document, and holds every code the gateway can answer or audit with."""

from __future__ import annotations

import re
from pathlib import Path

import orjson

from gateway.api.openapi import openapi_document
from gateway.errors import ERROR_TABLE, markdown_table

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


def test_the_openapi_document_takes_its_error_codes_and_statuses_from_the_table():
    document = orjson.loads(openapi_document())
    error = document["components"]["schemas"]["Error"]["properties"]["error"]["properties"]
    assert set(error["code"]["enum"]) == {kind.code for kind in ERROR_TABLE if kind.answered}
    described = {str(kind.status) for kind in ERROR_TABLE if kind.answered}
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            for status, response in operation["responses"].items():
                if status >= "400" and "Error" in orjson.dumps(response).decode():
                    assert status in described, (path, method, status)
                    codes = [kind.code for kind in ERROR_TABLE if str(kind.status) == status]
                    assert all(code in response["description"] for code in codes), (path, method, status)

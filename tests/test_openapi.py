"""The OpenAPI document is generated from the app's routes, and it is the truth: schemathesis
drives every operation of a real `gateway serve` on the suite's database, and every answer
must be one the document gives (status, content type, body schema, required headers), never
a 5xx.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from conftest import GatewayProcess

OPERATIONS = [
    ("GET", "/openapi.json"), ("GET", "/docs"), ("POST", "/v1/query"), ("POST", "/v1/batch"),
    ("POST", "/v1/explain"), ("GET", "/v1/whoami"), ("POST", "/v1/credentials"), ("GET", "/v1/credentials"),
    ("DELETE", "/v1/credentials/{user}"), ("GET", "/v1/approvals"), ("GET", "/v1/approvals/{id}"),
    ("POST", "/v1/approvals/{id}"), ("POST", "/sql"), ("POST", "/mcp"), ("GET", "/healthz"), ("GET", "/readyz"),
    ("GET", "/metrics"),
]
# Generated cases per operation and kind (bodies, headers and path parameters the document
# allows, and ones it does not): a few each keep the whole run within seconds.
CASES = 8
CONFIG = schemathesis.config.SchemathesisConfig.from_dict(
    {
        "checks": {
            # A body the schema allows can still be refused: SQL that does not parse, a table
            # the identity may not read, parameters that do not match the statement.
            "positive_data_acceptance": {"enabled": False},
        },
    }
)
BOUNDED = settings(
    max_examples=CASES,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def authorizations(mint: Callable[..., str]) -> list[str | None]:
    """What a case is sent with: identities that get past authentication (a writer, a reader),
    a valid token of no identity, a forged one, none."""
    return [
        f"Bearer {mint('writer', tenant='acme')}",
        f"Bearer {mint('reader', tenant='acme')}",
        f"Bearer {mint('nobody-configured')}",
        "Bearer not.a.token",
        None,
    ]


@pytest.fixture(scope="module")
def api_schema(gateway: GatewayProcess) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", config=CONFIG, timeout=10)


def check(cases: st.SearchStrategy, callers: st.SearchStrategy, count: int) -> None:
    """`count` cases, each sent with one of the callers and its answer validated."""

    @given(case=cases, authorization=callers)
    @settings(BOUNDED, max_examples=count)
    def send(case: Any, authorization: str | None) -> None:
        # Sent as the caller's, not as generated data: schemathesis then also checks that the
        # operation refuses the request without it (when the operation needs a token).
        case.call_and_validate(headers=None if authorization is None else {"Authorization": authorization}, timeout=10)

    send()


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
def test_the_operation_answers_as_the_document_says(
    api_schema: Any, authorizations: list[str | None], method: str, path: str
) -> None:
    """Its documented examples with each caller, then generated cases: every answer's status,
    content type, body and required headers are the document's, and none is a 5xx."""
    operation = api_schema[path][method]
    callers = st.sampled_from(authorizations)
    examples = operation.get_strategies_from_examples()
    if examples:
        check(st.one_of(examples), callers, len(examples) * len(authorizations))
    check(operation.as_strategy(GenerationMode.POSITIVE), callers, CASES)
    if operation.body or operation.headers or operation.path_parameters:  # something to get wrong
        check(operation.as_strategy(GenerationMode.NEGATIVE), callers, CASES)


def test_the_document_has_every_route_of_the_app(gateway: GatewayProcess, http: httpx.Client) -> None:
    """...and so the operations above are all of them."""
    document = http.get(f"{gateway.url}/openapi.json").json()
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    assert documented == set(OPERATIONS)

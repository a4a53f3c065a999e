"""The OpenAPI document is generated from the app's routes, and it is the truth: schemathesis
drives every operation of a real `gateway serve` on the suite's database, and every answer
must be one the document gives (status, content type, body schema, required headers), never
a 5xx.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Callable, Iterator
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urlsplit

import httpx
import orjson
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from starlette.routing import Route

from conftest import ADMIN_SECRET, ISSUED_PASSWORDS, GatewayProcess, PgServer, credentials_section
from gateway.api.exchange import error_answers
from gateway.api.openapi import JSON, Answer, ApiRoute, Operation, build_document
from gateway.api.results import NDJSON

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


# An identity that may take temporary database logins, two at a time.
BROKER_IDENTITY = """
[[identities]]
name = "login-taker"
issuer = "dev"
match = { sub = "login-taker" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

  [identities.credentials]
  ttl = "1m"
  max_ttl = "5m"
  max_active = 2
"""


@pytest.fixture(scope="module")
def gateway(
    launch_gateway: Callable[..., GatewayProcess], gateway_config: Callable[..., str], database: PgServer
) -> Iterator[GatewayProcess]:
    """The test gateway, with the credentials broker: every operation can get past its checks."""
    config = gateway_config(BROKER_IDENTITY + credentials_section(database))
    gateway = launch_gateway(config_text=config, env={ADMIN_SECRET: database.admin_password})
    yield gateway
    gateway.stop()


@pytest.fixture(scope="module")
def authorizations(gateway: GatewayProcess, mint: Callable[..., str], http: httpx.Client) -> Iterator[list[str | None]]:
    """What a case is sent with: identities that get past authentication (a writer, a reader,
    one with tight limits, one that takes database logins), a valid token of no identity, a
    forged one, none. The logins taken are revoked afterwards."""
    taker = f"Bearer {mint('login-taker')}"
    yield [
        f"Bearer {mint('writer', tenant='acme')}",
        f"Bearer {mint('reader', tenant='acme')}",
        f"Bearer {mint('limited', tenant='acme')}",
        taker,
        f"Bearer {mint('nobody-configured')}",
        "Bearer not.a.token",
        None,
    ]
    logins = http.get(f"{gateway.url}/v1/credentials", headers={"Authorization": taker}).json()["credentials"]
    for login in logins:
        http.delete(f"{gateway.url}/v1/credentials/{login['user']}", headers={"Authorization": taker})


@pytest.fixture(scope="module")
def api_schema(gateway: GatewayProcess) -> Any:
    return schemathesis.openapi.from_url(f"{gateway.url}/openapi.json", config=CONFIG, timeout=10)


# What an answer is checked for when another module's test made the request itself.
CONFORMANCE = [status_code_conformance, content_type_conformance, response_headers_conformance,
               response_schema_conformance]


@functools.cache
def _document_of(base_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=CONFIG, timeout=10)


def assert_documented(response: httpx.Response) -> None:
    """An answer to one of the document's operations is one the document gives: its status,
    content type, required headers and body schema. For the answers other modules' tests
    reach (a 202, a 429, a 503); a request to no operation (an unknown path) is not checked."""
    url = response.request.url
    document = _document_of(f"{url.scheme}://{url.netloc.decode()}")
    operation = document.find_operation_by_path(response.request.method, url.path)
    if operation is not None:
        # The answer alone: a streamed request body cannot be read again, and is not checked.
        request = httpx.Request(response.request.method, url, headers=response.request.headers)
        answer = httpx.Response(response.status_code, headers=response.headers, content=response.content,
                                request=request)
        answer.elapsed = response.elapsed
        operation.Case().validate_response(answer, checks=CONFORMANCE)


def check(cases: st.SearchStrategy, callers: st.SearchStrategy, count: int) -> None:
    """`count` cases, each sent with one of the callers and its answer validated."""

    @given(case=cases, authorization=callers)
    @settings(BOUNDED, max_examples=count)
    def send(case: Any, authorization: str | None) -> None:
        # Sent as the caller's, not as generated data: schemathesis then also checks that the
        # operation refuses the request without it (when the operation needs a token).
        headers = None if authorization is None else {"Authorization": authorization}
        response = case.call_and_validate(headers=headers, timeout=10)
        if response.status_code == 201:  # a login's password: never to be found in a log
            ISSUED_PASSWORDS.append(response.json()["password"])

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


@pytest.mark.parametrize(
    ("sql", "status", "media_type"),
    [("select 1 as one", 200, NDJSON), ("select * from generate_series(1, 20000) n", 200, NDJSON),
     ("select 1/0 as never", 400, "application/json")],
)
def test_a_query_answers_ndjson_as_documented(
    api_schema: Any, authorizations: list[str | None], sql: str, status: int, media_type: str
) -> None:
    """NDJSON, asked for with Accept (which the document cannot carry as a parameter): a short
    result, one streamed past the first batch, and an error before the first row."""
    case = api_schema["/v1/query"]["POST"].Case(body={"sql": sql})
    response = case.call_and_validate(headers={"Authorization": authorizations[0], "Accept": NDJSON}, timeout=10)
    assert response.status_code == status
    assert response.headers["content-type"][0].startswith(media_type)  # schemathesis keeps every value


def test_the_document_has_every_route_of_the_app(gateway: GatewayProcess, http: httpx.Client) -> None:
    """...and so the operations above are all of them."""
    document = http.get(f"{gateway.url}/openapi.json").json()
    documented = {(method.upper(), path) for path, methods in document["paths"].items() for method in methods}
    assert documented == set(OPERATIONS)


def test_a_route_without_its_operation_stops_the_app_from_being_built() -> None:
    async def endpoint(request: Any) -> None: ...

    with pytest.raises(TypeError, match="undocumented"):
        build_document([Route("/v1/new", endpoint, methods=["GET"])], error_answers)
    build_document([Route("/v1/new", endpoint, methods=["GET"], include_in_schema=False)], error_answers)


def test_an_operation_naming_a_code_outside_the_error_table_is_refused() -> None:
    async def endpoint(request: Any) -> None: ...

    operation = Operation("a new thing", {200: Answer("done")}, ("no_such_code",))
    with pytest.raises(ValueError, match="no_such_code"):
        build_document([ApiRoute("/v1/new", endpoint, "GET", operation)], error_answers)


def test_the_document_is_valid_openapi_3_1(api_schema: Any) -> None:
    api_schema.validate()  # against the OpenAPI 3.1 meta-schema


class _Links(HTMLParser):
    """Every URL the page would load or link to, and whether it holds a script."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.urls += [value for name, value in attrs if name in ("href", "src", "action") and value]


def test_the_reference_page_loads_everything_from_the_gateway(gateway: GatewayProcess, http: httpx.Client) -> None:
    page = http.get(f"{gateway.url}/docs")
    assert page.status_code == 200
    assert page.headers["content-type"].startswith("text/html")
    assert "default-src 'none'" in page.headers["content-security-policy"]
    links = _Links()
    links.feed(page.text)
    assert links.scripts == 0  # a page for reading: nothing runs
    assert links.urls
    for url in links.urls:
        assert urlsplit(url).scheme == "" and not url.startswith("//"), url  # nothing from elsewhere
        if not url.startswith("#"):
            asset = http.get(f"{gateway.url}{url}")
            assert asset.status_code == 200, url
    style = http.get(f"{gateway.url}/docs/reference.css")
    assert style.headers["content-type"].startswith("text/css")
    assert "url(" not in style.text and "@import" not in style.text  # no fonts or images to fetch


def test_the_reference_page_describes_every_operation_status_and_example(
    gateway: GatewayProcess, http: httpx.Client
) -> None:
    document = http.get(f"{gateway.url}/openapi.json").json()
    page = http.get(f"{gateway.url}/docs").text
    anchors = {url[1:] for url in _links_of(page) if url.startswith("#")}
    examples_shown = 0
    for path, methods in document["paths"].items():
        for method, operation in methods.items():
            (section,) = [part for part in page.split("<section ")[1:] if f"<code>{html.escape(path)}</code>" in part
                          and f">{method.upper()}</span>" in part]
            assert section.split('"')[1] in anchors, (method, path)  # the index links to it
            assert html.escape(operation["summary"]) in section
            for status in operation["responses"]:
                assert f">{status}</span>" in section, (method, path, status)
            body = operation.get("requestBody", {}).get("content", {}).get(JSON, {}).get("schema", {})
            for example in body.get("examples", []):
                assert html.escape(orjson.dumps(example).decode()) in section, (method, path)
                examples_shown += 1
    assert examples_shown >= 8  # query, batch, explain, sql, mcp, credentials, approvals


def _links_of(page: str) -> list[str]:
    links = _Links()
    links.feed(page)
    return links.urls

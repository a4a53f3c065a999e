"""Bad input is a 4xx, never a 500 (issue on robustness, "Bad input is a 4xx"): parameters
nested too deep, integers beyond 64 bits, bodies that are not UTF-8, validly signed tokens
with hostile claims — each against a real `gateway serve`. Then a property test throws
hostile bodies and headers at every endpoint and finds no 500, no hang, an answer always in
the wire format's JSON shape, and the gateway still up.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_api_errors import ERROR_KEYS, assert_error, assert_unauthenticated
from test_neon_sql import DRIVER_HEADERS, sql_error
from test_neon_sql import ERROR_KEYS as NEON_ERROR_KEYS

import gateway.auth
from conftest import DEV_ISSUER, MINTED_TOKENS, Api, GatewayProcess, eventually
from oidc_provider import hs256_over_bytes

WIDE = 123456789012345678901234567890  # beyond 64 bits: orjson alone reads it as a float
# The hostile gateway's own limits: bodies near max_body_bytes stay cheap to send, and a
# parameter depth other than the default shows the configured one is used.
SMALL_BODY = 64 * 1024
SMALL_DEPTH = 8


def nested(levels: int, leaf: Any = 1, kind: str = "array") -> Any:
    value = leaf
    for _ in range(levels):
        value = [value] if kind == "array" else {"a": value}
    return value


@pytest.fixture(scope="module")
def hostile_gateway(launch_gateway, gateway_config) -> GatewayProcess:
    """A gateway of its own, so that nothing thrown at it disturbs the shared one. (The
    parameter depth is no placeholder of the test configuration: it is written into [server].)"""
    text = gateway_config(max_body_bytes=SMALL_BODY)
    return launch_gateway(config_text=text.replace("[server]\n", f"[server]\nmax_param_depth = {SMALL_DEPTH}\n", 1))


@pytest.fixture(scope="module")
def signed(jwt_secret: str) -> Callable[[bytes], str]:
    """A token over any payload bytes, validly signed with the test issuer's secret."""

    def sign(payload: bytes) -> str:
        token = hs256_over_bytes({"alg": "HS256", "typ": "JWT"}, payload, jwt_secret.encode())
        MINTED_TOKENS.append(token)  # the end-of-session search for leaked tokens covers it too
        return token

    return sign


def payload_with(extra: bytes) -> bytes:
    """Valid claims of the writer, then `extra` (raw JSON text: `"key": value`)."""
    now = int(time.time())
    head = {"iss": DEV_ISSUER.issuer, "aud": DEV_ISSUER.audience, "sub": "writer", "iat": now, "exp": now + 300}
    return json.dumps(head).encode()[:-1] + b", " + extra + b"}"


# ---------------------------------------------------------------------------- nesting


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/query", {"sql": "select $1::jsonb as v", "params": [nested(300, kind="object")]}),
        ("/v1/query", {"sql": "select $1::int4[] as v", "params": [nested(900)]}),
        ("/v1/explain", {"sql": "select $1::jsonb as v", "params": [nested(300)]}),
        ("/v1/batch", {"statements": [{"sql": "select 1"}, {"sql": "select $1::jsonb as v", "params": [nested(65)]}]}),
    ],
    ids=["jsonb-300", "array-900", "explain", "batch"],
)
def test_a_parameter_nested_past_the_limit_is_a_400_naming_it(writer, path, body):
    error = assert_error(writer.post(path, content=json.dumps(body).encode()), 400, "bad_request")
    assert "parameter $1 is nested more than 64 levels deep" in error["message"]


@pytest.mark.parametrize("value", [nested(300, kind="object"), nested(900)], ids=["jsonb-300", "array-900"])
def test_a_parameter_nested_past_the_limit_is_a_400_on_sql(writer, value):
    content = json.dumps({"query": "select $1::jsonb as v", "params": [value]}).encode()  # orjson stops at 255
    body = sql_error(writer.post("/sql", content=content, headers=DRIVER_HEADERS), "")
    assert "parameter $1 is nested more than 64 levels deep" in body["message"]


def test_a_parameter_nested_to_the_limit_reaches_postgres(writer):
    value = nested(63, kind="object")  # an object inside each of 63 objects: 64 levels
    response = writer.query("select $1::jsonb as v", value)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"v": value}]


def test_the_depth_limit_is_the_configured_one(hostile_gateway, call_as):
    api = call_as(hostile_gateway, "writer")
    assert api.query("select $1::jsonb as v", nested(SMALL_DEPTH)).status_code == 200
    error = assert_error(api.query("select $1::jsonb as v", nested(SMALL_DEPTH + 1)), 400, "bad_request")
    assert f"nested more than {SMALL_DEPTH} levels" in error["message"]


def test_a_body_too_deep_to_read_exactly_is_a_400(writer):
    """The exact reading of a wide integer recurses per level of the body."""
    body = b'{"sql": "select 1", "padding": ' + b"[" * 1000 + str(WIDE).encode() + b"]" * 1000 + b"}"
    error = assert_error(writer.post("/v1/query", content=body), 400, "bad_request")
    assert "too deeply" in error["message"]


# ---------------------------------------------------------------------------- wide integers


@pytest.mark.parametrize("sql", ["select $1::numeric::text as v", "select $1::text as v", "select $1 as v"])
def test_a_wide_integer_reaches_postgres_exactly(writer, sql):
    body = b'{"sql": "%s", "params": [%d]}' % (sql.encode(), WIDE)
    response = writer.post("/v1/query", content=body)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"v": str(WIDE)}]


def test_a_wide_integer_inside_a_jsonb_parameter_stays_exact(writer):
    body = b'{"sql": "select ($1::jsonb -> \'n\')::text as v", "params": [{"n": -%d}]}' % WIDE
    response = writer.post("/v1/query", content=body)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"v": f"-{WIDE}"}]


def test_a_wide_integer_reaches_postgres_exactly_on_sql(writer):
    body = b'{"query": "select $1::numeric as v, $2::jsonb as j", "params": [%d, {"n": %d}]}' % (WIDE, WIDE)
    response = writer.post("/sql", content=body)
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"v": str(WIDE), "j": {"n": WIDE}}]


def test_a_wide_integer_for_a_bigint_parameter_is_a_400_naming_it(writer):
    body = b'{"sql": "select $1::int8 as v", "params": [%d]}' % WIDE
    error = assert_error(writer.post("/v1/query", content=body), 400, "bad_request")
    assert error["message"].startswith("parameter $1:") and "out of range" in error["message"]


# ---------------------------------------------------------------------------- UTF-8


@pytest.mark.parametrize("garbage", [b"\xff", b"\xc3\x28", b"\xed\xa0\x80"], ids=["ff", "truncated", "surrogate"])
def test_a_body_that_is_not_utf8_says_so(writer, garbage):
    body = b'{"sql": "select \'' + garbage + b"' as v\"}"
    error = assert_error(writer.post("/v1/query", content=body), 400, "bad_request")
    assert "not valid UTF-8" in error["message"] and f"offset {body.index(garbage)}" in error["message"]
    neon_error = sql_error(writer.post("/sql", content=body.replace(b'"sql"', b'"query"')), "")
    assert "not valid UTF-8" in neon_error["message"]


def test_a_client_that_leaves_while_sending_the_body_is_audited_as_gone(hostile_gateway, mint):
    host, port = hostile_gateway.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port))) as connection:
        connection.sendall(
            b"POST /v1/query HTTP/1.1\r\nHost: gateway\r\nX-Request-Id: left-mid-body\r\nContent-Length: 1000\r\n"
            b"Authorization: Bearer " + mint("writer").encode() + b'\r\n\r\n{"sql": "sel'
        )
    record = eventually(lambda: audit_record(hostile_gateway, "left-mid-body"), "the audit record of the request")
    assert record["status"] == 499
    assert "unhandled error" not in hostile_gateway.output()


def audit_record(gateway: GatewayProcess, request_id: str) -> dict | None:
    for line in gateway.output().splitlines():
        if f'"requestId":"{request_id}"' in line:
            return json.loads(line)
    return None


# ---------------------------------------------------------------------------- tokens


def test_a_token_with_claims_nested_past_the_limit_is_401_with_a_reason(writer, mint):
    deep = mint("writer", groups=nested(gateway.auth.MAX_CLAIMS_DEPTH, leaf="ops"))
    assert_unauthenticated(Api(writer.base, deep, writer.client).query("select 1"), "claims_too_deep")


@pytest.mark.parametrize(
    ("claim", "reason"),
    [
        (b'"exp": 1' + b"0" * 400, "malformed_token"),  # beyond a double's range
        (b'"exp": 1' + b"0" * 30, "invalid_time_claim"),
        (b'"nbf": -1' + b"0" * 30, "invalid_time_claim"),
        (b'"iat": -1e300', "invalid_time_claim"),
        (b'"groups": ' + b"[" * 2000 + b"]" * 2000, "malformed_token"),
        (b'"n": NaN', "malformed_token"),
        (b'"n": "\\ud800"', "malformed_token"),
    ],
    ids=["exp-400-digits", "exp-31-digits", "nbf-negative", "iat-negative", "2000-deep", "nan", "lone-surrogate"],
)
def test_a_validly_signed_token_with_hostile_claims_is_401_with_a_reason(writer, signed, claim, reason):
    token = signed(payload_with(claim))  # a repeated exp or iat replaces the valid one: the last key wins
    assert_unauthenticated(Api(writer.base, token, writer.client).query("select 1"), reason)
    assert_unauthenticated(Api(writer.base, token, writer.client).get("/v1/whoami"), reason)


def test_wide_integer_claims_reach_postgres_exactly(solo_as):
    inspector = solo_as("inspector", account=WIDE)
    response = inspector.query("select current_setting('request.jwt.claims')::jsonb -> 'account' as account")
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"account": WIDE}]


@pytest.mark.parametrize("decision", [["approve"], {"approve": True}, 1, None, "maybe"])
def test_an_approval_decision_that_is_not_one_of_its_two_words_is_a_400(writer, decision):
    assert_error(writer.post("/v1/approvals/some-id", {"decision": decision}), 400, "bad_request")


def test_approvals_are_none_to_find_where_gateway_setup_has_not_run(writer):
    """Without its table (no rule asks for approval, so `gateway setup` need not run) there is
    no request to list, read or decide: never a 500."""
    assert writer.get("/v1/approvals").json() == {"approvals": []}
    assert_error(writer.get("/v1/approvals/some-id"), 404, "not_found")
    assert_error(writer.post("/v1/approvals/some-id", {"decision": "reject"}), 404, "not_found")


# ---------------------------------------------------------------------------- anything at all

ENDPOINTS = [("POST", "/v1/query"), ("POST", "/v1/batch"), ("POST", "/v1/explain"), ("POST", "/sql"),
             ("GET", "/v1/whoami")]  # fmt: skip
STATEMENTS = [
    "select $1::jsonb as v", "select $1::json as v", "select $1::numeric as v", "select $1::int8 as v",
    "select $1::int4 as v", "select $1::float8 as v", "select $1::text as v", "select $1 as v",
    "select $1::text[] as v", "select $1::int4[] as v", "select $1::jsonb[] as v", "select $1::bool as v",
    "select $1::bytea as v", "select $1::date as v", "select $1::uuid as v", "select 1 as v",
    "select id from orders where id = $1", "select $1::text as a, $2::jsonb as b",
]  # fmt: skip
HOSTILE_STRINGS = ["\x00", "a\x00b", "\ud800", "\udfff\ud800", "\u2028", "\ufeff", "NaN", "-Infinity", "1e400",
                   "{1,2", "{{{}}}", "\\", '"', "[0:1]={1,2}", "é" * 40, "(1,", "\\x4g", "$1,$2",
                   "select 1; select 2"]  # fmt: skip
GARBAGE = [b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\x00", b"\\ud800", b"NaN", b"1e400", b"]", b"{"]

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(2**63 - 2, 10**40)
    | st.integers(-(10**40), -(2**63) + 2)
    | st.floats()  # NaN and infinities become invalid JSON text
    | st.text(max_size=20)
    | st.sampled_from(HOSTILE_STRINGS)
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
deep_values = st.builds(nested, st.integers(0, 300), values, st.sampled_from(["array", "object"]))
any_value = st.one_of(values, values, deep_values)
statement_texts = st.sampled_from(STATEMENTS) | st.text(max_size=60) | st.sampled_from(HOSTILE_STRINGS)


def maybe(strategy: st.SearchStrategy, good: st.SearchStrategy) -> st.SearchStrategy:
    """Mostly the right kind of value, sometimes anything at all."""
    return st.one_of(good, good, good, strategy)


params = maybe(any_value, st.lists(any_value, max_size=3))
native_statement = st.fixed_dictionaries(
    {"sql": maybe(any_value, statement_texts)}, optional={"params": params, "rowMode": maybe(values, st.just("array"))}
)
neon_query = st.fixed_dictionaries(
    {"query": maybe(any_value, statement_texts)}, optional={"params": params, "arrayMode": maybe(values, st.booleans())}
)
bodies = {
    "/v1/query": native_statement,
    "/v1/explain": native_statement,
    "/v1/batch": st.fixed_dictionaries(
        {"statements": maybe(any_value, st.lists(maybe(values, native_statement), max_size=3))},
        optional={"isolation": maybe(values, st.just("serializable")), "readOnly": maybe(values, st.booleans())},
    ),
    "/sql": neon_query | st.fixed_dictionaries({"queries": maybe(any_value, st.lists(neon_query, max_size=3))}),
    "/v1/whoami": values,
}


@st.composite
def runnable(draw: st.DrawFn, sql_key: str) -> dict:
    """A statement the policy allows, with as many parameters as it uses, of any value: these
    reach PostgreSQL."""
    sql = draw(st.sampled_from(STATEMENTS))
    return {sql_key: sql, "params": draw(st.lists(any_value, min_size=sql.count("$"), max_size=sql.count("$")))}


well_formed = {
    "/v1/query": runnable("sql"),
    "/v1/explain": runnable("sql"),
    "/v1/batch": st.builds(
        lambda statements: {"statements": statements}, st.lists(runnable("sql"), min_size=1, max_size=3)
    ),
    "/sql": runnable("query")
    | st.builds(lambda queries: {"queries": queries}, st.lists(runnable("query"), max_size=3)),
    "/v1/whoami": st.none(),
}


@st.composite
def encoded(draw: st.DrawFn, path: str) -> bytes:
    """A body for `path` as bytes: JSON (escaped, or raw UTF-8 with surrogates passed
    through), then perhaps spoiled — garbage spliced in, a key repeated, a wide or
    overlong number, nesting past every limit, padding near and over max_body_bytes."""
    value = draw(st.one_of(well_formed[path], well_formed[path], bodies[path], any_value))
    if draw(st.booleans()):
        text = json.dumps(value, allow_nan=True).encode()
    else:
        text = json.dumps(value, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    spoil = draw(st.sampled_from(["none"] * 5 + ["garbage", "repeat", "number", "deep", "wide", "pad"]))
    if spoil == "garbage":
        at = draw(st.integers(0, len(text)))
        return text[:at] + draw(st.sampled_from(GARBAGE)) + text[at:]
    if spoil == "repeat" and text.startswith(b"{") and len(text) > 2:
        return b'{"sql": "select 1", "query": "select 1", "params": [1], ' + text[1:]
    if spoil == "number":
        number = draw(
            st.builds(lambda sign, zeros: sign + b"1" + b"0" * zeros, st.sampled_from([b"", b"-"]), st.integers(0, 420))
            | st.sampled_from([b"1e400", b"-1e400", b"1e-400", b"0.1e309", b"-0", b"1E+2", b"123456789012345678.5"])
        )
        sql = draw(st.sampled_from([b"select $1::numeric as v", b"select $1::int8 as v", b"select $1::jsonb as v"]))
        return b'{"sql": "%s", "query": "%s", "params": [%s]}' % (sql, sql, number)
    if spoil == "wide":
        count = draw(st.integers(1000, 6000))
        wide = draw(st.sampled_from([b"[" + b",".join([b"1"] * count) + b"]",
                                     b"{" + b",".join(b'"k%d": [1]' % i for i in range(count)) + b"}"]))  # fmt: skip
        sql = draw(st.sampled_from([b"select $1::int4[] as v", b"select $1::jsonb as v", b"select $1::text as v"]))
        return b'{"sql": "%s", "query": "%s", "params": [%s]}' % (sql, sql, wide)
    if spoil == "deep":
        levels = draw(st.integers(60, 1100))
        return (
            b'{"sql": "select $1::jsonb as v", "query": "select $1", "params": ['
            + b"[" * levels
            + (draw(st.sampled_from([b"", str(2**70).encode()])))
            + b"]" * levels
            + b"]}"
        )
    if spoil == "pad":
        size = draw(st.sampled_from([SMALL_BODY - 200, SMALL_BODY - len(text) - 40, SMALL_BODY + 10]))
        return b'{"sql": "select $1::text as v", "query": "select $1", "params": ["' + b"x" * max(size, 0) + b'"]}'
    return text


junk_authorizations = st.sampled_from(
    [b"", b"Bearer", b"Bearer  \t x", b"bearer x.y.z", b"Basic dXNlcjpwYXNz", b"Bearer \xc3\xa9\xc3\xa9",
     b"Bearer \xff", b"Bearer " + b"a" * 17_000, b"Bearer a.b.c", b"Bearer e30.e30.", b"Token abc", b"Bearer\tabc"]
)  # fmt: skip
claim_names = st.sampled_from(["sub", "exp", "iat", "nbf", "aud", "tenant", "groups", "role"])
# Around the claims' depth limit (PyJWT's encoder would recurse past Python's limit far deeper).
claim_values = values | st.builds(nested, st.integers(0, 60), values, st.sampled_from(["array", "object"]))


@st.composite
def authorization(draw: st.DrawFn, mint: Callable[..., str], signed: Callable[[bytes], str]) -> bytes | None:
    kind = draw(st.sampled_from(["valid", "valid", "valid", "valid", "claims", "payload", "junk", "none"]))
    if kind == "none":
        return None
    if kind == "junk":
        return draw(junk_authorizations)
    if kind == "valid":
        return b"Bearer " + mint(draw(st.sampled_from(["writer", "reader", "limited", "nobody"]))).encode()
    if kind == "claims":  # validly signed, claims of any shape
        claims = draw(st.dictionaries(claim_names, claim_values, max_size=3))
        return b"Bearer " + mint("writer", **claims).encode()
    extra = draw(st.sampled_from([b'"n": NaN', b'"n": "\\ud800"', b'"n": "\xff"', b'"exp": 1' + b"0" * 400,
                                  b'"n": ' + b"[" * 1500 + b"]" * 1500, b'"iss": 1', b'"exp": "soon"']))  # fmt: skip
    return b"Bearer " + signed(payload_with(extra)).encode()


header_choices = {
    b"content-type": [b"application/json", b"text/plain;charset=UTF-8", b"application/x-www-form-urlencoded",
                      b"multipart/form-data; boundary=x", b"application/json; charset=utf-16", b"\xc3\xa7/\xc3\xa7"],
    b"accept": [b"application/x-ndjson", b"*/*", b"text/html", b"application/x-ndjson, application/json"],
    b"content-encoding": [b"gzip", b"br"],
    b"traceparent": [b"00-" + b"f" * 32 + b"-" + b"0" * 16 + b"-01", b"zz", b"\xff" * 60],
    b"x-request-id": [b"ok-id", b"\xc3\xa9" * 10, b"x" * 500],
    b"neon-connection-string": [b"postgresql://u:p@h/db", b"mysql://x", b"postgresql://[::1", b"\xff"],
    b"neon-batch-isolation-level": [b"Serializable", b"snapshot", b""],
    b"neon-array-mode": [b"true", b"false", b"yes"],
    b"neon-raw-text-output": [b"true", b"false"],
    b"neon-batch-read-only": [b"true", b"1"],
}  # fmt: skip
headers = st.dictionaries(st.sampled_from(sorted(header_choices)), st.integers(0, 5), max_size=4).map(
    lambda picks: {name: header_choices[name][i % len(header_choices[name])] for name, i in picks.items()}
)


@st.composite
def hostile_requests(draw: st.DrawFn, mint: Callable[..., str], signed: Callable[[bytes], str]) -> tuple:
    method, path = draw(st.sampled_from(ENDPOINTS))
    request_headers = draw(headers)
    token = draw(authorization(mint, signed))
    if token is not None:
        request_headers[b"authorization"] = token
    return method, path, request_headers, draw(encoded(path))


def answered_in_shape(response: httpx.Response, path: str) -> None:
    """A 2xx or a 4xx (or, from /sql, whose clients know no truncation, a 507 for a result over
    the identity's limits), in the JSON shape of the endpoint's wire format, and no sign of
    an internal error."""
    status = response.status_code
    too_large = path == "/sql" and status == 507 and response.json()["code"] == "response_too_large"
    assert 200 <= status < 300 or 400 <= status < 500 or too_large, f"{status}: {response.text[:500]}"
    assert b"internal_error" not in response.content, response.text[:500]
    if response.headers.get("content-type", "").startswith("application/x-ndjson"):
        for line in response.content.splitlines():
            orjson.loads(line)
        return
    body = response.json()
    if status < 300:
        return
    if path == "/sql":
        assert list(body) == NEON_ERROR_KEYS if status == 400 else set(body) == {"message", "code"}, body
    else:
        assert set(body) == {"error"} and set(body["error"]) == ERROR_KEYS, body
        assert body["error"]["requestId"] == response.headers["x-request-id"]


def request_of(path: str, body: Any, headers: dict[bytes, bytes]) -> tuple:
    """An explicit case, in the shape `hostile_requests` draws."""
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return "GET" if path == "/v1/whoami" else "POST", path, headers, content


HOSTILE_SETTINGS = settings(
    max_examples=200,
    deadline=None,  # a hang is caught by the client's timeout below, not by hypothesis
    derandomize=True,  # the same cases on every run, so a failure reproduces
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="module")
def hostile_client() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:  # far above any answer; reaching it is a hang
        yield client


def send(client: httpx.Client, gateway: GatewayProcess, request: tuple) -> None:
    method, path, request_headers, content = request
    response = client.request(method, gateway.url + path, headers=request_headers,
                              content=content if method == "POST" else None)  # fmt: skip
    answered_in_shape(response, path)
    assert gateway.process.poll() is None, gateway.output()[-2000:]


def test_the_cases_the_issue_names_get_no_500(hostile_gateway, hostile_client, mint, signed):
    bearer = {b"authorization": b"Bearer " + mint("writer").encode()}
    cases = [
        request_of("/v1/query", {"sql": "select $1::jsonb as v", "params": [nested(300, kind="object")]}, bearer),
        request_of("/sql", {"query": "select $1::int4[] as v", "params": [nested(900)]}, bearer),
        request_of("/v1/batch", {"statements": [{"sql": "select 1"}], "isolation": {"level": 1}}, bearer),
        request_of("/v1/query", b'{"sql": "select $1::numeric as v", "params": [%d]}' % WIDE, bearer),
        request_of("/v1/explain", b'{"sql": "select \xff"}', bearer),
    ]
    for token in (mint("writer", groups=nested(60)), signed(payload_with(b'"exp": 1' + b"0" * 400))):
        hostile = {b"authorization": b"Bearer " + token.encode()}
        cases += [request_of(path, {"sql": "select 1"}, hostile) for _, path in ENDPOINTS]
    for case in cases:
        send(hostile_client, hostile_gateway, case)


@HOSTILE_SETTINGS
@given(data=st.data())
def test_no_input_gets_a_500_or_hangs_and_the_gateway_stays_up(hostile_gateway, hostile_client, mint, signed, data):
    send(hostile_client, hostile_gateway, data.draw(hostile_requests(mint, signed)))


def test_the_hostile_gateway_logged_no_internal_error(hostile_gateway):
    """Runs after the tests above: every failure there was one the gateway meant."""
    assert httpx.get(f"{hostile_gateway.url}/healthz", timeout=10).status_code == 200
    output = hostile_gateway.output()
    assert "unhandled error" not in output and "Traceback" not in output, output[-3000:]

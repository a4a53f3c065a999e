"""The Python client (`gateway_client`) against a running gateway: both row modes, batches,
NDJSON streams, every error as its typed exception, retries that honour `Retry-After`, the
token providers (environment, rotated file, GCP metadata server, GitHub Actions — the last
two as loopback stand-ins), and the async client doing the same."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from gateway_client import (
    AsyncGatewayClient,
    BadRequest,
    Column,
    DatabaseUnavailable,
    EnvToken,
    FileToken,
    GatewayClient,
    GatewayError,
    GcpIdentityToken,
    GithubActionsToken,
    NoIdentity,
    Overloaded,
    PolicyDenied,
    RateLimited,
    SqlError,
    StaticToken,
    TokenError,
    Unauthenticated,
)
from standins import (
    ACTIONS_TOKEN_PATH,
    GCP_IDENTITY_PATH,
    actions_token_endpoint,
    failing_front,
    gateway_error,
    gcp_metadata_server,
    text,
)

SERIES_SQL = "select g from generate_series(1, $1) g"
# Fails at g = 7000, after the first batch of 5000 rows has been sent.
FAILS_MID_STREAM_SQL = "select 1 / (g - 7000) as x from generate_series(1, 10000) g"


@pytest.fixture
def client_as(gateway, mint) -> Iterator[Callable[..., GatewayClient]]:
    """`client_as("writer", tenant="acme")` -> a GatewayClient for the shared gateway."""
    clients: list[GatewayClient] = []

    def make(subject: str, *, url: str | None = None, retries: int = 0, **claims) -> GatewayClient:
        client = GatewayClient(url or gateway.url, StaticToken(mint(subject, **claims)), retries=retries)
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def writer(client_as) -> GatewayClient:
    return client_as("writer", tenant="acme")


def raised(call: Callable[[], object], error_type: type[GatewayError]) -> GatewayError:
    with pytest.raises(error_type) as caught:
        call()
    return caught.value


# ---------------------------------------------------------------------------- query and batch


def test_query_returns_rows_as_objects(writer):
    result = writer.query("select id, name from customers where tenant = $1 order by id", "acme")
    assert result.columns == [Column("id", "int8"), Column("name", "text")]
    assert result.rows == [{"id": "1", "name": "Ada Lovelace"}, {"id": "2", "name": "Grace Hopper"}]
    assert (result.command, result.row_count, result.truncated) == ("SELECT", 2, False)


def test_query_returns_rows_as_arrays(writer):
    result = writer.query("select id, name from customers where tenant = $1 order by id", "acme", row_mode="array")
    assert result.rows == [["1", "Ada Lovelace"], ["2", "Grace Hopper"]]


def test_parameters_go_positionally_or_as_a_list_not_both(writer):
    assert writer.query("select $1::int + $2::int as n", 1, 2).rows == [{"n": 3}]
    assert writer.query("select $1::int + $2::int as n", params=[1, 2]).rows == [{"n": 3}]
    with pytest.raises(TypeError):
        writer.query("select $1::int as n", 1, params=[1])


def test_a_decimal_parameter_goes_as_its_exact_text(writer):
    assert writer.query("select $1::numeric as n", Decimal("12345678901234567890.10")).rows == [
        {"n": "12345678901234567890.10"}
    ]


def test_times_and_uuids_go_as_text_postgresql_parses(writer):
    moment, day, key = datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=UTC), date(2026, 1, 2), uuid.uuid4()
    sql = ("select $1::timestamptz = '2026-01-02 03:04:05.0006+00' as moment, $2::date = '2026-01-02' as day,"
           " $3::uuid::text as key")
    assert writer.query(sql, moment, day, key).rows == [{"moment": True, "day": True, "key": str(key)}]


def test_a_parameter_json_cannot_spell_is_refused_before_sending(writer):
    with pytest.raises(ValueError, match="not JSON compliant"):
        writer.query("select $1::float8 as x", float("nan"))
    with pytest.raises(TypeError, match="cannot send a set"):
        writer.query("select $1 as x", {1})


def test_batch_returns_each_result_of_one_transaction(writer):
    note = f"client batch {uuid.uuid4()}"
    inserted, counted = writer.batch([
        ("insert into ledger (note) values ($1) returning note", [note]),
        ("select count(*) as n from ledger where note = $1", [note]),
    ])
    assert (inserted.command, inserted.row_count, inserted.rows) == ("INSERT", 1, [{"note": note}])
    assert counted.rows == [{"n": "1"}]


def test_a_failed_batch_leaves_nothing_behind(writer):
    note = f"client rollback {uuid.uuid4()}"
    error = raised(lambda: writer.batch([("insert into ledger (note) values ($1)", [note]), "select 1 / 0"]),
                   SqlError)
    assert error.sqlstate == "22012"
    assert writer.query("select count(*) as n from ledger where note = $1", note).rows == [{"n": "0"}]


def test_a_read_only_batch_refuses_writes(writer):
    error = raised(lambda: writer.batch([("insert into ledger (note) values ($1)", ["ro"])], read_only=True,
                                        isolation="serializable"), SqlError)
    assert error.sqlstate == "25006"


# ---------------------------------------------------------------------------- streams


def test_stream_reads_10000_rows_as_they_come(writer):
    with writer.stream(SERIES_SQL, 10000) as rows:
        assert rows.columns == [Column("g", "int4")]
        assert rows.row_count is None  # known at the end
        received = list(rows)
    assert received == [{"g": n} for n in range(1, 10001)]
    assert (rows.command, rows.row_count, rows.truncated) == ("SELECT", 10000, False)


def test_stream_rows_as_arrays(writer):
    with writer.stream(SERIES_SQL, params=[3], row_mode="array") as rows:
        assert list(rows) == [[1], [2], [3]]


def test_a_stream_that_fails_after_its_first_rows_raises_at_the_end(writer):
    received = []
    with writer.stream(FAILS_MID_STREAM_SQL) as rows:
        error = raised(lambda: received.extend(rows), SqlError)
    assert len(received) >= 5000 and received[0] == {"x": 0}
    assert (error.status, error.sqlstate, error.message) == (400, "22012", "division by zero")
    assert error.request_id


def test_a_stream_that_fails_at_once_raises_on_opening(writer):
    with pytest.raises(SqlError), writer.stream("select nope from orders"):
        pytest.fail("the stream opened")


def test_a_stream_cut_by_a_limit_says_truncated(solo_gateway, mint):
    with GatewayClient(solo_gateway.url, StaticToken(mint("capped"))) as capped, \
            capped.stream(SERIES_SQL, 100) as rows:
        assert len(list(rows)) == 5
    assert (rows.row_count, rows.truncated) == (5, True)


# ---------------------------------------------------------------------------- explain and whoami


def test_explain_says_why_without_running(writer):
    denied = writer.explain("delete from orders where id = $1", 1)
    assert (denied.allowed, denied.kind, denied.tables) == (False, "delete", ["public.orders"])
    assert "DELETE on public.orders" in denied.reason
    assert writer.explain("select id from orders").reason is None


def test_whoami_names_the_identity(writer):
    caller = writer.whoami()
    assert (caller["identity"], caller["subject"], caller["role"]) == ("writer", "writer", "demo_writer")


# ---------------------------------------------------------------------------- typed errors


def test_sql_error_carries_sqlstate_and_position(writer):
    error = raised(lambda: writer.query("select nope from orders"), SqlError)
    assert (error.status, error.code, error.sqlstate, error.position) == (400, "sql_error", "42703", 8)
    assert 'column "nope" does not exist' in str(error)
    assert error.request_id


def test_a_parameter_that_does_not_fit_is_bad_request(writer):
    error = raised(lambda: writer.query("select $1::int as n", "abc"), BadRequest)
    assert error.message.startswith("parameter $1")


def test_an_invalid_or_expired_token_is_unauthenticated(client_as, gateway):
    with GatewayClient(gateway.url, StaticToken("not-a-token")) as stranger:
        assert raised(stranger.whoami, Unauthenticated).status == 401
    expired = client_as("writer", ttl=-60)
    assert raised(expired.whoami, Unauthenticated).detail == "expired"


def test_a_token_matching_no_identity_is_no_identity(client_as):
    assert raised(client_as("nobody-in-particular").whoami, NoIdentity).status == 403


def test_a_denied_statement_is_policy_denied(writer):
    error = raised(lambda: writer.query("delete from orders where id = $1", 1), PolicyDenied)
    assert (error.status, error.code) == (403, "policy_denied")
    assert "DELETE on public.orders is not allowed" in error.message


def test_over_the_rate_is_rate_limited_with_retry_after(client_as):
    limited = client_as("limited")  # rate 3/s, retries=0

    def until_refused() -> RateLimited:
        for _ in range(20):
            try:
                limited.query("select 1 as one")
            except RateLimited as error:
                return error
        pytest.fail("never rate limited")

    error = until_refused()
    assert (error.status, error.code) == (429, "rate_limited")
    assert error.retry_after is not None and error.retry_after >= 1


def test_a_rate_limited_call_is_retried_after_retry_after(client_as):
    limited = client_as("limited", retries=3)
    started = time.monotonic()
    results = [limited.query("select $1::int as n", n) for n in range(6)]
    assert [result.rows for result in results] == [[{"n": n}] for n in range(6)]
    assert time.monotonic() - started >= 0.9  # six at 3/s: at least one wait for Retry-After


# ---------------------------------------------------------------------------- retries (stand-in front)


def front_client(front, mint, **options) -> GatewayClient:
    return GatewayClient(front.url, StaticToken(mint("writer", tenant="acme")), **options)


def test_overloaded_and_rate_limited_are_retried_for_any_call(gateway, mint):
    failures = [gateway_error(503, "overloaded", "0"), gateway_error(429, "rate_limited", "0")]
    with failing_front(gateway.url, failures) as front, front_client(front, mint) as client:
        assert client.query("select 1 as one").rows == [{"one": 1}]
    assert len(front.seen) == 3


def test_database_unavailable_is_retried_only_for_idempotent_calls(gateway, mint):
    failures = [gateway_error(503, "database_unavailable", "0")] * 3
    with failing_front(gateway.url, failures) as front, front_client(front, mint) as client:
        assert raised(lambda: client.query("select 1 as one"), DatabaseUnavailable).retry_after == 0
        assert len(front.seen) == 1
        assert client.query("select 1 as one", idempotent=True).rows == [{"one": 1}]
        assert client.whoami()["identity"] == "writer"
    assert len(front.seen) == 5


def test_a_proxy_503_without_a_gateway_body_is_retried_only_when_idempotent(gateway, mint):
    failures = [text(503, "upstream unavailable")] * 2
    with failing_front(gateway.url, failures) as front, front_client(front, mint) as client:
        error = raised(lambda: client.query("select 1 as one"), GatewayError)
        assert (error.status, error.code) == (503, "http_error")
        assert client.explain("select 1 as one").allowed  # after 0.5 s of backoff
    assert len(front.seen) == 3


def test_retries_are_bounded_in_number(gateway, mint):
    with failing_front(gateway.url, [gateway_error(503, "overloaded", "0")] * 5) as front, \
            front_client(front, mint, retries=2) as client:
        raised(client.whoami, Overloaded)
    assert len(front.seen) == 3


def test_a_retry_after_beyond_the_wait_budget_is_raised_at_once(gateway, mint):
    with failing_front(gateway.url, [gateway_error(429, "rate_limited", "30")]) as front, \
            front_client(front, mint, max_retry_wait=5) as client:
        started = time.monotonic()
        assert raised(client.whoami, RateLimited).retry_after == 30
        assert time.monotonic() - started < 5
    assert len(front.seen) == 1


def test_a_stream_is_retried_before_its_first_row(gateway, mint):
    with failing_front(gateway.url, [gateway_error(503, "overloaded", "0")]) as front, \
            front_client(front, mint) as client, client.stream(SERIES_SQL, 3) as rows:
        assert list(rows) == [{"g": 1}, {"g": 2}, {"g": 3}]


# ---------------------------------------------------------------------------- token providers


def test_env_token_reads_the_variable_at_each_call(gateway, mint, monkeypatch):
    with GatewayClient(gateway.url, EnvToken("GATEWAY_TOKEN")) as client:
        monkeypatch.setenv("GATEWAY_TOKEN", mint("writer"))
        assert client.whoami()["identity"] == "writer"
        monkeypatch.setenv("GATEWAY_TOKEN", mint("reader"))
        assert client.whoami()["identity"] == "reader"
        monkeypatch.delenv("GATEWAY_TOKEN")
        with pytest.raises(TokenError, match="GATEWAY_TOKEN is not set"):
            client.whoami()


def project_token(folder: Path, version: str, token: str) -> None:
    """Write a token as the kubelet does: a new timestamped folder, then an atomic swap of
    the `..data` symlink that `token` points through."""
    (folder / version).mkdir()
    (folder / version / "token").write_text(token)
    (folder / "..data_tmp").symlink_to(version)
    os.replace(folder / "..data_tmp", folder / "..data")
    if not (folder / "token").is_symlink():
        (folder / "token").symlink_to("..data/token")


def test_file_token_follows_a_rotated_projected_token(gateway, mint, tmp_path):
    project_token(tmp_path, "..2024_01_01_00_00_00.1", mint("writer"))
    with GatewayClient(gateway.url, FileToken(tmp_path / "token")) as client:
        assert client.whoami()["identity"] == "writer"
        project_token(tmp_path, "..2024_01_01_00_10_00.2", mint("reader"))
        assert client.whoami()["identity"] == "reader"


def test_gcp_identity_token_comes_from_the_metadata_server_and_is_kept(gateway, mint):
    with gcp_metadata_server(gateway.url, lambda: mint("reader")) as metadata:
        provider = GcpIdentityToken(audience=gateway.url, metadata_url=metadata.url + GCP_IDENTITY_PATH)
        with GatewayClient(gateway.url, provider) as client:
            assert client.whoami()["identity"] == "reader"
            assert client.query("select 1 as one").rows == [{"one": 1}]
    assert len(metadata.seen) == 1  # kept until shortly before its exp


def test_a_gcp_token_near_its_expiry_is_fetched_again(gateway, mint):
    with gcp_metadata_server(gateway.url, lambda: mint("reader", ttl=30)) as metadata:
        provider = GcpIdentityToken(audience=gateway.url, metadata_url=metadata.url + GCP_IDENTITY_PATH)
        with GatewayClient(gateway.url, provider) as client:
            client.whoami()
            client.whoami()
    assert len(metadata.seen) == 2


def test_a_metadata_server_refusal_is_a_token_error(gateway, mint):
    with gcp_metadata_server("https://another.audience", lambda: mint("reader")) as metadata:
        provider = GcpIdentityToken(audience=gateway.url, metadata_url=metadata.url + GCP_IDENTITY_PATH)
        with pytest.raises(TokenError, match="HTTP 400"):
            provider()


def test_github_actions_token_comes_from_the_job_token_endpoint(gateway, mint, monkeypatch):
    with actions_token_endpoint("job-request-token", "edge-sql-gateway", lambda: mint("writer")) as endpoint:
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_URL", f"{endpoint.url}{ACTIONS_TOKEN_PATH}?api-version=2.0")
        monkeypatch.setenv("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "job-request-token")
        with GatewayClient(gateway.url, GithubActionsToken(audience="edge-sql-gateway")) as client:
            assert client.whoami()["identity"] == "writer"
    assert len(endpoint.seen) == 1


def test_github_actions_token_outside_a_job_is_a_token_error(monkeypatch):
    monkeypatch.delenv("ACTIONS_ID_TOKEN_REQUEST_URL", raising=False)
    with pytest.raises(TokenError, match="id-token: write"):
        GithubActionsToken(audience="edge-sql-gateway")()


def test_providers_do_not_show_tokens(mint):
    token = mint("writer")
    assert token not in repr(StaticToken(token))
    assert token not in repr(GatewayClient("http://127.0.0.1:1", StaticToken(token)))


# ---------------------------------------------------------------------------- the async client


def test_async_client_queries_batches_explains_and_whoami(gateway, mint):
    async def scenario() -> None:
        async with AsyncGatewayClient(gateway.url, StaticToken(mint("writer", tenant="acme"))) as client:
            sql = "select id, name from customers where tenant = $1 order by id"
            assert (await client.query(sql, "acme")).rows[0] == {"id": "1", "name": "Ada Lovelace"}
            assert (await client.query(sql, params=["acme"], row_mode="array")).rows[1] == ["2", "Grace Hopper"]
            first, second = await client.batch(["select 1 as a", ("select $1::int as b", [2])])
            assert (first.rows, second.rows) == ([{"a": 1}], [{"b": 2}])
            assert not (await client.explain("delete from orders")).allowed
            assert (await client.whoami())["identity"] == "writer"

    asyncio.run(scenario())


def test_async_client_streams_rows(gateway, mint):
    async def scenario() -> None:
        async with AsyncGatewayClient(gateway.url, StaticToken(mint("writer"))) as client:
            async with client.stream(SERIES_SQL, 10000) as rows:
                received = [row async for row in rows]
            assert received == [{"g": n} for n in range(1, 10001)]
            assert (rows.row_count, rows.truncated) == (10000, False)
            async with client.stream(FAILS_MID_STREAM_SQL) as rows:
                with pytest.raises(SqlError, match="division by zero"):
                    [row async for row in rows]

    asyncio.run(scenario())


def test_async_client_raises_typed_errors(gateway, mint):
    async def scenario() -> None:
        async with AsyncGatewayClient(gateway.url, StaticToken(mint("writer"))) as client:
            with pytest.raises(SqlError) as caught:
                await client.query("select nope from orders")
            assert caught.value.sqlstate == "42703"
            with pytest.raises(PolicyDenied):
                await client.query("delete from orders")

    asyncio.run(scenario())


def test_async_client_retries_and_takes_async_or_fetched_tokens(gateway, mint):
    async def token() -> str:
        return mint("reader")

    async def scenario(front_url: str, metadata_url: str) -> None:
        async with AsyncGatewayClient(front_url, token) as client:
            assert (await client.whoami())["identity"] == "reader"
        provider = GcpIdentityToken(audience=gateway.url, metadata_url=metadata_url)
        async with AsyncGatewayClient(gateway.url, provider) as client:
            assert (await client.whoami())["identity"] == "writer"
            assert (await client.whoami())["identity"] == "writer"

    with failing_front(gateway.url, [gateway_error(503, "overloaded", "0")]) as front, \
            gcp_metadata_server(gateway.url, lambda: mint("writer")) as metadata:
        asyncio.run(scenario(front.url, metadata.url + GCP_IDENTITY_PATH))
    assert (len(front.seen), len(metadata.seen)) == (2, 1)

"""What runs inside the per-request transaction: batches all or nothing, isolation
levels, read-only transactions, row-level security on the verified claims, the identity's
role, and no session state surviving from one request to the next on a shared connection."""

from __future__ import annotations

import uuid

import pytest

SETTINGS_SQL = (
    "select current_user as role, pg_backend_pid() as pid, "
    "current_setting('request.jwt.claims', true)::jsonb ->> 'sub' as sub, "
    "current_setting('request.jwt.claims', true)::jsonb ->> 'tenant' as tenant, "
    "current_setting('statement_timeout') as statement_timeout, "
    "current_setting('search_path') as search_path, "
    "current_setting('application_name') as application_name"
)


def rows(response) -> list:
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def only_row(response) -> dict:
    (row,) = rows(response)
    return row


def batch(api, *statements, **options):
    body = {"statements": [{"sql": sql, "params": list(params)} for sql, *params in statements], **options}
    return api.post("/v1/batch", body)


def ledger_has(superuser, note: str) -> bool:
    return superuser.fetchval("select count(*) from public.ledger where note = $1", note) == 1


def backend_state(superuser, pid: int) -> dict:
    (row,) = superuser.activity("pid = $1", pid)
    return row


# ---------------------------------------------------------------------------- batches


def test_batch_returns_one_result_per_statement(writer):
    note = f"batch-results-{uuid.uuid4()}"
    response = batch(writer, ("insert into ledger (note) values ($1)", note),
                     ("select note from ledger where note = $1", note), rowMode="array")
    assert response.status_code == 200, response.text
    assert response.json() == {"results": [
        {"columns": [], "rows": [], "command": "INSERT", "rowCount": 1, "truncated": False},
        {"columns": [{"name": "note", "type": "text"}], "rows": [[note]], "command": "SELECT", "rowCount": 1,
         "truncated": False},
    ]}


def test_batch_commits_every_statement_together(writer, superuser):
    first, second = f"batch-commit-{uuid.uuid4()}", f"batch-commit-{uuid.uuid4()}"
    response = batch(writer, ("insert into ledger (note) values ($1)", first),
                     ("insert into ledger (note) values ($1)", second))
    assert response.status_code == 200, response.text
    assert ledger_has(superuser, first) and ledger_has(superuser, second)


def test_batch_rolls_back_when_a_statement_fails(writer, superuser):
    note = f"batch-rollback-{uuid.uuid4()}"
    response = batch(writer, ("insert into ledger (note) values ($1)", note), ("select 1 / 0 as boom",))
    assert response.status_code == 400
    assert response.json()["error"]["sqlstate"] == "22012"
    assert not ledger_has(superuser, note)


def test_batch_rolls_back_when_a_later_parameter_does_not_fit(writer, superuser):
    note = f"batch-rollback-param-{uuid.uuid4()}"
    response = batch(writer, ("insert into ledger (note) values ($1)", note), ("select $1::int4 as n", "x"))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "bad_request"
    assert not ledger_has(superuser, note)


def test_later_statements_in_a_batch_see_earlier_writes(writer):
    note = f"batch-visible-{uuid.uuid4()}"
    response = batch(writer, ("insert into ledger (note) values ($1)", note),
                     ("select count(*) as n from ledger where note = $1", note))
    assert response.json()["results"][1]["rows"] == [{"n": "1"}]


def test_batch_counts_every_row_of_a_long_result(writer):
    response = batch(writer, ("select g from generate_series(1, 12000) g",), rowMode="array")
    (result,) = response.json()["results"]
    assert (result["rowCount"], len(result["rows"]), result["rows"][-1]) == (12000, 12000, [12000])


@pytest.mark.parametrize("level", ["read uncommitted", "read committed", "repeatable read", "serializable"])
def test_batch_runs_at_the_isolation_level_asked_for(solo_as, level):
    response = batch(solo_as("inspector"), ("select current_setting('transaction_isolation') as level",),
                     isolation=level)
    assert response.json()["results"][0]["rows"] == [{"level": level}]


def test_a_single_query_runs_at_read_committed(solo_as):
    inspector = solo_as("inspector")
    assert only_row(inspector.query("select current_setting('transaction_isolation') as level")) == {
        "level": "read committed"}


def test_a_read_only_batch_cannot_write(writer, superuser):
    note = f"batch-read-only-{uuid.uuid4()}"
    response = batch(writer, ("insert into ledger (note) values ($1)", note), readOnly=True)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "sql_error"
    assert response.json()["error"]["sqlstate"] == "25006"
    assert not ledger_has(superuser, note)


def test_a_read_only_batch_can_read(writer):
    response = batch(writer, ("select count(*) as n from orders",), readOnly=True)
    assert response.status_code == 200, response.text


def test_a_read_only_identity_cannot_write_even_where_its_role_could(solo_as, superuser):
    note = f"read-only-identity-{uuid.uuid4()}"
    response = solo_as("read-only-writer").query("insert into ledger (note) values ($1)", note)
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "policy_denied"
    assert "read-only" in response.json()["error"]["message"]
    assert not ledger_has(superuser, note)


def test_a_read_only_identity_runs_in_a_read_only_transaction(solo_as):
    response = batch(solo_as("read-only-writer"), ("select current_setting('transaction_read_only') as ro",),
                     readOnly=False)
    assert response.json()["results"][0]["rows"] == [{"ro": "on"}]


# ---------------------------------------------------------------------------- the caller's role and claims


@pytest.mark.parametrize(("subject", "role"), [("writer", "demo_writer"), ("reader", "demo_reader")])
def test_statements_run_as_the_identitys_role(api_as, subject, role):
    assert only_row(api_as(subject).query("select current_user as who")) == {"who": role}


def test_row_level_security_sees_the_verified_tenant(api_as):
    sql = "select id from orders where id <= 3 order by id"
    assert rows(api_as("writer", tenant="acme").query(sql)) == [{"id": "1"}, {"id": "2"}]
    assert rows(api_as("writer", tenant="globex").query(sql)) == [{"id": "3"}]
    assert rows(api_as("writer").query(sql)) == []


def test_statements_see_the_verified_claims(solo_as):
    row = only_row(solo_as("inspector", tenant="acme", team="ops").query(
        "select current_setting('request.jwt.claims')::jsonb as claims"))
    assert row["claims"]["sub"] == "inspector"
    assert (row["claims"]["tenant"], row["claims"]["team"]) == ("acme", "ops")
    assert row["claims"]["iss"] == "edge-sql-gateway-test"


def test_an_update_cannot_reach_another_tenants_rows(api_as):
    response = api_as("writer", tenant="acme").query("update orders set note = note where id = 3")
    assert response.json()["rowCount"] == 0


def test_inserting_a_row_for_another_tenant_fails_the_policy_check(api_as, superuser):
    response = api_as("writer", tenant="acme").query(
        "insert into orders (tenant, customer_id, total) values ('globex', 3, 1.00)")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "sql_error"
    assert response.json()["error"]["sqlstate"] == "42501"
    assert superuser.fetchval("select count(*) from public.orders where tenant = 'globex'") == 1


def test_a_new_row_takes_its_tenant_from_the_verified_claims(api_as, superuser):
    note = f"tenant-default-{uuid.uuid4()}"
    response = api_as("writer", tenant="globex").query(
        "insert into orders (customer_id, total, note) values (3, 1.00, $1) returning tenant", note)
    try:
        assert only_row(response) == {"tenant": "globex"}
    finally:
        superuser.execute(f"delete from public.orders where note = '{note}'")


# ---------------------------------------------------------------------------- nothing survives the request


def test_requests_on_a_one_connection_gateway_share_one_backend(solo_as):
    inspector = solo_as("inspector")
    pids = {only_row(inspector.query("select pg_backend_pid() as pid"))["pid"] for _ in range(3)}
    assert len(pids) == 1


def test_role_and_claims_do_not_survive_into_the_next_request(solo_as):
    first = only_row(solo_as("inspector", tenant="acme").query(SETTINGS_SQL))
    second = only_row(solo_as("inspector-reader", tenant="globex").query(SETTINGS_SQL))
    third = only_row(solo_as("inspector").query(SETTINGS_SQL))
    assert first["pid"] == second["pid"] == third["pid"]
    assert (first["role"], first["sub"], first["tenant"]) == ("demo_writer", "inspector", "acme")
    assert (second["role"], second["sub"], second["tenant"]) == ("demo_reader", "inspector-reader", "globex")
    assert (third["role"], third["sub"], third["tenant"]) == ("demo_writer", "inspector", None)


def test_each_request_gets_its_identitys_statement_timeout(solo_as):
    assert only_row(solo_as("inspector").query(SETTINGS_SQL))["statement_timeout"] == "7s"
    assert only_row(solo_as("inspector-reader").query(SETTINGS_SQL))["statement_timeout"] == "9s"
    assert only_row(solo_as("inspector").query(SETTINGS_SQL))["statement_timeout"] == "7s"


def test_the_search_path_is_pinned(solo_as):
    assert only_row(solo_as("inspector").query(SETTINGS_SQL))["search_path"] == '"public", pg_temp'


def test_the_request_tag_is_in_application_name_only_during_the_request(solo_as, superuser):
    inspector = solo_as("inspector")
    response = inspector.post("/v1/query", {"sql": SETTINGS_SQL}, headers={"X-Request-Id": "tagged-request-1"})
    row = only_row(response)
    assert "tagged-request-1" in row["application_name"]
    state = backend_state(superuser, row["pid"])
    assert state["state"] == "idle" and state["backend_xid"] is None
    assert "tagged-request-1" not in state["application_name"]


def test_the_trace_id_is_in_application_name(solo_as):
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    response = solo_as("inspector").post("/v1/query", {"sql": SETTINGS_SQL},
                                         headers={"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"})
    assert trace_id in only_row(response)["application_name"]


def test_a_temporary_table_does_not_survive_into_the_next_request(solo_as):
    scratch = solo_as("scratch")
    created = batch(scratch, ("create table pg_temp.scratch_rows (n int)",),
                    ("insert into pg_temp.scratch_rows values (1)",),
                    ("select n, pg_backend_pid() as pid from pg_temp.scratch_rows",))
    assert created.status_code == 200, created.text
    pid = created.json()["results"][2]["rows"][0]["pid"]
    response = scratch.query("select n from pg_temp.scratch_rows")
    assert response.status_code == 400
    assert response.json()["error"]["sqlstate"] == "42P01"
    assert only_row(scratch.query("select pg_backend_pid() as pid"))["pid"] == pid


def test_a_failing_statement_leaves_the_connection_usable(solo_as, superuser):
    inspector = solo_as("inspector")
    pid = only_row(inspector.query("select pg_backend_pid() as pid"))["pid"]
    assert inspector.query("select 1 / 0 as boom").status_code == 400
    assert backend_state(superuser, pid)["state"] == "idle"
    assert only_row(inspector.query("select pg_backend_pid() as pid"))["pid"] == pid


def test_a_failing_batch_leaves_the_connection_usable(solo_as, superuser):
    inspector = solo_as("inspector")
    pid = only_row(inspector.query("select pg_backend_pid() as pid"))["pid"]
    response = batch(inspector, ("select 1 as fine",), ("select nosuchcolumn from orders",), ("select 2",))
    assert response.status_code == 400
    assert backend_state(superuser, pid)["state"] == "idle"
    assert only_row(inspector.query("select pg_backend_pid() as pid"))["pid"] == pid

"""Approvals: statements a rule holds until an approver approves them, against a real
`gateway serve` and PostgreSQL. Requested -> 202 -> listed for the approvers -> approved ->
run once, as the requester with its claims as they were -> fetched by the requester; rejected,
expired, self-approval and a second decision refused; the MCP query tool; the table behind it
made by `gateway setup` and out of every identity's reach; linked audit records.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_mcp import call as call_tool
from test_openapi import assert_documented

from conftest import (
    ADMIN_ROLE,
    ADMIN_SECRET,
    TEST_DATABASE,
    Api,
    GatewayProcess,
    PgServer,
    Superuser,
    credentials_section,
    eventually,
)
from gateway.config import ConfigError, PolicyConfig, parse_config
from gateway.identity import Identity
from gateway.policy import PolicyEngine
from gateway_client import AwaitingApproval, GatewayClient, StaticToken

# A table of its own, so that what an approved statement wrote can be counted.
LOG_TABLE = """
CREATE TABLE public.approval_log (id serial PRIMARY KEY, note text NOT NULL);
GRANT SELECT, INSERT, DELETE ON public.approval_log TO demo_writer;
GRANT USAGE ON SEQUENCE public.approval_log_id_seq TO demo_writer;
"""

# "clerk" inserts into approval_log only once "approver" (or another clerk) approves, deletes
# from it within 2s of asking, and reads orders (row-level security: its tenant's) only approved.
IDENTITIES = """
[[identities]]
name = "clerk"
issuer = "dev"
match = { sub = "clerk" }
role = "demo_writer"
max_rows = 1

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.approval_log"]

  [[identities.rules]]
  allow = ["insert"]
  tables = ["public.approval_log"]
  approval = { approvers = ["approver", "clerk"], ttl = "1h" }

  [[identities.rules]]
  allow = ["delete"]
  tables = ["public.approval_log"]
  approval = { approvers = ["approver"], ttl = "2s" }

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]
  approval = { approvers = ["approver"], ttl = "1h" }

[[identities]]
name = "approver"
issuer = "dev"
match = { sub = "approver" }
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.customers"]
"""


@pytest.fixture(scope="module")
def config_text(gateway_config: Callable[..., str], database: PgServer) -> str:
    return gateway_config(IDENTITIES + credentials_section(database))


def setup_command(config_text: str, folder: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    path = folder / "gateway.toml"
    path.write_text(config_text)
    return subprocess.run([sys.executable, "-m", "gateway", "setup", "--config", str(path)],
                          env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def admin_env(gateway_env: dict[str, str], database: PgServer) -> dict[str, str]:
    return {**os.environ, **gateway_env, ADMIN_SECRET: database.admin_password}


@pytest.fixture(scope="module")
def prepared(database: PgServer, config_text: str, admin_env: dict[str, str],
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[subprocess.CompletedProcess]:
    """The log table, and `gateway setup` run as the CLI runs it (the admin login may create a
    schema in the database); all of it dropped afterwards."""
    superuser = Superuser(database)
    superuser.execute(LOG_TABLE + f"GRANT CREATE ON DATABASE {TEST_DATABASE} TO {ADMIN_ROLE};")
    try:
        yield setup_command(config_text, tmp_path_factory.mktemp("setup"), admin_env)
    finally:
        superuser.execute("DROP SCHEMA IF EXISTS gateway CASCADE; DROP TABLE public.approval_log;"
                          f"REVOKE CREATE ON DATABASE {TEST_DATABASE} FROM {ADMIN_ROLE};")
        superuser.close()


@pytest.fixture(scope="module")
def gateway(prepared: subprocess.CompletedProcess, launch_gateway: Callable[..., GatewayProcess],
            config_text: str, database: PgServer) -> GatewayProcess:
    assert prepared.returncode == 0, prepared.stderr
    return launch_gateway(config_text=config_text, env={ADMIN_SECRET: database.admin_password})


@pytest.fixture
def as_(gateway: GatewayProcess, call_as: Callable[..., Api]) -> Callable[..., Api]:
    return lambda subject: call_as(gateway, subject, tenant="acme")


def held(api: Api, sql: str, *params: Any) -> dict[str, Any]:
    response = api.query(sql, *params)
    assert response.status_code == 202, response.text
    return response.json()["approval"]


def decide(api: Api, approval_id: str, decision: str, comment: str | None = None) -> Any:
    return api.post(f"/v1/approvals/{approval_id}", {"decision": decision, "comment": comment})


def logged(superuser: Superuser, note: str) -> int:
    return superuser.fetchval("SELECT count(*) FROM public.approval_log WHERE note = $1", note)


@pytest.fixture
def superuser_of(database: PgServer) -> Iterator[Superuser]:
    superuser = Superuser(database)
    yield superuser
    superuser.close()


# ---------------------------------------------------------------------------- the lifecycle


def test_explain_tells_who_may_approve_a_held_statement(as_):
    verdict = as_("clerk").post("/v1/explain", {"sql": "delete from public.approval_log where id = $1",
                                                "params": [1]}).json()
    assert verdict["allowed"] is True and verdict["approval"] == {"approvers": ["approver"], "ttl": 2.0}


def test_a_held_statement_answers_202_with_the_pending_request(as_):
    approval = held(as_("clerk"), "insert into public.approval_log (note) values ($1) returning note", "held")
    assert approval["status"] == "pending"
    assert approval["identity"] == "clerk"
    assert approval["statement"] == "insert into public.approval_log (note) values ($1) returning note"
    assert approval["expiresAt"].endswith("Z") and approval["id"]


def test_approved_it_runs_once_as_the_requester_who_then_fetches_the_rows(as_, superuser_of):
    clerk, approver = as_("clerk"), as_("approver")
    approval = held(clerk, "insert into public.approval_log (note) values ($1) returning note", "approved-once")
    assert logged(superuser_of, "approved-once") == 0  # held, not run

    listed = approver.get("/v1/approvals").json()["approvals"]
    (mine,) = [item for item in listed if item["id"] == approval["id"]]
    assert mine["statements"] == [{"sql": approval["statement"], "params": ["approved-once"]}]
    assert mine["requester"] == {"identity": "clerk", "issuer": "dev", "subject": "clerk"}

    decided = decide(approver, approval["id"], "approve", "refund agreed")
    assert decided.status_code == 200, decided.text
    assert decided.json()["approval"]["status"] == "done"
    assert decided.json()["approval"]["decision"]["comment"] == "refund agreed"
    assert "result" not in decided.json()["approval"]  # the approver does not see the rows
    assert logged(superuser_of, "approved-once") == 1

    fetched = clerk.get(f"/v1/approvals/{approval['id']}").json()["approval"]
    assert fetched["status"] == "done"
    assert fetched["result"] == {"columns": [{"name": "note", "type": "text"}], "rows": [{"note": "approved-once"}],
                                 "command": "INSERT", "rowCount": 1, "truncated": False}


def test_every_answer_of_an_approval_is_the_one_the_document_gives(as_):
    """The answers the generated cases of tests/test_openapi.py cannot reach (nothing is held
    there), checked against this gateway's document."""
    clerk, approver = as_("clerk"), as_("approver")
    sql = "insert into public.approval_log (note) values ($1) returning note"
    held = clerk.query(sql, "documented")
    assert held.status_code == 202
    assert_documented(held)
    held_batch = clerk.post("/v1/batch", {"statements": [{"sql": sql, "params": ["documented-batch"]}]})
    assert held_batch.status_code == 202
    assert_documented(held_batch)
    assert_documented(approver.get("/v1/approvals"))
    approval_id = held.json()["approval"]["id"]
    assert_documented(decide(approver, approval_id, "approve", "fine"))
    outcome = clerk.get(f"/v1/approvals/{approval_id}")
    assert outcome.json()["approval"]["result"]["rows"] == [{"note": "documented"}]
    assert_documented(outcome)
    again = decide(approver, approval_id, "approve")
    assert again.status_code == 409
    assert_documented(again)


def test_a_second_approval_is_refused_and_nothing_runs_again(as_, superuser_of):
    clerk, approver = as_("clerk"), as_("approver")
    approval = held(clerk, "insert into public.approval_log (note) values ($1)", "twice")
    assert decide(approver, approval["id"], "approve").status_code == 200
    again = decide(approver, approval["id"], "approve")
    assert again.status_code == 409 and again.json()["error"]["code"] == "approval_decided"
    assert logged(superuser_of, "twice") == 1


def test_nobody_approves_their_own_request(as_, superuser_of):
    clerk = as_("clerk")  # one of the insert rule's approvers, and the requester
    approval = held(clerk, "insert into public.approval_log (note) values ($1)", "self")
    refused = decide(clerk, approval["id"], "approve")
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "approval_not_allowed"
    assert logged(superuser_of, "self") == 0
    assert clerk.get(f"/v1/approvals/{approval['id']}").json()["approval"]["status"] == "pending"


def test_a_rejected_request_never_runs(as_, superuser_of):
    clerk, approver = as_("clerk"), as_("approver")
    approval = held(clerk, "insert into public.approval_log (note) values ($1)", "rejected")
    assert decide(approver, approval["id"], "reject", "not this one").json()["approval"]["status"] == "rejected"
    assert decide(approver, approval["id"], "approve").status_code == 409
    assert logged(superuser_of, "rejected") == 0
    fetched = clerk.get(f"/v1/approvals/{approval['id']}").json()["approval"]
    assert fetched["status"] == "rejected" and fetched["result"] is None
    assert approval["id"] not in [item["id"] for item in approver.get("/v1/approvals").json()["approvals"]]


def test_an_expired_request_cannot_run(as_, superuser_of):
    superuser_of.execute("INSERT INTO public.approval_log (note) VALUES ('kept')")
    clerk, approver = as_("clerk"), as_("approver")
    approval = held(clerk, "delete from public.approval_log where note = $1", "kept")  # ttl 2s
    time.sleep(2.5)
    late = decide(approver, approval["id"], "approve")
    assert late.status_code == 410 and late.json()["error"]["code"] == "approval_expired"
    assert logged(superuser_of, "kept") == 1
    assert clerk.get(f"/v1/approvals/{approval['id']}").json()["approval"]["status"] == "expired"
    assert approval["id"] not in [item["id"] for item in approver.get("/v1/approvals").json()["approvals"]]


def test_it_runs_with_the_requesters_claims_and_within_its_limits(as_):
    clerk, approver = as_("clerk"), as_("approver")
    approval = held(clerk, "select tenant from public.orders order by id")
    assert decide(approver, approval["id"], "approve").status_code == 200
    result = clerk.get(f"/v1/approvals/{approval['id']}").json()["approval"]["result"]
    # Row-level security on the stored tenant claim (acme has two orders), cut at max_rows = 1.
    assert result["rows"] == [{"tenant": "acme"}] and result["truncated"] is True


def test_a_batch_is_held_whole_and_answered_as_a_batch(as_, superuser_of):
    clerk, approver = as_("clerk"), as_("approver")
    response = clerk.post("/v1/batch", {"statements": [
        {"sql": "select count(*) from public.approval_log where note = $1", "params": ["batched"]},
        {"sql": "insert into public.approval_log (note) values ($1)", "params": ["batched"]},
    ]})
    assert response.status_code == 202, response.text
    approval = response.json()["approval"]
    assert approval["statement"] is None and logged(superuser_of, "batched") == 0
    assert decide(approver, approval["id"], "approve").status_code == 200
    result = clerk.get(f"/v1/approvals/{approval['id']}").json()["approval"]["result"]
    assert [part["command"] for part in result["results"]] == ["SELECT", "INSERT"]
    assert logged(superuser_of, "batched") == 1


# ---------------------------------------------------------------------------- who sees what


def test_only_the_requester_fetches_the_result(as_, call_as, gateway):
    clerk, approver = as_("clerk"), as_("approver")
    approval = held(clerk, "insert into public.approval_log (note) values ($1) returning note", "seen")
    decide(approver, approval["id"], "approve")
    assert "result" not in approver.get(f"/v1/approvals/{approval['id']}").json()["approval"]
    other_clerk = call_as(gateway, "writer", tenant="acme")
    stranger = other_clerk.get(f"/v1/approvals/{approval['id']}")
    assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "not_found"
    assert clerk.get(f"/v1/approvals/{approval['id']}").json()["approval"]["result"]["rows"] == [{"note": "seen"}]


def test_only_approvers_list_and_decide(as_, call_as, gateway):
    approval = held(as_("clerk"), "insert into public.approval_log (note) values ($1)", "listed")
    writer = call_as(gateway, "writer", tenant="acme")
    assert writer.get("/v1/approvals").json() == {"approvals": []}
    assert decide(writer, approval["id"], "approve").status_code == 404
    assert approval["id"] in [item["id"] for item in as_("approver").get("/v1/approvals").json()["approvals"]]


def test_no_identity_reaches_the_approvals_table(as_, superuser_of):
    denied = as_("clerk").query("select id from gateway.approvals")
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "policy_denied"
    for role in ("demo_reader", "demo_writer"):
        superuser_of.execute(f"SET ROLE {role}")
        error = superuser_of.error_of("SELECT id FROM gateway.approvals")
        superuser_of.execute("RESET ROLE")
        assert error.sqlstate == "42501"  # insufficient_privilege


@pytest.mark.parametrize("batch", [False, True])
def test_sql_refuses_a_statement_that_needs_approval_and_holds_nothing(as_, superuser_of, batch):
    """The Neon protocol has no answer for a held statement: refused as a denial (the driver's
    400 with 42501), naming who would approve and where to send it; nothing waits."""
    query = {"query": "insert into public.approval_log (note) values ($1)", "params": [f"via-sql-{batch}"]}
    response = as_("clerk").post("/sql", {"queries": [query]} if batch else query)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "42501"
    assert "approval by approver, clerk" in error["message"] and "/v1/query" in error["message"]
    assert logged(superuser_of, f"via-sql-{batch}") == 0
    assert superuser_of.fetchval("SELECT count(*) FROM gateway.approvals WHERE statements::text LIKE '%via-sql%'") == 0


# ---------------------------------------------------------------------------- MCP and audit


def test_the_mcp_query_tool_says_it_awaits_approval(gateway, mint, as_, superuser_of):
    result = call_tool(gateway, mint("clerk", tenant="acme"), "query",
                       {"sql": "insert into public.approval_log (note) values ($1)", "params": ["by-agent"]})
    assert not result.is_error
    approval = result.structured_content["approval"]
    assert approval["status"] == "pending" and approval["id"] in result.structured_content["message"]
    assert decide(as_("approver"), approval["id"], "approve").status_code == 200
    assert logged(superuser_of, "by-agent") == 1


def test_request_decision_and_execution_are_linked_audit_records(gateway, as_):
    approval = held(as_("clerk"), "insert into public.approval_log (note) values ($1)", "audited")
    decide(as_("approver"), approval["id"], "approve", "ok")

    def linked() -> list[dict[str, Any]]:
        lines = [line for line in gateway.output().splitlines() if f'"approval":"{approval["id"]}"' in line]
        records = [orjson.loads(line) for line in lines]
        return records if len(records) == 3 else []

    # The run is audited as it ends, inside the decision's request, which is audited last.
    request, execution, decision = eventually(linked, "three linked audit records")
    assert (request["status"], request["identity"], request["kind"]) == (202, "clerk", "insert")
    assert (decision["kind"], decision["identity"], decision["reason"]) == ("approval.approve", "approver", "ok")
    assert (execution["status"], execution["identity"], execution["role"]) == (200, "clerk", "demo_writer")
    assert execution["endpoint"] == "approved statement" and execution["rows"] == 0


# ---------------------------------------------------------------------------- setup and configuration


def test_without_setup_the_gateway_refuses_to_start(launch_gateway, gateway_config, database, prepared):
    text = gateway_config(IDENTITIES + credentials_section(database) + '\n[approvals]\nschema = "not_set_up"\n')
    with pytest.raises(RuntimeError, match="gateway setup"):
        launch_gateway(config_text=text, env={ADMIN_SECRET: database.admin_password})


def test_setup_can_run_again(prepared, config_text, admin_env, tmp_path):
    again = setup_command(config_text, tmp_path, admin_env)
    assert again.returncode == 0, again.stderr


def test_approvers_must_be_configured_identities(gateway_config):
    text = gateway_config(IDENTITIES.replace('["approver"]', '["nobody"]', 1))
    with pytest.raises(ConfigError, match=r'approval\.approvers\[0\].*"nobody"'):
        parse_config(tomllib.loads(text))


@pytest.mark.parametrize(("ttl", "expected"), [('"0s"', "above zero"), ('"soon"', "a duration such as")])
def test_an_approval_ttl_is_a_duration_above_zero(gateway_config, ttl, expected):
    text = gateway_config(IDENTITIES.replace('ttl = "2s"', f"ttl = {ttl}", 1))
    with pytest.raises(ConfigError, match=rf"approval\.ttl.*{expected}"):
        parse_config(tomllib.loads(text))


def test_no_rule_may_reach_the_gateways_own_schema(gateway_config):
    text = gateway_config(IDENTITIES.replace('tables = ["public.approval_log"]', 'tables = ["gateway.approvals"]', 1))
    with pytest.raises(ConfigError, match="the gateway's own schema"):
        parse_config(tomllib.loads(text))


# ---------------------------------------------------------------------------- which statements are held

POLICY_IDENTITY = {
    "name": "orders",
    "issuer": "dev",
    "role": "app_writer",
    "rules": [
        {"allow": ["select"], "tables": ["public.orders"]},
        {"allow": ["select", "delete"], "tables": ["public.customers"],
         "approval": {"approvers": ["ops"], "ttl": "1h"}},
        {"allow": ["delete"], "tables": ["public.orders"], "approval": {"approvers": ["ops"], "ttl": "1h"}},
        {"allow": ["delete"], "tables": ["public.orders"], "approval": {"approvers": ["finance"], "ttl": "10m"}},
    ],
}
POLICY_CONFIG = {
    "name": "approval-policy",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
    "identities": [POLICY_IDENTITY, *({"name": name, "issuer": "dev", "role": "app_reader"}
                                      for name in ("ops", "finance"))],
}


def approval_of(sql: str) -> Any:
    config = parse_config(POLICY_CONFIG)
    identity = Identity.from_config(config.identities[0])
    _, decision = PolicyEngine(PolicyConfig()).decide(identity, sql)
    assert decision.allowed, decision.reason
    return decision.approval


def test_an_access_another_rule_allows_outright_needs_no_approval():
    assert approval_of("select id from public.orders") is None


def test_rules_covering_one_access_combine_into_any_approver_and_the_shortest_ttl():
    approval = approval_of("delete from public.orders where id = $1")
    assert (approval.approvers, approval.ttl) == (("finance", "ops"), 600.0)


def test_one_access_held_holds_the_whole_statement():
    approval = approval_of("select o.id from public.orders o join public.customers c on c.id = o.customer_id")
    assert (approval.approvers, approval.ttl) == (("ops",), 3600.0)


def test_another_replica_sees_the_request_and_runs_it_only_if_its_policy_still_allows_it(
        as_, launch_gateway, config_text, database, call_as, superuser_of):
    approval = held(as_("clerk"), "insert into public.approval_log (note) values ($1)", "policy-changed")
    # A replica whose configuration no longer lets clerk insert at all.
    narrower = config_text.replace('allow = ["insert"]', 'allow = ["select"]', 1)
    replica = launch_gateway(config_text=narrower, env={ADMIN_SECRET: database.admin_password})
    decided = decide(call_as(replica, "approver", tenant="acme"), approval["id"], "approve")
    assert decided.json()["approval"]["status"] == "failed"
    assert logged(superuser_of, "policy-changed") == 0
    fetched = call_as(replica, "clerk", tenant="acme").get(f"/v1/approvals/{approval['id']}").json()["approval"]
    assert fetched["error"]["code"] == "policy_denied" and fetched["result"] is None


def test_the_python_client_raises_awaiting_approval_with_the_id(gateway, mint, as_):
    with (GatewayClient(gateway.url, StaticToken(mint("clerk", tenant="acme"))) as client,
          pytest.raises(AwaitingApproval) as raised):
        client.query("insert into public.approval_log (note) values ($1)", "by-client")
    assert raised.value.statement == "insert into public.approval_log (note) values ($1)"
    assert raised.value.id in [item["id"] for item in as_("approver").get("/v1/approvals").json()["approvals"]]

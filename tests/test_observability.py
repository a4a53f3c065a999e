"""Audit records, the hash chain and rotation, trace propagation into PostgreSQL, and
Prometheus metrics."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import GATEWAY_LOGS, SLOW_SQL, Api, GatewayProcess, eventually, start_gateway
from gateway.audit import SUMMARY_REASON, AuditRecord, AuditSink, summary_line, verify_chain


def audit_records(gateway: GatewayProcess) -> list[dict]:
    """The audit lines among everything the process printed (operational logs are JSON too,
    told apart by their fields)."""
    records = []
    for line in gateway.output().splitlines():
        if line.startswith("{") and '"requestId"' in line:
            record = orjson.loads(line)
            if "endpoint" in record:
                records.append(record)
    return records


def records_for(gateway: GatewayProcess, request_id: str) -> list[dict]:
    return eventually(
        lambda: [r for r in audit_records(gateway) if r["requestId"] == request_id] or None,
        f"audit record {request_id}",
        deadline=5,
    )


@pytest.mark.parametrize(
    ("subject", "body", "status", "decision"),
    [
        ("writer", {"sql": "select id from orders"}, 200, "allow"),
        ("writer", {"sql": "delete from orders"}, 403, "deny"),
        ("nobody", {"sql": "select 1"}, 403, None),
        (None, {"sql": "select 1"}, 401, None),
        ("writer", {"sql": "select nosuchcolumn from orders"}, 400, "allow"),
        ("writer", {"sqlx": 1}, 400, None),
    ],
)
def test_every_request_writes_exactly_one_audit_record(gateway, http, mint, subject, body, status, decision):
    headers = {"X-Request-Id": f"audit-{status}-{decision}-{subject}"}
    if subject:
        headers["Authorization"] = f"Bearer {mint(subject, tenant='acme')}"
    response = http.post(f"{gateway.url}/v1/query", json=body, headers=headers)
    assert response.status_code == status
    (record,) = records_for(gateway, headers["X-Request-Id"])
    assert record["status"] == status
    assert record["decision"] == decision
    assert record["endpoint"] == "/v1/query"
    assert record["channel"] == "http"
    assert (record["mcpClient"], record["mcpMethod"], record["mcpTool"]) == (None, None, None)
    for key in ("ts", "traceId", "issuer", "sub", "identity", "role", "kind", "tables", "fingerprint", "reason",
                "sqlstate", "rows", "bytes", "durationMs", "clientIp", "userAgent"):
        assert key in record


def test_audit_record_names_identity_tables_and_rows(writer: Api, gateway):
    response = writer.post("/v1/query", {"sql": "select id from orders"}, headers={"X-Request-Id": "audit-rows"})
    (record,) = records_for(gateway, "audit-rows")
    assert (record["identity"], record["role"], record["sub"]) == ("writer", "demo_writer", "writer")
    assert record["tables"] == ["public.orders"] and record["kind"] == "select"
    assert record["rows"] == len(response.json()["rows"]) and record["bytes"] > 0
    assert len(record["fingerprint"]) == 16


def test_traceparent_reaches_the_audit_and_the_database_while_the_statement_runs(
    launch_gateway, gateway_config, mint, superuser
):
    slow = launch_gateway(config_text=gateway_config(statement_timeout="30s"))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    headers = {
        "Authorization": f"Bearer {mint('writer', tenant='acme')}",
        "traceparent": f"00-{trace_id}-00f067aa0ba902b7-01",
        "X-Request-Id": "traced-request",
    }

    def call() -> None:
        # The client gives up after a moment; leaving cancels the statement on the server.
        with contextlib.suppress(httpx.TimeoutException):
            httpx.post(f"{slow.url}/v1/query", json={"sql": SLOW_SQL}, headers=headers, timeout=3)

    caller = threading.Thread(target=call)
    caller.start()
    try:
        running = eventually(lambda: superuser.activity("query = $1", SLOW_SQL), "the statement to run")
        assert running[0]["application_name"] == f"gw traced-request {trace_id}"
    finally:
        caller.join()
    (record,) = records_for(slow, "traced-request")
    assert record["traceId"] == trace_id


def test_a_new_trace_id_is_made_when_none_is_sent(writer: Api, gateway):
    writer.post("/v1/query", {"sql": "select 1 from orders"}, headers={"X-Request-Id": "untraced"})
    (record,) = records_for(gateway, "untraced")
    assert len(record["traceId"]) == 32 and int(record["traceId"], 16)


def test_every_response_carries_request_id_and_server_timing(gateway, http):
    for path in ("/healthz", "/nowhere", "/metrics"):
        response = http.get(gateway.url + path)
        assert response.headers["X-Request-Id"]
        assert "total;dur=" in response.headers["Server-Timing"]


# ---------------------------------------------------------------------------- the chain


@pytest.fixture
def chained_gateway(launch_gateway, gateway_config, tmp_path) -> tuple[GatewayProcess, Path]:
    sink = tmp_path / "audit.log"
    text = gateway_config().replace('sink = "stdout"', f'sink = "{sink}"\nchain = true')
    return launch_gateway(config_text=text), sink


def _verify(path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", str(path), *extra],
                          capture_output=True, text=True, timeout=30)


def _make_requests(gateway: GatewayProcess, token: str, count: int) -> None:
    for index in range(count):
        httpx.post(f"{gateway.url}/v1/query", json={"sql": f"select {index} from orders"},
                   headers={"Authorization": f"Bearer {token}"})


def _lines_when_written(path: Path, count: int) -> list[bytes]:
    def written() -> list[bytes] | None:
        lines = path.read_bytes().splitlines() if path.exists() else []
        return lines if len(lines) >= count else None

    return eventually(written, f"{count} audit lines in {path}", deadline=5)


def test_an_intact_chain_verifies(chained_gateway, mint):
    gateway, sink = chained_gateway
    _make_requests(gateway, mint("writer", tenant="acme"), 5)
    _lines_when_written(sink, 5)
    result = _verify(sink, "--from-genesis")
    assert result.returncode == 0, result.stderr
    assert "5 records, chain intact" in result.stdout


@pytest.mark.parametrize("tamper", ["remove", "edit"])
def test_a_removed_or_edited_record_breaks_the_chain(chained_gateway, mint, tmp_path, tamper):
    gateway, sink = chained_gateway
    _make_requests(gateway, mint("writer", tenant="acme"), 5)
    lines = _lines_when_written(sink, 5)
    if tamper == "remove":
        del lines[2]
    else:
        lines[2] = lines[2].replace(b'"status":200', b'"status":403')
    copy = tmp_path / "tampered.log"
    copy.write_bytes(b"\n".join(lines) + b"\n")
    result = _verify(copy)
    assert result.returncode == 1
    assert "tampered.log:" in result.stderr and "chain broken" in result.stderr


def test_sighup_reopens_the_audit_file_and_the_chain_runs_on(chained_gateway, mint):
    gateway, sink = chained_gateway
    token = mint("writer", tenant="acme")
    _make_requests(gateway, token, 2)
    _lines_when_written(sink, 2)
    rotated = sink.with_name("audit.log.1")
    os.rename(sink, rotated)
    gateway.process.send_signal(signal.SIGHUP)
    eventually(sink.exists, "the audit file reopened", deadline=5)
    _make_requests(gateway, token, 1)
    second = _lines_when_written(sink, 1)
    first = rotated.read_bytes().splitlines()
    assert _verify(rotated, "--from-genesis").returncode == 0
    joined = rotated.parent / "joined.log"
    joined.write_bytes(b"\n".join(first + second) + b"\n")
    assert _verify(joined, "--from-genesis").returncode == 0, "the new file links to the rotated one"


def test_verify_reports_a_missing_file():
    result = _verify(Path("/nonexistent/audit.log"))
    assert result.returncode == 2 and "cannot read" in result.stderr


def test_chain_verification_of_records_without_links_fails():
    _, broken = verify_chain([b'{"a": 1}\n'])
    assert broken is not None and "no prev link" in broken.problem


# ---------------------------------------------------------------------------- metrics


def _samples(gateway: GatewayProcess) -> dict[tuple[str, tuple], float]:
    text = httpx.get(f"{gateway.url}/metrics").text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_metrics_parse_and_counters_move_with_requests(launch_gateway, mint):
    gateway = launch_gateway()
    before = _samples(gateway)
    token = mint("writer", tenant="acme")
    headers = {"Authorization": f"Bearer {token}"}
    httpx.post(f"{gateway.url}/v1/query", json={"sql": "select id from orders"}, headers=headers)
    httpx.post(f"{gateway.url}/v1/query", json={"sql": "delete from orders"}, headers=headers)
    httpx.post(f"{gateway.url}/v1/query", json={"sql": "select 1"}, headers={"Authorization": "Bearer x.y.z"})
    after = _samples(gateway)

    def moved(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    assert moved("gateway_requests_total", identity="writer", endpoint="/v1/query", status="200") == 1
    assert moved("gateway_requests_total", identity="writer", endpoint="/v1/query", status="403") == 1
    assert moved("gateway_policy_denials_total", identity="writer", reason="table") == 1
    assert moved("gateway_auth_failures_total", reason="malformed_token") == 1
    assert moved("gateway_rows_streamed_total", identity="writer") >= 1
    assert moved("gateway_request_duration_seconds_count", phase="db") == 3
    assert moved("gateway_connection_hold_seconds_count") >= 1  # the SELECT's connection, at least
    assert moved("gateway_connection_hold_seconds_sum") > 0
    assert ("gateway_pool_idle", ()) in after and ("gateway_pool_waiting", ()) in after


def test_metrics_with_several_workers_report_the_sum_of_all_workers(
    gateway_config, gateway_env, mint, tmp_path_factory
):
    folder = tmp_path_factory.mktemp("workers")
    (folder / "prometheus").mkdir()
    env = {**gateway_env, "PROMETHEUS_MULTIPROC_DIR": str(folder / "prometheus")}
    gateway = start_gateway(gateway_config(), folder, env, extra_args=("--workers", "2"))
    GATEWAY_LOGS.append(gateway.log_path)
    try:
        headers = {"Authorization": f"Bearer {mint('writer', tenant='acme')}"}
        # New connections each time, so both workers take some of the requests.
        for _ in range(20):
            response = httpx.post(f"{gateway.url}/v1/query", json={"sql": "select 1 from orders"}, headers=headers)
            assert response.status_code == 200
        served = _samples(gateway)[
            ("gateway_requests_total", (("endpoint", "/v1/query"), ("identity", "writer"), ("status", "200")))
        ]
        assert served == 20
        assert len(_worker_pids(gateway)) == 2
    finally:
        gateway.stop()


def _worker_pids(gateway: GatewayProcess) -> set[str]:
    """From uvicorn's "Started server process [PID]" lines."""
    return {
        line.split("[", 1)[1].split("]", 1)[0]
        for line in gateway.output().splitlines()
        if "Started server process" in line
    }


def test_a_summary_line_is_status_identity_endpoint_time_and_rows():
    record = AuditRecord(requestId="r", traceId="t", endpoint="/v1/query", identity="writer", status=200, rows=1)
    assert re.fullmatch(r"200 writer /v1/query \d+\.\dms 1 row", summary_line(record.finished()))
    anonymous = AuditRecord(requestId="r", traceId="t", endpoint="/sql", status=401, reason="expired")
    assert re.fullmatch(r"401 - /sql \d+\.\dms 0 rows: expired", summary_line(anonymous.finished()))


def test_a_summary_line_shortens_a_long_reason_which_the_record_keeps_whole(tmp_path, capsys):
    reason = "denied " * 40
    sink = AuditSink(str(tmp_path / "audit.jsonl"), summary=True)
    sink.write(AuditRecord(requestId="r", traceId="t", endpoint="/v1/query", identity="w", status=403, reason=reason))
    sink.close()
    line = capsys.readouterr().err.strip()
    assert line.endswith("…") and len(line.split(": ", 1)[1]) == SUMMARY_REASON
    assert orjson.loads((tmp_path / "audit.jsonl").read_bytes())["reason"] == reason

"""Analysis is bounded and never runs on the event loop: a new statement text is analysed in
a worker process within `policy.analysis_timeout`, so no text — however it nests — holds up
other requests, `/healthz`, or SIGTERM. Against a real `gateway serve`.

The texts come from a generator of nesting patterns (ARRAY, parentheses, block comments,
CASE, subqueries, function calls, casts, JSON operators), each nested deeper and deeper up
to the size cap. Some are exponential for sqlglot or quadratic for PostgreSQL's scanner;
the defence does not know which.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Api, GatewayProcess, eventually

BUDGET = 0.1  # policy.analysis_timeout's default
MARGIN = 0.1  # the bound on every answer is the budget plus this
SIZE_CAP = 32 * 1024

PATTERNS: dict[str, Callable[[int], str]] = {
    "array": lambda depth: "select " + "ARRAY[" * depth + "1" + "]" * depth,
    "parentheses": lambda depth: "select " + "(" * depth + "1" + ")" * depth,
    "comments": lambda depth: "select 1 " + "/* " * depth + "x" + " */" * depth,
    "case": lambda depth: "select " + "case when true then " * depth + "1" + " end" * depth,
    "subqueries": lambda depth: "select " + "(select " * depth + "1" + ")" * depth,
    "function-calls": lambda depth: "select " + "lower(" * depth + "'x'" + ")" * depth,
    "casts": lambda depth: "select " + "(" * depth + "1" + ")::int" * depth,
    "json-operators": lambda depth: "select '{}'::jsonb" + " -> 'a'" * depth,
    "array-subscripts": lambda depth: "select (ARRAY[1])" + "[1]" * depth,
}


def depths(pattern: Callable[[int], str]) -> Iterator[int]:
    """4, 8, 16, ... while the text fits under the size cap, then the deepest that fits."""
    depth = 4
    while len(pattern(depth).encode()) <= SIZE_CAP:
        yield depth
        depth *= 2
    low, high = depth // 2, depth
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if len(pattern(middle).encode()) <= SIZE_CAP else (low, middle)
    yield low


class HealthWatch:
    """Polls `/healthz` from another thread and keeps the slowest answer."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.durations: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> HealthWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                assert client.get(f"{self.url}/healthz").status_code == 200
                self.durations.append(time.monotonic() - started)
                time.sleep(0.02)

    @property
    def slowest(self) -> float:
        return max(self.durations)

    @property
    def slowest_but_one(self) -> float:
        """A machine with two cores, one of them busy with a hostile text, may deschedule
        the gateway once; a loop that analyses on the event loop delays answer after answer."""
        return sorted(self.durations)[-2]


@pytest.fixture(scope="module")
def launch_budgeted(launch_gateway: Callable[..., GatewayProcess],
                    gateway_config: Callable[..., str]) -> Callable[[], GatewayProcess]:
    """A gateway with the default budget, which the suite's gateways otherwise raise."""
    return lambda: launch_gateway(config_text=gateway_config(f'\n[policy]\nanalysis_timeout = "{BUDGET * 1000:g}ms"\n'))


@pytest.fixture(scope="module")
def bounded_gateway(launch_budgeted: Callable[[], GatewayProcess]) -> GatewayProcess:
    return launch_budgeted()


@pytest.fixture
def reader(bounded_gateway: GatewayProcess, call_as: Callable[..., Api]) -> Api:
    return call_as(bounded_gateway, "reader")


def test_every_nesting_pattern_is_answered_within_the_budget_while_healthz_answers(bounded_gateway, reader):
    timings: list[tuple[float, str, int, bool]] = []
    with HealthWatch(bounded_gateway.url) as health:
        for name, pattern in PATTERNS.items():
            for depth in depths(pattern):
                started = time.monotonic()
                response = reader.post("/v1/explain", {"sql": pattern(depth)})
                elapsed = time.monotonic() - started
                # 503 (retry) when the machine, not the text, kept the analysis from finishing.
                assert response.status_code in (200, 503), response.text
                reason = response.json()["reason"] if response.status_code == 200 else "busy"
                cut_off = "took too long to analyse" in (reason or "") or reason == "busy"
                timings.append((elapsed, name, depth, cut_off))
    slowest = max(timings)
    print(f"\n{len(timings)} texts; slowest answer {slowest[0] * 1000:.0f} ms ({slowest[1]} at depth {slowest[2]}); "
          f"{sum(t[3] for t in timings)} cut off; /healthz {len(health.durations)} answers, "
          f"slowest {health.slowest * 1000:.0f} ms")
    assert slowest[0] <= BUDGET + MARGIN, slowest
    assert health.slowest_but_one <= 0.1 and health.slowest <= 0.5, sorted(health.durations)[-3:]
    # The budget did its work: exponential ones (minutes each) were cut off, not waited for.
    assert any(cut_off for _, name, _, cut_off in timings if name == "array")


def _verdict(api: Api, sql: str) -> tuple[httpx.Response, float]:
    """The answer to `sql` once the machine let a worker spend the budget on it (on a busy
    machine an attempt may be a 503 to retry), and how long that answer took."""
    while True:
        started = time.monotonic()
        response = api.query(sql)
        elapsed = time.monotonic() - started
        if response.status_code != 503:
            return response, elapsed
        assert elapsed <= BUDGET + MARGIN


def test_a_text_over_budget_is_denied_with_a_reason_and_counted(bounded_gateway, reader, http):
    sql = PATTERNS["array"](24)  # minutes for the parser, were it allowed to finish
    response, elapsed = _verdict(reader, sql)
    assert response.status_code == 403, response.text
    assert "took too long to analyse" in response.json()["error"]["message"]
    assert elapsed <= BUDGET + MARGIN
    # Asked again, it is refused without tying up a worker.
    again = reader.query(sql)
    assert again.status_code == 403 and "took too long" in again.json()["error"]["message"]
    metrics = http.get(f"{bounded_gateway.url}/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith("gateway_analysis_timeouts_total")]
    assert counted and float(counted[0].split()[-1]) >= 1


def test_a_killed_worker_is_replaced_and_analysis_goes_on(reader):
    for depth in (22, 23, 25):
        assert _verdict(reader, PATTERNS["array"](depth))[0].status_code == 403
    sql = "select id from orders where status = 'new' and id > 0"
    response = _verdict(reader, sql)[0]
    assert response.status_code == 200, response.text


def test_sigterm_during_hostile_analysis_exits_within_the_grace_period(launch_budgeted, call_as):
    gateway = launch_budgeted()
    api = call_as(gateway, "reader")
    senders = [
        threading.Thread(target=lambda depth=depth: _ignore_errors(lambda: api.query(PATTERNS["array"](depth))))
        for depth in range(26, 34)
    ]
    for sender in senders:
        sender.start()
    time.sleep(0.05)
    started = time.monotonic()
    gateway.process.send_signal(signal.SIGTERM)
    gateway.process.wait(15)
    exited = time.monotonic() - started
    for sender in senders:
        sender.join()
    print(f"\nexited {exited:.2f} s after SIGTERM")
    assert exited <= 10 + 1  # uvicorn's graceful shutdown period, plus a second


def _ignore_errors(call: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the gateway went away under it: expected
        call()


def _children(pid: int) -> list[int]:
    children = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                stat = (entry / "stat").read_text()
                if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                    children.append(int(entry.name))
    return children


def _analysis_workers(gateway: GatewayProcess) -> list[int]:
    """The gateway's analysis workers: the children of its forkserver."""
    forkservers = [
        child for child in _children(gateway.process.pid)
        if b"forkserver" in Path(f"/proc/{child}/cmdline").read_bytes()
    ]
    return [worker for forkserver in forkservers for worker in _children(forkserver)]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads worker CPU time from /proc")
def test_a_worker_the_machine_keeps_from_running_is_a_503_not_a_verdict_on_the_text(launch_budgeted, call_as):
    gateway = launch_budgeted()
    api = call_as(gateway, "reader")
    sql = "select id, status from orders where id = $1 and status = $2"
    workers = eventually(lambda: _analysis_workers(gateway), "the analysis workers")
    for worker in workers:
        os.kill(worker, signal.SIGSTOP)  # starved: no CPU at all, however cheap the text
    try:
        started = time.monotonic()
        response = api.query(sql, 1, "new")
        elapsed = time.monotonic() - started
    finally:
        for worker in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(worker, signal.SIGCONT)
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert elapsed <= 2 * BUDGET + MARGIN  # waiting for a worker, then for its answer
    # Nothing was held against the text: with workers that run, it is allowed.
    assert eventually(lambda: api.query(sql, 1, "new").status_code == 200, "the text to be analysed")

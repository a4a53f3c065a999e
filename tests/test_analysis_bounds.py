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
import signal
import threading
import time
from collections.abc import Callable, Iterator

import httpx
import pytest

from conftest import Api, GatewayProcess

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
        self.slowest = 0.0
        self.answers = 0
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
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.answers += 1
                time.sleep(0.02)


@pytest.fixture(scope="module")
def bounded_gateway(launch_gateway: Callable[..., GatewayProcess]) -> GatewayProcess:
    return launch_gateway()


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
                assert response.status_code == 200, response.text
                too_slow = "took too long to analyse" in (response.json()["reason"] or "")
                timings.append((elapsed, name, depth, too_slow))
    slowest = max(timings)
    print(f"\n{len(timings)} texts; slowest answer {slowest[0] * 1000:.0f} ms ({slowest[1]} at depth {slowest[2]}); "
          f"{sum(t[3] for t in timings)} denied as too slow; /healthz {health.answers} answers, "
          f"slowest {health.slowest * 1000:.0f} ms")
    assert slowest[0] <= BUDGET + MARGIN, slowest
    assert health.slowest <= 0.1
    # The budget did its work: the exponential ones were cut off, not waited for.
    assert any(too_slow for _, name, _, too_slow in timings if name == "array")


def test_a_text_over_budget_is_denied_with_a_reason_and_counted(bounded_gateway, reader, http):
    sql = PATTERNS["array"](24)  # minutes for the parser, were it allowed to finish
    started = time.monotonic()
    response = reader.query(sql)
    elapsed = time.monotonic() - started
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
        assert reader.query(PATTERNS["array"](depth)).status_code == 403
    response = reader.query("select id from orders where status = $1 and id > $2", "new", 0)
    assert response.status_code == 200, response.text


def test_sigterm_during_hostile_analysis_exits_within_the_grace_period(launch_gateway, call_as):
    gateway = launch_gateway()
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

"""Cost of a policy decision, cached and uncached, next to its bars (bench/README.md).

Owns one in-process measurement: `PolicyEngine.decide` on a text it has seen (the path every
repeated statement takes) and on texts it has not (analysis by both parsers plus the decision),
for a short two-parameter SELECT and a 25-line CTE-and-join report. Each figure is the median
of `--repeat` batches. It measures and asserts nothing, and needs no database.
"""

from __future__ import annotations

import argparse
import gc
import importlib.machinery
import importlib.metadata
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pglast
import sqlglot
import sqlglot.parser

# `python bench/policy_bench.py` puts bench/ on the path, not the checkout that holds `gateway`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.config import PolicyConfig, parse_config
from gateway.identity import Identity
from gateway.policy import PolicyEngine

CACHED_BAR_US = 20.0  # cached policy decision <= 20 µs
UNCACHED_BAR_US = 1000.0  # uncached typical statement <= 1 ms

SHORT_SQL = "select id, status, total from orders where customer_id = $1 and status = $2"
REPORT_SQL = """\
with recent_orders as (
    select o.id, o.customer_id, o.total, o.status, o.created_at
    from orders o
    where o.created_at >= now() - make_interval(days => $1)
      and o.status = any($2::text[])
),
customer_totals as (
    select r.customer_id, count(*) as order_count, sum(r.total) as revenue,
           max(r.created_at) as last_order_at
    from recent_orders r
    group by r.customer_id
)
select c.id, c.name, c.country,
       t.order_count,
       t.revenue,
       round(t.revenue / nullif(t.order_count, 0), 2) as average_order,
       to_char(t.last_order_at, 'YYYY-MM-DD') as last_order_day,
       rank() over (partition by c.country order by t.revenue desc) as country_rank,
       coalesce(open.open_orders, 0) as open_orders
from customers c
join customer_totals t on t.customer_id = c.id
left join lateral (select count(*) as open_orders from orders p
                   where p.customer_id = c.id and p.status = 'new') open on true
where c.country = $3
order by t.revenue desc, c.id limit $4"""

CONFIG = {
    "name": "policy-bench",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
    "identities": [
        {
            "name": "reporting",
            "issuer": "dev",
            "role": "app_reader",
            "rules": [
                {"allow": ["select"], "tables": ["public.orders", "public.customers"]},
                {"allow": ["insert", "update"], "tables": ["public.orders"]},
            ],
        }
    ],
}


class BenchError(RuntimeError):
    """The measurement cannot mean what it says; the message says why."""


@dataclass(frozen=True)
class Measurement:
    label: str
    calls_per_batch: int
    batches_us: list[float]  # µs per call, one figure per batch
    bar_us: float

    @property
    def median_us(self) -> float:
        return statistics.median(self.batches_us)


def sqlglotc_status() -> str:
    """sqlglotc has no module of its own to import (`import sqlglotc` always fails): it installs
    compiled modules into the sqlglot package, so ask where sqlglot's parser was loaded from."""
    try:
        version = importlib.metadata.version("sqlglotc")
    except importlib.metadata.PackageNotFoundError:
        return "sqlglotc not installed: pure-Python sqlglot (3-4x slower)"
    parser_file = Path(sqlglot.parser.__file__ or "")
    if any(parser_file.name.endswith(suffix) for suffix in importlib.machinery.EXTENSION_SUFFIXES):
        return f"sqlglotc {version}: compiled extension active ({parser_file.name})"
    return f"sqlglotc {version} installed but NOT active: sqlglot.parser is {parser_file.name}"


def timed_batch(call: Callable[[], object], calls: int) -> float:
    """µs per call over one batch, with the collector off as `timeit` does."""
    gc.disable()
    try:
        started = time.perf_counter_ns()
        for _ in range(calls):
            call()
        elapsed = time.perf_counter_ns() - started
    finally:
        gc.enable()
    return elapsed / calls / 1000


def require_allowed(engine: PolicyEngine, identity: Identity, sql: str) -> None:
    """A denied statement takes a shorter path: timing it would flatter the figure."""
    _, decision = engine.decide(identity, sql)
    if not decision.allowed:
        raise BenchError(f"the policy denies a benchmark statement: {decision.reason}\n{sql}")


def cached_decision(identity: Identity, sql: str, calls: int, repeat: int) -> Measurement:
    engine = PolicyEngine(PolicyConfig())
    require_allowed(engine, identity, sql)
    batches = [timed_batch(lambda: engine.decide(identity, sql), calls) for _ in range(repeat)]
    return Measurement("cached decision (repeated text)", calls, batches, CACHED_BAR_US)


def first_sight_batch(identity: Identity, sql: str, calls: int) -> float:
    """Each call meets an engine that has never seen the text: analysis plus decision, the
    cost of a cache miss. The engines are made before the clock starts."""
    engines = iter([PolicyEngine(PolicyConfig()) for _ in range(calls)])
    return timed_batch(lambda: next(engines).decide(identity, sql), calls)


def uncached_decision(label: str, identity: Identity, sql: str, calls: int, repeat: int) -> Measurement:
    require_allowed(PolicyEngine(PolicyConfig()), identity, sql)
    batches = [first_sight_batch(identity, sql, calls) for _ in range(repeat)]
    return Measurement(label, calls, batches, UNCACHED_BAR_US)


def report(measurements: list[Measurement]) -> None:
    print(f"{'':44} {'median':>11} {'spread':>21} {'calls':>7}   bar")
    for m in measurements:
        verdict = "meets" if m.median_us <= m.bar_us else "OVER"
        spread = f"{min(m.batches_us):.2f}-{max(m.batches_us):.2f} µs"
        print(f"{m.label:44} {m.median_us:8.2f} µs {spread:>21} {m.calls_per_batch:7}   "
              f"<= {m.bar_us:g} µs: {verdict}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7, help="batches per figure; the median is reported (default 7)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    identity = Identity.from_config(parse_config(CONFIG).identities[0])
    print(f"python {sys.version.split()[0]}, sqlglot {sqlglot.__version__}, pglast {pglast.__version__}")
    print(sqlglotc_status())
    print(f"{args.repeat} batches per figure; the short statement is {len(SHORT_SQL)} characters, "
          f"the report {len(REPORT_SQL.splitlines())} lines\n")
    try:
        measurements = [
            cached_decision(identity, SHORT_SQL, calls=20_000, repeat=args.repeat),
            uncached_decision("uncached, short two-parameter SELECT", identity, SHORT_SQL, 200, args.repeat),
            uncached_decision("uncached, 25-line CTE-and-join report", identity, REPORT_SQL, 40, args.repeat),
        ]
    except BenchError as error:
        print(f"policy_bench: {error}", file=sys.stderr)
        return 1
    report(measurements)
    return 0


if __name__ == "__main__":
    sys.exit(main())

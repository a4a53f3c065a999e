"""Rows/s and memory of streaming a large result through the gateway against a direct asyncpg
cursor that encodes each batch with orjson, in one run (the streaming bar, bench/README.md).

Owns the large table, the direct reader, the three gateway paths (`/v1/query` as JSON and as
NDJSON, the Neon-compatible `/sql`) read by a streaming client that discards the bytes, and the
gateway's peak RSS during each. The database, roles, config and server come from `http_bench`.
It measures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import httpx
import orjson

# `python bench/stream_bench.py` puts bench/ on the path, not the checkout holding `bench`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.bare_app import encode_value
from bench.http_bench import (
    BARE_ROLE,
    DATABASE,
    BenchDatabase,
    BenchError,
    RunSecrets,
    Server,
    median,
    mint_token,
    run_and_report,
    start_database,
    start_gateway,
    wait_until_ready,
    write_gateway_config,
)
from gateway.pipeline import FETCH_BATCH_ROWS

STREAM_TABLE = "public.stream_rows"
QUERY = "select id, name, price from stream_rows"
RATIO_BAR = 0.9  # streaming >= 0.9 x the rows/s of the direct cursor
RSS_GROWTH_BAR_MIB = 64  # peak memory growth <= 64 MiB
# Enough for the whole result: a million rows of this table are about 70 MB of JSON.
MAX_RESPONSE_BYTES = 1 << 30
STATEMENT_TIMEOUT = "600s"
TAIL_BYTES = 4096
NEON_HEADERS = {
    # What @neondatabase/serverless 1.2.0 sends (tests/test_neon_sql.py); the gateway ignores
    # the credentials in the connection string and reads the bearer token.
    "Neon-Connection-String": f"postgresql://bench@gateway.local/{DATABASE}",
    "Neon-Raw-Text-Output": "true",
    "Neon-Array-Mode": "true",
    "Content-Type": "text/plain;charset=UTF-8",
}


@dataclass(frozen=True)
class StreamPath:
    """One way the rows reach a client: how to request them, and a label for the report."""

    label: str
    path: str
    body: dict
    headers: dict[str, str]


GATEWAY_PATHS = (
    StreamPath("/v1/query JSON", "/v1/query", {"sql": QUERY}, {"Accept": "application/json"}),
    StreamPath("/v1/query NDJSON", "/v1/query", {"sql": QUERY}, {"Accept": "application/x-ndjson"}),
    StreamPath("/sql (Neon)", "/sql", {"query": QUERY, "params": []}, NEON_HEADERS),
)
DIRECT_LABEL = f"direct asyncpg cursor + orjson, {FETCH_BATCH_ROWS}-row batches"


@dataclass(frozen=True)
class Measurement:
    """One path's numbers, one entry per round."""

    label: str
    rates: list[float] = field(default_factory=list)  # rows/s
    rss_growth_mib: list[float] = field(default_factory=list)  # gateway's peak RSS over its RSS before


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="rows in the result (default 1000000)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per path (default 3)")
    args = parser.parse_args(argv)
    if min(args.rows, args.rounds) < 1:
        parser.error("--rows and --rounds must be at least 1")
    return args


def stream_table_sql(rows: int) -> str:
    return f"""
        create table {STREAM_TABLE} as
            select g as id, md5(g::text) as name, (g * 1.5)::numeric as price from generate_series(1, {rows}) g;
        analyze {STREAM_TABLE};
    """


# ---------------------------------------------------------------------------- measuring


async def read_directly(port: int, run_secrets: RunSecrets, rows: int) -> float:
    """Rows/s of a cursor in batches, each encoded with orjson into bytes that are dropped."""
    connection = await asyncpg.connect(
        host="127.0.0.1", port=port, database=DATABASE, user=BARE_ROLE, password=run_secrets.bare_password
    )
    try:
        started = time.perf_counter()
        read = 0
        async with connection.transaction():
            cursor = await connection.cursor(QUERY)
            while batch := await cursor.fetch(FETCH_BATCH_ROWS):
                orjson.dumps([dict(row) for row in batch], default=encode_value)
                read += len(batch)
        elapsed = time.perf_counter() - started
    finally:
        await connection.close()
    if read != rows:
        raise BenchError(f"the direct cursor read {read} rows, expected {rows}")
    return rows / elapsed


def memory_kib(pid: int, field_name: str) -> int:
    match = re.search(rf"^{field_name}:\s+(\d+) kB$", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
    if match is None:
        raise BenchError(f"no {field_name} in /proc/{pid}/status")
    return int(match.group(1))


def reset_peak_rss(pid: int) -> int:
    """The process's RSS now, in KiB, its peak (VmHWM) set back to it: writing 5 to clear_refs
    (Linux 4.0+), so the next peak read is the next run's and not the start-up's."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")
    return memory_kib(pid, "VmRSS")


def peak_rss_growth_mib(pid: int, rss_before_kib: int) -> float:
    return (memory_kib(pid, "VmHWM") - rss_before_kib) / 1024


def row_count(head: bytes, tail: bytes, stream: StreamPath) -> int:
    """The count the answer itself states (`rowCount`), refusing one that ended in an error or
    was cut at a limit."""
    if b'"error"' in tail or b'"truncated":true' in tail:
        raise BenchError(f"{stream.label}: the answer ended with {tail[-500:].decode(errors='replace')}")
    counts = re.findall(rb'"rowCount":\s*(\d+)', head + tail)
    if not counts:
        raise BenchError(f"{stream.label}: no rowCount in the answer's first or last {TAIL_BYTES} bytes")
    return int(counts[-1])


def read_through_gateway(client: httpx.Client, server: Server, token: str, stream: StreamPath, rows: int) -> float:
    """Rows/s of one request read to its end by a client that drops the bytes."""
    headers = {**stream.headers, "Authorization": f"Bearer {token}"}
    head = tail = b""
    started = time.perf_counter()
    with client.stream(
        "POST", f"{server.base_url}{stream.path}", content=orjson.dumps(stream.body), headers=headers
    ) as response:
        if response.status_code != 200:
            raise BenchError(f"{stream.label} answered {response.status_code}: {response.read()[:500]!r}")
        for chunk in response.iter_raw():
            if len(head) < TAIL_BYTES:
                head += chunk[: TAIL_BYTES - len(head)]
            tail = (tail + chunk)[-TAIL_BYTES:]
    elapsed = time.perf_counter() - started
    counted = row_count(head, tail, stream)
    if counted != rows:
        raise BenchError(f"{stream.label} sent {counted} rows, expected {rows}")
    return rows / elapsed


def measure(server: Server, database: BenchDatabase, token: str, args: argparse.Namespace) -> list[Measurement]:
    """The direct reader and each gateway path in turn within every round, so drift in the
    machine's speed falls on all alike."""
    direct = Measurement(DIRECT_LABEL)
    through_gateway = [Measurement(stream.label) for stream in GATEWAY_PATHS]
    with httpx.Client(timeout=httpx.Timeout(60.0, read=None)) as client:
        for number in range(1, args.rounds + 1):
            direct.rates.append(asyncio.run(read_directly(database.port, database.secrets, args.rows)))
            print(f"  round {number}: {direct.label:<48} {direct.rates[-1]:>10.0f} rows/s")
            for stream, measurement in zip(GATEWAY_PATHS, through_gateway, strict=True):
                rss_before = reset_peak_rss(server.process.pid)
                measurement.rates.append(read_through_gateway(client, server, token, stream, args.rows))
                measurement.rss_growth_mib.append(peak_rss_growth_mib(server.process.pid, rss_before))
                print(
                    f"  round {number}: {stream.label:<48} {measurement.rates[-1]:>10.0f} rows/s, "
                    f"gateway peak RSS +{measurement.rss_growth_mib[-1]:.1f} MiB"
                )
    return [direct, *through_gateway]


def run_benchmark(args: argparse.Namespace) -> list[Measurement]:
    with contextlib.ExitStack() as stack:
        print(f"{args.rows} rows in {STREAM_TABLE}")
        database = start_database(stack, STREAM_TABLE, stream_table_sql(args.rows))
        limits = {
            "max_rows": args.rows,
            "max_response_bytes": MAX_RESPONSE_BYTES,
            "statement_timeout": STATEMENT_TIMEOUT,
        }
        config = write_gateway_config(database.workdir, database.port, 4, STREAM_TABLE, limits)
        print("starting the gateway, 1 worker")
        server = start_gateway(1, config, database.secrets, database.workdir, stack)
        wait_until_ready(server)
        return measure(server, database, mint_token(database.secrets.jwt_secret), args)


# ---------------------------------------------------------------------------- report


def print_report(measurements: list[Measurement], args: argparse.Namespace) -> None:
    direct = median(measurements[0].rates)
    print()
    print(f"{args.rows} rows, medians of {args.rounds} round(s); peak RSS growth: the highest of the rounds")
    print()
    print(
        f"| path | rows/s | ratio to direct (bar >= {RATIO_BAR}) "
        f"| gateway peak RSS growth MiB (bar <= {RSS_GROWTH_BAR_MIB}) |"
    )
    print("|---|---|---|---|")
    for measurement in measurements:
        rate = median(measurement.rates)
        growth = f"{max(measurement.rss_growth_mib):.1f}" if measurement.rss_growth_mib else "-"
        print(f"| {measurement.label} | {rate:.0f} | {rate / direct:.2f} | {growth} |")


def main(argv: list[str] | None = None) -> int:
    return run_and_report(parse_args(argv), run_benchmark, print_report)


if __name__ == "__main__":
    sys.exit(main())

"""The benchmark scripts run end to end in their quickest mode and print every figure of their
closing table. No figure is judged: timings belong to the benchmarks, not to tests."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def run_bench(script: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=180, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def markdown_table(output: str) -> tuple[list[str], list[list[str]]]:
    """The header and the rows of the last markdown table printed."""
    lines = [line for line in output.splitlines() if line.startswith("|")]
    header, separator, *rows = lines
    assert set(separator) <= set("|-")

    def cells(line: str) -> list[str]:
        return [cell.strip() for cell in line.strip("|").split("|")]

    return cells(header), [cells(row) for row in rows]


def is_figure(cell: str) -> bool:
    try:
        return math.isfinite(float(cell))
    except ValueError:
        return False


def test_http_bench_prints_every_figure_with_its_bar_for_each_worker_count():
    assert shutil.which("wrk"), "http_bench needs wrk on PATH (apt-get install -y wrk; .ci/run installs it)"
    # With limits in Redis too: the bench stops at the first answer that is not a 2xx, so the
    # run also shows that counting in Redis refuses nothing a caller within its limits asks.
    output = run_bench("http_bench.py", "--duration", "1s", "--rounds", "1", "--workers", "1", "--shared-limits")
    assert re.search(r"limits in Redis: req/s [\d.]+x the gateway's, CPU [+-]\d+ µs/request", output), output
    header, rows = markdown_table(output)
    assert header[0] == "workers"
    assert {"ratio (bar >= 0.8)", "CPU ratio (bar <= 1.3)", "added p50 ms (bar <= 0.3)"} <= set(header)
    assert "connection held ms/req" in header
    assert "gateway's PostgreSQL CPU µs/req" in header
    assert [row[0] for row in rows] == ["1"]
    assert all(is_figure(cell) for cell in rows[0]), rows[0]


def test_stream_bench_prints_rows_per_second_ratio_and_memory_for_every_path():
    output = run_bench("stream_bench.py", "--rows", "20000", "--rounds", "1")
    header, rows = markdown_table(output)
    assert header[2:] == ["ratio to direct (bar >= 0.9)", "gateway peak RSS growth MiB (bar <= 64)"]
    labels = [row[0] for row in rows]
    assert labels[0].startswith("direct asyncpg cursor")
    assert labels[1:] == ["/v1/query JSON", "/v1/query NDJSON", "/sql (Neon)"]
    for row in rows[1:]:
        assert all(is_figure(cell) for cell in row[1:]), row

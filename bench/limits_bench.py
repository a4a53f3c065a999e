"""Cost of admitting one request: counted in the process, and counted in Redis
(`[limits] redis_url`: one script call to admit, one in the background to release).

Owns one measurement: `IdentityLimits.admit` entered and left `--requests` times, by one task
at a time and by `--tasks` tasks at once, against a throw-away `redis-server` on a loopback
port (Debian's package; started in a temporary directory, persisting nothing, stopped at the
end). Prints wall time and this process's CPU per request, the median of `--rounds` rounds.
It measures and asserts nothing, and needs no database.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import tempfile
import time
from pathlib import Path

# `python bench/limits_bench.py` puts bench/ on the path, not the checkout that holds `gateway`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.http_bench import start_redis
from gateway.config import GatewayConfig, parse_config
from gateway.identity import Identity
from gateway.limits import IdentityLimits
from gateway.secrets import SecretStore
from gateway.shared_limits import SharedLimits


def bench_config(redis_url: str | None) -> GatewayConfig:
    """One identity whose rate and concurrency never refuse: only the counting is measured."""
    return parse_config(
        {
            "name": "limits-bench",
            "database": {"url": "postgresql://bench@localhost/bench", "pool_max": 64},
            "issuers": [{"name": "bench", "issuer": "bench", "audience": "bench", "hs256_secret": "BENCH_KEY"}],
            "identities": [
                {"name": "bench", "issuer": "bench", "role": "bench", "rate": "1000000/s", "concurrency": 1000}
            ],
            "limits": {} if redis_url is None else {"redis_url": redis_url},
        }
    )


async def admissions(limits: IdentityLimits, identity: Identity, requests: int, tasks: int) -> tuple[float, float]:
    """(wall µs, CPU µs) per request, `tasks` tasks sharing `requests` admissions."""

    async def admit_many(count: int) -> None:
        for _ in range(count):
            async with limits.admit(identity):
                pass

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(admit_many(requests // tasks) for _ in range(tasks)))
    await asyncio.sleep(0)  # the last releases are under way
    return ((time.perf_counter() - wall) / requests * 1e6, (time.process_time() - cpu) / requests * 1e6)


async def measure(redis_url: str | None, args: argparse.Namespace) -> dict[int, tuple[float, float]]:
    config = bench_config(redis_url)
    shared = None if redis_url is None else SharedLimits(config, SecretStore())
    limits = IdentityLimits(config, shared)
    identity = Identity.from_config(config.identities[0])
    await limits.start()
    try:
        if shared is not None and not shared.up:
            raise SystemExit(f"redis at {redis_url} does not answer")
        await admissions(limits, identity, 500, 1)  # warm-up: connections, the script loaded
        figures = {}
        for tasks in (1, args.tasks):
            rounds = [await admissions(limits, identity, args.requests, tasks) for _ in range(args.rounds)]
            figures[tasks] = (statistics.median(r[0] for r in rounds), statistics.median(r[1] for r in rounds))
        return figures
    finally:
        await limits.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=5000)
    parser.add_argument("--tasks", type=int, default=32, help="admissions at once, in the second measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        url = start_redis(Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="limits-bench-"))), stack)
        results = {"in process": asyncio.run(measure(None, args)), "in Redis": asyncio.run(measure(url, args))}
    print(f"{'counted':<12} {'tasks':>5} {'wall µs/request':>16} {'CPU µs/request':>15}")
    for counted, figures in results.items():
        for tasks, (wall, cpu) in figures.items():
            print(f"{counted:<12} {tasks:>5} {wall:>16.1f} {cpu:>15.1f}")


if __name__ == "__main__":
    main()

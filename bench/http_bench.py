"""Requests/s and p50 latency of the gateway's full path against a bare Starlette + asyncpg handler.

Owns one whole measurement for the first two bars of SPEC §8: a throw-away PostgreSQL, the
table and roles both servers query, the gateway's config, both servers as real processes with
the same worker count, and `wrk` driving them alternately. It measures and asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn

import asyncpg
import httpx
import jwt
import orjson

# `python bench/http_bench.py` puts bench/ on the path, not the checkout that holds `gateway`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.embedded import EmbeddedPostgresError, LocalPostgres, find_bindir, free_loopback_port

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPERUSER = "postgres"
DATABASE = "postgres"
LOGIN_ROLE = "gateway_login"
READER_ROLE = "bench_reader"
BARE_ROLE = "bench_bare"
ITEM_ROWS = 1000
QUERY_PATH = "/v1/query"
QUERY_BODY = {"sql": "select id, name, price from items where id = $1", "params": [42]}
# asyncpg's pool defaults (min_size = max_size = 10); the gateway gets the same, per worker.
POOL_SIZE = 10
WARMUP = "3s"
READY_TIMEOUT_SECONDS = 60.0
LOG_TAIL_LINES = 40
RATIO_BAR = 0.8  # SPEC §8: gateway req/s >= 0.8 x bare req/s
ADDED_P50_BAR_MS = 0.3  # SPEC §8: added p50 latency at concurrency 1 <= 0.3 ms


class BenchError(RuntimeError):
    """The benchmark could not run; the message says which step failed and why."""


@dataclass(frozen=True)
class RunSecrets:
    """Every password and key of one run, random and never written outside the temp dir."""

    superuser_password: str
    login_password: str
    bare_password: str
    jwt_secret: str

    @classmethod
    def generate(cls) -> RunSecrets:
        return cls(*(secrets.token_hex(16) for _ in range(4)))


@dataclass(frozen=True)
class Server:
    """A server process under test and the file holding its stdout and stderr."""

    name: str
    base_url: str
    process: subprocess.Popen[bytes]
    log: Path


@dataclass(frozen=True)
class Measurement:
    """One server's numbers, one entry per round."""

    name: str
    rates: list[float] = field(default_factory=list)  # req/s at --connections
    p50s_ms: list[float] = field(default_factory=list)  # p50 latency at concurrency 1

    @property
    def median_rate(self) -> float:
        return statistics.median(self.rates)

    @property
    def median_p50_ms(self) -> float:
        return statistics.median(self.p50s_ms)


# ---------------------------------------------------------------------------- setup


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=1, help="uvicorn workers per server (default 1)")
    parser.add_argument("--duration", default="10s", help="wrk duration of each measurement (default 10s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="measurements per server (default 2)")
    args = parser.parse_args(argv)
    if not re.fullmatch(r"\d+[smh]?", args.duration):
        parser.error('--duration: expected a wrk duration such as "10s" or "1m"')
    if min(args.workers, args.connections, args.threads, args.rounds) < 1:
        parser.error("--workers, --connections, --threads and --rounds must be at least 1")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return args


def start_postgres(datadir: Path, password: str, stack: contextlib.ExitStack) -> int:
    """Start a server stopped when `stack` closes; returns its port."""
    server = LocalPostgres(datadir, find_bindir())
    server.initdb(SUPERUSER, password)
    port = free_loopback_port()
    server.configure(port, hba_lines=["host all all 127.0.0.1/32 scram-sha-256"])
    stack.callback(server.stop)
    server.start()
    return port


async def create_objects(port: int, run_secrets: RunSecrets) -> None:
    connection = await asyncpg.connect(
        host="127.0.0.1", port=port, database=DATABASE, user=SUPERUSER,
        password=run_secrets.superuser_password,
    )
    try:
        await connection.execute(f"""
            create table public.items(id int primary key, name text not null, price numeric(10,2) not null);
            insert into public.items
                select g, 'item ' || g, (g * 1.25)::numeric(10,2) from generate_series(1, {ITEM_ROWS}) g;
            analyze public.items;
            create role {READER_ROLE} nologin;
            grant select on public.items to {READER_ROLE};
            create role {LOGIN_ROLE} login noinherit password '{run_secrets.login_password}';
            grant {READER_ROLE} to {LOGIN_ROLE};
            grant connect on database {DATABASE} to {LOGIN_ROLE};
            create role {BARE_ROLE} login password '{run_secrets.bare_password}';
            grant select on public.items to {BARE_ROLE};
            grant connect on database {DATABASE} to {BARE_ROLE};
        """)
    finally:
        await connection.close()


def write_gateway_config(workdir: Path, pg_port: int, connections: int) -> Path:
    # `concurrency` is per identity and every request here is the same identity: without room
    # for all wrk connections the gateway would answer 429 and the run would measure that.
    path = workdir / "gateway.toml"
    path.write_text(f"""\
name = "http-bench"

[database]
url = "postgresql://{LOGIN_ROLE}@127.0.0.1:{pg_port}/{DATABASE}"
password_secret = "BENCH_DB_PASSWORD"
sslmode = "disable"
pool_min = {POOL_SIZE}
pool_max = {POOL_SIZE}

[audit]
sink = "{workdir / 'audit.log'}"

[[issuers]]
name = "bench"
issuer = "bench"
audience = "bench"
hs256_secret = "BENCH_JWT_SECRET"

[[identities]]
name = "bench"
issuer = "bench"
role = "{READER_ROLE}"
match = {{ sub = "bench" }}
concurrency = {connections}

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.items"]
""")
    return path


def mint_token(secret: str) -> str:
    now = int(time.time())
    claims = {"iss": "bench", "aud": "bench", "sub": "bench", "iat": now, "exp": now + 3600}
    return jwt.encode(claims, secret, algorithm="HS256")


def write_wrk_script(workdir: Path, token: str) -> Path:
    # Both servers get the same request, header included: the bare app just ignores it.
    path = workdir / "query.lua"
    path.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = [==[{orjson.dumps(QUERY_BODY).decode()}]==]\n"
        'wrk.headers["Content-Type"] = "application/json"\n'
        f'wrk.headers["Authorization"] = "Bearer {token}"\n'
    )
    return path


# ---------------------------------------------------------------------------- servers


def start_server(
    name: str, command: list[str], env: dict[str, str], port: int, workdir: Path, stack: contextlib.ExitStack
) -> Server:
    log = workdir / f"{name}.log"
    with log.open("wb") as sink:
        # A session of its own: Ctrl-C reaches only this script, which stops the server in order.
        process = subprocess.Popen(
            command, cwd=REPO_ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    stack.callback(stop_process, process)
    return Server(name, f"http://127.0.0.1:{port}", process, log)


def stop_process(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_bare_app(
    workers: int, pg_port: int, run_secrets: RunSecrets, workdir: Path, stack: contextlib.ExitStack
) -> Server:
    port = free_loopback_port()
    dsn = f"postgresql://{BARE_ROLE}:{run_secrets.bare_password}@127.0.0.1:{pg_port}/{DATABASE}"
    command = [
        sys.executable, "-m", "uvicorn", "bench.bare_app:app", "--app-dir", str(REPO_ROOT),
        "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers),
        "--no-access-log", "--loop", "uvloop", "--http", "httptools",
    ]
    return start_server("bare", command, {**os.environ, "BARE_APP_DSN": dsn}, port, workdir, stack)


def start_gateway(
    workers: int, config: Path, run_secrets: RunSecrets, workdir: Path, stack: contextlib.ExitStack
) -> Server:
    port = free_loopback_port()
    command = [
        sys.executable, "-m", "gateway", "serve",
        "--config", str(config), "--port", str(port), "--workers", str(workers),
    ]
    env = {
        **os.environ,
        "BENCH_DB_PASSWORD": run_secrets.login_password,
        "BENCH_JWT_SECRET": run_secrets.jwt_secret,
    }
    return start_server("gateway", command, env, port, workdir, stack)


def log_tail(server: Server) -> str:
    lines = server.log.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
    return "\n".join(f"    {line}" for line in lines) or "    (no output)"


def fail_with_log(server: Server, problem: str) -> NoReturn:
    raise BenchError(f"{server.name}: {problem}\n  last lines of its stderr/stdout:\n{log_tail(server)}")


def wait_until_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            fail_with_log(server, f"exited with code {server.process.returncode} before answering /healthz")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{server.base_url}/healthz", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    fail_with_log(server, f"GET /healthz did not answer 200 within {READY_TIMEOUT_SECONDS:.0f}s")


def check_query(server: Server, token: str) -> None:
    """One request by hand first: wrk counts a 401 or 403 as fast as a row."""
    response = httpx.post(
        f"{server.base_url}{QUERY_PATH}",
        json=QUERY_BODY,
        headers={"Authorization": f"Bearer {token}"},
        timeout=10.0,
    )
    if response.status_code != 200:
        fail_with_log(server, f"POST {QUERY_PATH} answered {response.status_code}: {response.text[:500]}")


# ---------------------------------------------------------------------------- measuring


def run_wrk(server: Server, script: Path, duration: str, *, connections: int, threads: int) -> str:
    """wrk's report, once every response was a 2xx (wrk counts a 401 as fast as a row)."""
    command = [
        "wrk", f"-c{connections}", f"-t{threads}", f"-d{duration}", "--latency", "-s", str(script),
        f"{server.base_url}{QUERY_PATH}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"wrk against {server.name} failed ({result.returncode}): {result.stderr.strip()}")
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result.stdout)
    if failed:
        fail_with_log(server, f"{failed.group(1)} responses were not 2xx; wrk said:\n{result.stdout}")
    errors = re.search(r"Socket errors:.*", result.stdout)
    if errors:
        print(f"  note: wrk against {server.name}: {errors.group(0)}")
    return result.stdout


def requests_per_second(report: str) -> float:
    match = re.search(r"^Requests/sec:\s+([\d.]+)", report, re.MULTILINE)
    if match is None:
        raise BenchError(f"no Requests/sec line in wrk's report:\n{report}")
    return float(match.group(1))


def p50_ms(report: str) -> float:
    match = re.search(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", report, re.MULTILINE)
    if match is None:
        raise BenchError(f"no 50% line in wrk's latency distribution:\n{report}")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def measure(servers: list[Server], script: Path, args: argparse.Namespace) -> list[Measurement]:
    """Warm each server up, then alternate them within every round, so drift in the machine's
    speed (a shared box moves by tens of percent) falls on both alike."""
    load = {"connections": args.connections, "threads": args.threads}
    for server in servers:
        print(f"  warming up {server.name} ({WARMUP})")
        run_wrk(server, script, WARMUP, **load)
    measurements = [Measurement(server.name) for server in servers]
    for number in range(1, args.rounds + 1):
        for server, measurement in zip(servers, measurements, strict=True):
            rate = requests_per_second(run_wrk(server, script, args.duration, **load))
            measurement.rates.append(rate)
            print(f"  round {number}: {server.name:<8} {rate:>8.0f} req/s at -c{args.connections}")
        for server, measurement in zip(servers, measurements, strict=True):
            p50 = p50_ms(run_wrk(server, script, args.duration, connections=1, threads=1))
            measurement.p50s_ms.append(p50)
            print(f"  round {number}: {server.name:<8} {p50:>8.3f} ms p50 at -c1")
    return measurements


def run_benchmark(args: argparse.Namespace) -> list[Measurement]:
    with contextlib.ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
        run_secrets = RunSecrets.generate()
        print(f"starting PostgreSQL in {workdir}")
        pg_port = start_postgres(workdir / "pgdata", run_secrets.superuser_password, stack)
        asyncio.run(create_objects(pg_port, run_secrets))
        token = mint_token(run_secrets.jwt_secret)
        script = write_wrk_script(workdir, token)
        config = write_gateway_config(workdir, pg_port, args.connections)
        print(f"starting bare app and gateway, {args.workers} worker(s) each")
        servers = [
            start_bare_app(args.workers, pg_port, run_secrets, workdir, stack),
            start_gateway(args.workers, config, run_secrets, workdir, stack),
        ]
        for server in servers:
            wait_until_ready(server)
            check_query(server, token)
        return measure(servers, script, args)


# ---------------------------------------------------------------------------- report


def print_report(measurements: list[Measurement], args: argparse.Namespace) -> None:
    bare, gateway = measurements
    print()
    print(
        f"workers {args.workers}, wrk -c{args.connections} -t{args.threads} -d{args.duration}, "
        f"{args.rounds} round(s); p50 with -c1 -t1"
    )
    print(f"{'server':<9} {'req/s per round':<24} {'median':>8}   {'p50 @c1 (ms)':<24} {'median':>8}")
    for measurement in measurements:
        rates = ", ".join(f"{rate:.0f}" for rate in measurement.rates)
        p50s = ", ".join(f"{p50:.3f}" for p50 in measurement.p50s_ms)
        print(
            f"{measurement.name:<9} {rates:<24} {measurement.median_rate:>8.0f}   "
            f"{p50s:<24} {measurement.median_p50_ms:>5.3f} ms"
        )
    added = gateway.median_p50_ms - bare.median_p50_ms
    print(f"added p50 latency at concurrency 1: {added:.3f} ms (bar in SPEC §8: <= {ADDED_P50_BAR_MS} ms)")
    ratio = gateway.median_rate / bare.median_rate
    print(f"ratio gateway/bare: {ratio:.2f} (bar in SPEC §8: >= {RATIO_BAR})")


def exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    # SystemExit unwinds the ExitStack, so servers stop and the temp dir goes, as on Ctrl-C.
    sys.exit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: install it with `apt-get install -y wrk`", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        measurements = run_benchmark(args)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temporary directory removed", file=sys.stderr)
        return 130
    except (BenchError, EmbeddedPostgresError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_report(measurements, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Requests/s, server CPU per request and p50 latency of the gateway's full path against a bare
Starlette + asyncpg handler, and how long the gateway holds a pooled connection per request.

Owns one whole measurement for the HTTP bars (bench/README.md): a throw-away PostgreSQL, the table
and roles both servers query, the gateway's config, both servers as real processes with the
same worker count (one comparison per `--workers` value), `wrk` driving them alternately, and
the per-process CPU read from /proc. With `--shared-limits`, a third server in the same rounds:
the gateway counting its limits in a throw-away `redis-server` (`[limits] redis_url`). It
measures and asserts nothing. `stream_bench.py` and `limits_bench.py` build on the setup
helpers here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NoReturn, TypeVar

import asyncpg
import httpx
import jwt
import orjson

# `python bench/http_bench.py` puts bench/ on the path, not the checkout that holds `gateway`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.embedded import EmbeddedPostgresError, LocalPostgres, find_bindir, free_loopback_port
from gateway.metrics import MULTIPROCESS_DIR

REPO_ROOT = Path(__file__).resolve().parent.parent
SUPERUSER = "postgres"
DATABASE = "postgres"
LOGIN_ROLE = "gateway_login"
READER_ROLE = "bench_reader"
BARE_ROLE = "bench_bare"
ITEMS_TABLE = "public.items"
ITEMS_SQL = """
    create table public.items(id int primary key, name text not null, price numeric(10,2) not null);
    insert into public.items
        select g, 'item ' || g, (g * 1.25)::numeric(10,2) from generate_series(1, 1000) g;
    analyze public.items;
"""
QUERY_PATH = "/v1/query"
QUERY_BODY = {"sql": "select id, name, price from items where id = $1", "params": [42]}
# asyncpg's pool defaults (min_size = max_size = 10); the gateway gets the same, per worker.
POOL_SIZE = 10
WARMUP = "3s"
READY_TIMEOUT_SECONDS = 60.0
REDIS_START_SECONDS = 10.0
LOG_TAIL_LINES = 40
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
HOLD_SAMPLE = re.compile(r"^gateway_connection_hold_seconds_(sum|count)\s+(\S+)$", re.MULTILINE)
PROFILE_FORMATS = {"flamegraph": "svg", "raw": "txt", "speedscope": "json"}
Result = TypeVar("Result")
RATIO_BAR = 0.8  # gateway req/s >= 0.8 x bare req/s
CPU_RATIO_BAR = 1.3  # gateway CPU per request <= 1.3 x bare
ADDED_P50_BAR_MS = 0.3  # added p50 latency at concurrency 1 <= 0.3 ms


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


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


@dataclass(frozen=True)
class Measurement:
    """One server's numbers, one entry per round."""

    name: str
    rates: list[float] = field(default_factory=list)  # req/s at --connections
    cpu_us: list[float] = field(default_factory=list)  # server CPU µs per request at --connections
    p50s_ms: list[float] = field(default_factory=list)  # p50 latency at concurrency 1
    holds_ms: list[float] = field(default_factory=list)  # pooled connection held per use (gateway)
    database_cpu_us: list[float] = field(default_factory=list)  # PostgreSQL's CPU µs per request at --connections


@dataclass(frozen=True)
class Comparison:
    """Bare and gateway at one worker count, and where the profile went if one was taken."""

    workers: int
    bare: Measurement
    gateway: Measurement
    profile: Path | None = None
    shared_limits: Measurement | None = None  # the gateway counting its limits in Redis (--shared-limits)

    @property
    def ratio(self) -> float:
        return median(self.gateway.rates) / median(self.bare.rates)

    @property
    def cpu_ratio(self) -> float:
        return median(self.gateway.cpu_us) / median(self.bare.cpu_us)

    @property
    def added_p50_ms(self) -> float:
        return median(self.gateway.p50s_ms) - median(self.bare.p50s_ms)


# ---------------------------------------------------------------------------- setup


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1],
        help="uvicorn workers per server; several values, one comparison each (default 1)",
    )
    parser.add_argument("--duration", default="10s", help="wrk duration of each measurement (default 10s)")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections (default 32)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--rounds", type=int, default=3, help="measurements per server (default 3)")
    parser.add_argument(
        "--profile", nargs="?", const="flamegraph", choices=sorted(PROFILE_FORMATS),
        help="py-spy records the gateway during one more run at --connections (default format: flamegraph)",
    )
    parser.add_argument(
        "--shared-limits", action="store_true",
        help="also measure, in the same rounds, the gateway counting its limits in a throw-away redis-server",
    )
    args = parser.parse_args(argv)
    if not re.fullmatch(r"\d+[smh]?", args.duration):
        parser.error('--duration: expected a wrk duration such as "10s" or "1m"')
    if min(*args.workers, args.connections, args.threads, args.rounds) < 1:
        parser.error("--workers, --connections, --threads and --rounds must be at least 1")
    if args.threads > args.connections:
        parser.error("--threads must not exceed --connections")
    return args


@dataclass(frozen=True)
class BenchDatabase:
    """The run's throw-away PostgreSQL: its temp dir (removed at the end), secrets, port and
    the postmaster's pid (its backends are its children: their CPU is the database's)."""

    workdir: Path
    secrets: RunSecrets
    port: int
    pid: int


def start_database(stack: contextlib.ExitStack, table: str, table_sql: str) -> BenchDatabase:
    """PostgreSQL in a temp dir, both stopped and removed when `stack` closes, with `table`
    made by `table_sql` and the roles of `create_objects`."""
    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="gateway-bench-")))
    run_secrets = RunSecrets.generate()
    print(f"starting PostgreSQL in {workdir}")
    port = start_postgres(workdir / "pgdata", run_secrets.superuser_password, stack)
    asyncio.run(create_objects(port, run_secrets, table, table_sql))
    pid = int((workdir / "pgdata" / "postmaster.pid").read_text().split()[0])
    return BenchDatabase(workdir, run_secrets, port, pid)


def start_postgres(datadir: Path, password: str, stack: contextlib.ExitStack) -> int:
    """Start a server stopped when `stack` closes; returns its port."""
    server = LocalPostgres(datadir, find_bindir())
    server.initdb(SUPERUSER, password)
    port = free_loopback_port()
    server.configure(port, hba_lines=["host all all 127.0.0.1/32 scram-sha-256"])
    stack.callback(server.stop)
    server.start()
    return port


async def superuser_connection(port: int, run_secrets: RunSecrets) -> asyncpg.Connection:
    return await asyncpg.connect(
        host="127.0.0.1", port=port, database=DATABASE, user=SUPERUSER, password=run_secrets.superuser_password
    )


async def create_objects(port: int, run_secrets: RunSecrets, table: str, table_sql: str) -> None:
    """`table_sql` creates `table`; the gateway's roles and the bare login may read it."""
    connection = await superuser_connection(port, run_secrets)
    try:
        await connection.execute(f"""
            {table_sql}
            create role {READER_ROLE} nologin;
            grant select on {table} to {READER_ROLE};
            create role {LOGIN_ROLE} login noinherit password '{run_secrets.login_password}';
            grant {READER_ROLE} to {LOGIN_ROLE};
            grant connect on database {DATABASE} to {LOGIN_ROLE};
            create role {BARE_ROLE} login password '{run_secrets.bare_password}';
            grant select on {table} to {BARE_ROLE};
            grant connect on database {DATABASE} to {BARE_ROLE};
        """)
    finally:
        await connection.close()


def write_gateway_config(
    workdir: Path,
    pg_port: int,
    connections: int,
    table: str,
    limits: dict[str, int | str] | None = None,
    redis_url: str | None = None,
) -> Path:
    """One issuer and one identity that may select from `table`, with `limits` (identity keys
    of gateway.config, such as max_rows) over the defaults; with `redis_url`, the identity's
    limits are counted there (a file of its own: both configurations serve in one run)."""
    # `concurrency` is per identity and every request here is the same identity: without room
    # for all wrk connections the gateway would answer 429 and the run would measure that.
    # JSON's strings and integers are TOML's too.
    limit_lines = "".join(f"{key} = {json.dumps(value)}\n" for key, value in (limits or {}).items())
    shared_section = "" if redis_url is None else f'[limits]\nredis_url = "{redis_url}"\n'
    path = workdir / ("gateway.toml" if redis_url is None else "gateway-shared-limits.toml")
    path.write_text(f"""\
name = "bench"
{shared_section}
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
{limit_lines}
  [[identities.rules]]
  allow = ["select"]
  tables = ["{table}"]
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


def start_redis(workdir: Path, stack: contextlib.ExitStack) -> str:
    """A throw-away redis-server on a loopback port (Debian's package), persisting nothing,
    stopped with the stack; its URL once it accepts connections."""
    server = shutil.which("redis-server")
    if server is None:
        raise BenchError("redis-server is not installed: install it with `apt-get install -y redis-server`")
    port = free_loopback_port()
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    process = subprocess.Popen([*command, "--dir", str(workdir)], stdout=subprocess.DEVNULL, start_new_session=True)
    stack.callback(stop_process, process)
    deadline = time.monotonic() + REDIS_START_SECONDS
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"redis-server did not accept connections within {REDIS_START_SECONDS:g}s")


def start_gateway(
    workers: int,
    config: Path,
    run_secrets: RunSecrets,
    workdir: Path,
    stack: contextlib.ExitStack,
    name: str = "gateway",
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
    env.pop(MULTIPROCESS_DIR, None)
    if workers > 1:  # as deployed (README): without it a scrape reads one worker's metrics
        metrics_dir = workdir / f"prometheus-{name}-{workers}"
        metrics_dir.mkdir()
        env[MULTIPROCESS_DIR] = str(metrics_dir)
    return start_server(name, command, env, port, workdir, stack)


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


def run_wrk(
    server: Server, script: Path, duration: str, *, connections: int, threads: int, warming_up: bool = False
) -> str:
    """wrk's report, once every response was a 2xx (wrk counts a 401 as fast as a row). Warming
    up, refusals are only noted: a worker's first statements may be a 503 to retry while the
    machine keeps its analysis workers from starting (policy.analysis_timeout)."""
    command = [
        "wrk", f"-c{connections}", f"-t{threads}", f"-d{duration}", "--latency", "-s", str(script),
        f"{server.base_url}{QUERY_PATH}",
    ]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise BenchError(f"wrk against {server.name} failed ({result.returncode}): {result.stderr.strip()}")
    failed = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", result.stdout)
    if failed and warming_up:
        print(f"  note: warming up {server.name}: {failed.group(1)} responses were not 2xx")
    elif failed:
        fail_with_log(server, f"{failed.group(1)} responses were not 2xx; wrk said:\n{result.stdout}")
    errors = re.search(r"Socket errors:.*", result.stdout)
    if errors:
        print(f"  note: wrk against {server.name}: {errors.group(0)}")
    return result.stdout


def wrk_figure(pattern: str, report: str, what: str) -> re.Match[str]:
    match = re.search(pattern, report, re.MULTILINE)
    if match is None:
        raise BenchError(f"no {what} in wrk's report:\n{report}")
    return match


def requests_per_second(report: str) -> float:
    return float(wrk_figure(r"^Requests/sec:\s+([\d.]+)", report, "Requests/sec line").group(1))


def requests_completed(report: str) -> int:
    return int(wrk_figure(r"^\s*(\d+) requests in ", report, '"N requests in" line').group(1))


def p50_ms(report: str) -> float:
    match = wrk_figure(r"^\s*50%\s+([\d.]+)(us|ms|s)\s*$", report, "50% line in the latency distribution")
    return float(match.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[match.group(2)]


def process_tree(root: int) -> list[int]:
    """`root` and its descendants now (uvicorn's workers, the gateway's analysis workers)."""
    found, pending = [], [root]
    while pending:
        pid = pending.pop()
        found.append(pid)
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            for task in Path(f"/proc/{pid}/task").iterdir():
                pending.extend(int(child) for child in (task / "children").read_text().split())
    return found


def cpu_seconds(root: int) -> float:
    """User + system CPU of a process tree, reaped children included (cutime, cstime)."""
    ticks = 0
    for pid in process_tree(root):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            # Fields after the command name, which may hold spaces: the 14th to 17th of stat(5).
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            ticks += sum(int(value) for value in fields[11:15])
    return ticks / CLOCK_TICKS


def connection_hold(server: Server) -> tuple[float, float] | None:
    """(seconds, uses) of gateway_connection_hold_seconds so far; None from a server without it."""
    response = httpx.get(f"{server.base_url}/metrics", timeout=10.0)
    samples = dict(HOLD_SAMPLE.findall(response.text)) if response.status_code == 200 else {}
    if not samples:
        return None
    return float(samples["sum"]), float(samples["count"])


def measure_load(
    server: Server, database_pid: int, script: Path, measurement: Measurement, args: argparse.Namespace
) -> str:
    """One run at --connections: req/s, the server's and PostgreSQL's CPU per request and, from
    the gateway, hold time. The servers take turns, so PostgreSQL's CPU during a run is what
    that server's requests cost it (with the little its background processes use)."""
    hold_before = connection_hold(server)
    cpu_before, database_cpu_before = cpu_seconds(server.process.pid), cpu_seconds(database_pid)
    report = run_wrk(server, script, args.duration, connections=args.connections, threads=args.threads)
    cpu_used = cpu_seconds(server.process.pid) - cpu_before
    database_cpu_used = cpu_seconds(database_pid) - database_cpu_before
    completed = requests_completed(report)
    measurement.rates.append(requests_per_second(report))
    measurement.cpu_us.append(cpu_used / completed * 1e6)
    measurement.database_cpu_us.append(database_cpu_used / completed * 1e6)
    line = (
        f"{measurement.rates[-1]:>8.0f} req/s, {measurement.cpu_us[-1]:>6.0f} µs CPU/request, "
        f"PostgreSQL {measurement.database_cpu_us[-1]:>4.0f} µs CPU/request"
    )
    hold_after = connection_hold(server)
    if hold_before is not None and hold_after is not None:
        held, uses = (after - before for after, before in zip(hold_after, hold_before, strict=True))
        measurement.holds_ms.append(held / uses * 1000 if uses else float("nan"))
        line += f", connection held {measurement.holds_ms[-1]:.3f} ms/use"
    return line


def measure(servers: list[Server], database_pid: int, script: Path, args: argparse.Namespace) -> list[Measurement]:
    """Warm each server up, then alternate them within every round, so drift in the machine's
    speed (a shared box moves by tens of percent) falls on both alike."""
    for server in servers:
        print(f"  warming up {server.name} ({WARMUP})")
        run_wrk(server, script, WARMUP, connections=args.connections, threads=args.threads, warming_up=True)
    measurements = [Measurement(server.name) for server in servers]
    for number in range(1, args.rounds + 1):
        for server, measurement in zip(servers, measurements, strict=True):
            line = measure_load(server, database_pid, script, measurement, args)
            print(f"  round {number}: {server.name:<13} -c{args.connections}: {line}")
        for server, measurement in zip(servers, measurements, strict=True):
            p50 = p50_ms(run_wrk(server, script, args.duration, connections=1, threads=1))
            measurement.p50s_ms.append(p50)
            print(f"  round {number}: {server.name:<13} -c1: {p50:>8.3f} ms p50")
    return measurements


def seconds_of(duration: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([smh]?)", duration).groups()
    return int(number) * {"": 1, "s": 1, "m": 60, "h": 3600}[unit]


def py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise BenchError("--profile needs py-spy: `pip install py-spy` into this virtualenv")
    return found


def profile(server: Server, script: Path, workers: int, args: argparse.Namespace) -> Path:
    """py-spy samples the server and its workers during one more run at --connections."""
    output = Path(tempfile.gettempdir()) / (
        f"gateway-profile-{time.strftime('%Y%m%d-%H%M%S')}-w{workers}.{PROFILE_FORMATS[args.profile]}"
    )
    command = [
        py_spy(), "record", "--pid", str(server.process.pid), "--subprocesses", "--nonblocking",
        "--duration", str(seconds_of(args.duration)), "--format", args.profile, "--output", str(output),
    ]
    print(f"  profiling {server.name} with py-spy ({args.duration})")
    recorder = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    run_wrk(server, script, args.duration, connections=args.connections, threads=args.threads)
    said, _ = recorder.communicate(timeout=60)
    if recorder.returncode != 0 or not output.exists():
        raise BenchError(f"py-spy failed ({recorder.returncode}):\n{said.strip()}")
    return output


def compare(workers: int, database: BenchDatabase, token: str, args: argparse.Namespace) -> Comparison:
    """Both servers at one worker count, started for it and stopped after it."""
    workdir, run_secrets = database.workdir, database.secrets
    script = write_wrk_script(workdir, token)
    config = write_gateway_config(workdir, database.port, args.connections, ITEMS_TABLE)
    with contextlib.ExitStack() as stack:
        print(f"starting bare app and gateway, {workers} worker(s) each")
        servers = [
            start_bare_app(workers, database.port, run_secrets, workdir, stack),
            start_gateway(workers, config, run_secrets, workdir, stack),
        ]
        if args.shared_limits:
            redis_url = start_redis(workdir, stack)
            shared_config = write_gateway_config(
                workdir, database.port, args.connections, ITEMS_TABLE, redis_url=redis_url
            )
            servers.append(start_gateway(workers, shared_config, run_secrets, workdir, stack, "gateway+redis"))
        for server in servers:
            wait_until_ready(server)
            check_query(server, token)
        bare, gateway, *shared = measure(servers, database.pid, script, args)
        recorded = profile(servers[1], script, workers, args) if args.profile else None
        return Comparison(workers, bare, gateway, recorded, shared[0] if shared else None)


def run_benchmark(args: argparse.Namespace) -> list[Comparison]:
    with contextlib.ExitStack() as stack:
        database = start_database(stack, ITEMS_TABLE, ITEMS_SQL)
        token = mint_token(database.secrets.jwt_secret)
        return [compare(workers, database, token, args) for workers in args.workers]


# ---------------------------------------------------------------------------- report


def per_round(values: list[float], spec: str) -> str:
    return ", ".join(format(value, spec) for value in values)


def print_comparison(comparison: Comparison, args: argparse.Namespace) -> None:
    print()
    print(
        f"workers {comparison.workers}, wrk -c{args.connections} -t{args.threads} -d{args.duration}, "
        f"{args.rounds} round(s); p50 with -c1 -t1; per round, then the median"
    )
    shared = comparison.shared_limits
    for measurement in (comparison.bare, comparison.gateway, *([shared] if shared else [])):
        print(
            f"  {measurement.name:<13} req/s {per_round(measurement.rates, '.0f')} -> {median(measurement.rates):.0f}; "
            f"CPU µs/request {per_round(measurement.cpu_us, '.0f')} -> {median(measurement.cpu_us):.0f}; "
            f"p50 ms {per_round(measurement.p50s_ms, '.3f')} -> {median(measurement.p50s_ms):.3f}; "
            f"PostgreSQL CPU µs/request {per_round(measurement.database_cpu_us, '.0f')} -> "
            f"{median(measurement.database_cpu_us):.0f}"
        )
    holds = comparison.gateway.holds_ms
    print(f"  gateway connection held per use, ms: {per_round(holds, '.3f')} -> {median(holds):.3f}")
    print(f"  ratio gateway/bare req/s: {comparison.ratio:.2f} (bar: >= {RATIO_BAR})")
    print(f"  ratio gateway/bare CPU per request: {comparison.cpu_ratio:.2f} (bar: <= {CPU_RATIO_BAR})")
    print(f"  added p50 at concurrency 1: {comparison.added_p50_ms:.3f} ms (bar: <= {ADDED_P50_BAR_MS} ms)")
    if shared is not None:
        print(
            f"  limits in Redis: req/s {median(shared.rates) / median(comparison.gateway.rates):.2f}x the gateway's, "
            f"CPU {median(shared.cpu_us) - median(comparison.gateway.cpu_us):+.0f} µs/request, "
            f"p50 {median(shared.p50s_ms) - median(comparison.gateway.p50s_ms):+.3f} ms, "
            f"connection held {median(shared.holds_ms):.3f} ms/use"
        )
    if comparison.profile is not None:
        print(f"  profile: {comparison.profile}")


TABLE_HEADER = (
    f"| workers | bare req/s | gateway req/s | ratio (bar >= {RATIO_BAR}) | bare CPU µs/req | gateway CPU µs/req "
    f"| CPU ratio (bar <= {CPU_RATIO_BAR}) | bare p50 ms | gateway p50 ms | added p50 ms (bar <= {ADDED_P50_BAR_MS}) "
    "| connection held ms/req | gateway's PostgreSQL CPU µs/req |"
)


def table_row(comparison: Comparison) -> str:
    bare, gateway = comparison.bare, comparison.gateway
    cells = [
        str(comparison.workers),
        f"{median(bare.rates):.0f}", f"{median(gateway.rates):.0f}", f"{comparison.ratio:.2f}",
        f"{median(bare.cpu_us):.0f}", f"{median(gateway.cpu_us):.0f}", f"{comparison.cpu_ratio:.2f}",
        f"{median(bare.p50s_ms):.3f}", f"{median(gateway.p50s_ms):.3f}", f"{comparison.added_p50_ms:.3f}",
        f"{median(gateway.holds_ms):.3f}", f"{median(gateway.database_cpu_us):.0f}",
    ]
    return "| " + " | ".join(cells) + " |"


def print_report(comparisons: list[Comparison], args: argparse.Namespace) -> None:
    for comparison in comparisons:
        print_comparison(comparison, args)
    print()
    print(f"medians of {args.rounds} round(s), wrk -c{args.connections} -d{args.duration}; p50 at -c1")
    print()
    print(TABLE_HEADER)
    print("|" + "---|" * TABLE_HEADER.count(" | ") + "---|")
    for comparison in comparisons:
        print(table_row(comparison))


def exit_on_sigterm(signum: int, frame: object) -> NoReturn:
    # SystemExit unwinds the ExitStack, so servers stop and the temp dir goes, as on Ctrl-C.
    sys.exit(128 + signum)


def run_and_report(
    args: argparse.Namespace,
    run: Callable[[argparse.Namespace], Result],
    report: Callable[[Result, argparse.Namespace], None],
) -> int:
    """A benchmark's exit status: 0 when it measured (whether or not a bar is met), 1 when a
    step failed (the message names it), 130 on Ctrl-C; SIGTERM cleans up as Ctrl-C does."""
    signal.signal(signal.SIGTERM, exit_on_sigterm)
    try:
        result = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted: servers stopped, temporary directory removed", file=sys.stderr)
        return 130
    except (BenchError, EmbeddedPostgresError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report(result, args)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if shutil.which("wrk") is None:
        print("wrk is not installed: install it with `apt-get install -y wrk`", file=sys.stderr)
        return 2
    return run_and_report(args, run_benchmark, print_report)


if __name__ == "__main__":
    sys.exit(main())

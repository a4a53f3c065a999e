"""A real PgBouncer (the Debian package) on a loopback port, in front of the suite's
PostgreSQL: transaction pooling, TLS on both hops (clients see a certificate made at test
time, by the suite's CA; PgBouncer verifies PostgreSQL's with verify-full), and SCRAM verifiers copied from
PostgreSQL into its auth_file, so that it passes each client's SCRAM login through.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import trustme

from conftest import stop_process
from gateway.embedded import _make_traversable, _server_account, free_loopback_port

PGBOUNCER = shutil.which("pgbouncer") or "/usr/sbin/pgbouncer"  # Debian installs it outside a user's PATH
START_SECONDS = 10.0


@dataclass
class PgBouncer:
    port: int
    folder: Path
    process: subprocess.Popen

    def url(self, user: str, database: str) -> str:
        return f"postgresql://{user}@localhost:{self.port}/{database}"

    def log(self) -> str:
        return (self.folder / "pgbouncer.log").read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, 10)
        shutil.rmtree(self.folder, ignore_errors=True)


async def scram_verifiers(superuser: asyncpg.Connection, users: list[str]) -> str:
    """auth_file lines: each user with the SCRAM verifier PostgreSQL stores for it."""
    rows = await superuser.fetch(
        "SELECT rolname, rolpassword FROM pg_catalog.pg_authid WHERE rolname = ANY($1::text[]) ORDER BY 1", users
    )
    return "".join(f'"{row["rolname"]}" "{row["rolpassword"]}"\n' for row in rows)


def start_pgbouncer(
    *, server_port: int, database: str, ca: trustme.CA, server_ca: Path, auth_lines: str, pool_size: int,
    **settings: str,
) -> PgBouncer:
    """PgBouncer for `database` on the PostgreSQL at localhost:`server_port`, showing clients a
    certificate for localhost from `ca`; extra `settings` go into its [pgbouncer] section."""
    # A short private path the server account can reach (pytest's are root's own, 0700).
    folder = Path(tempfile.mkdtemp(prefix="gw-pgb-"))
    account = _server_account()
    certificate = ca.issue_cert("localhost")
    files = {
        "server.pem": certificate.cert_chain_pems[0].bytes(),
        "server.key": certificate.private_key_pem.bytes(),
        "postgres-ca.pem": server_ca.read_bytes(),
        "users.txt": auth_lines.encode(),
    }
    port = free_loopback_port()
    options = {
        "listen_addr": "127.0.0.1",
        "listen_port": str(port),
        "unix_socket_dir": "",
        "logfile": str(folder / "pgbouncer.log"),
        "auth_type": "scram-sha-256",
        "auth_file": str(folder / "users.txt"),
        "pool_mode": "transaction",
        "default_pool_size": str(pool_size),
        "max_client_conn": "200",
        "client_tls_sslmode": "require",
        "client_tls_cert_file": str(folder / "server.pem"),
        "client_tls_key_file": str(folder / "server.key"),
        "server_tls_sslmode": "verify-full",
        "server_tls_ca_file": str(folder / "postgres-ca.pem"),
        **settings,
    }
    files["pgbouncer.ini"] = (
        f"[databases]\n{database} = host=localhost port={server_port} dbname={database}\n\n[pgbouncer]\n"
        + "".join(f"{key} = {value}\n" for key, value in options.items())
    ).encode()
    for name, content in files.items():
        path = folder / name
        path.write_bytes(content)
        path.chmod(0o600)
    user: dict = {}
    if account is not None:
        _make_traversable(folder.parent)
        for path in [folder, *folder.iterdir()]:
            os.chown(path, account.pw_uid, account.pw_gid)
        user = {"user": account.pw_uid, "group": account.pw_gid, "extra_groups": []}
    process = subprocess.Popen(
        [PGBOUNCER, str(folder / "pgbouncer.ini")], cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **user
    )
    bouncer = PgBouncer(port, folder, process)
    deadline = time.monotonic() + START_SECONDS
    while "process up" not in _read(folder / "pgbouncer.log"):
        if process.poll() is not None or time.monotonic() > deadline:
            log = _read(folder / "pgbouncer.log")
            bouncer.stop()
            raise RuntimeError(f"pgbouncer did not start:\n{log}")
        time.sleep(0.05)
    return bouncer


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""

"""What the gateway says before it serves: a missing TLS file or an unresolvable database host
named in the refusal, and a rule naming a table the database lacks as a warning at
`gateway check --database` (in the log at start: tests/test_dev.py, whose user configuration
names a table before it is created)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.cli import main
from gateway.config import load_config
from gateway.server import preflight

UNREACHABLE = """
name = "startup"

[database]
url = "{url}"
password_secret = "STARTUP_DB_PASSWORD"
{settings}

[[issuers]]
name = "dev"
issuer = "startup"
audience = "startup"
hs256_secret = "STARTUP_DB_PASSWORD"
"""

MISSING_TABLE = """
[[identities]]
name = "typo"
issuer = "dev"
match = { sub = "typo" }
role = "demo_reader"
read_only = true

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.order", "public.customers", "public.*"]
"""


def start_refusal(folder: Path, monkeypatch, url: str, settings: str) -> str:
    """Why `gateway serve` refuses to start (what it prints after "gateway: ")."""
    path = folder / "gateway.toml"
    path.write_text(UNREACHABLE.format(url=url, settings=settings))
    monkeypatch.setenv("STARTUP_DB_PASSWORD", "x")
    problem = asyncio.run(preflight(load_config(path)))
    assert problem is not None
    return problem


def test_a_missing_sslrootcert_is_named_at_start(tmp_path, monkeypatch):
    problem = start_refusal(tmp_path, monkeypatch, "postgresql://gateway@127.0.0.1:9/app", 'sslrootcert = "ca.pem"')
    assert problem == f"cannot reach the database: database.sslrootcert: {tmp_path}/ca.pem: no such file"


def test_an_unresolvable_database_host_is_named_at_start(tmp_path, monkeypatch):
    url = "postgresql://gateway@db.does-not-exist.invalid:5432/app"
    problem = start_refusal(tmp_path, monkeypatch, url, 'sslmode = "disable"')
    assert problem.startswith("cannot reach the database: cannot resolve the database host 'db.does-not-exist.invalid'")


def test_check_database_warns_of_a_rule_table_the_database_lacks(capsys, gateway_config, gateway_env, tmp_path,
                                                                 monkeypatch):
    for name, value in gateway_env.items():
        monkeypatch.setenv(name, value)
    path = tmp_path / "gateway.toml"
    path.write_text(gateway_config(MISSING_TABLE))
    main(["check", "--config", str(path), "--database"])
    warnings = [line for line in capsys.readouterr().err.splitlines() if "not in the database" in line]
    assert warnings == ['gateway: warning: identity "typo": rule table public.order is not in the database']


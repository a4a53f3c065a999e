"""The `gateway` command, run in-process: `check` (with and without a catalog
snapshot), `token`, `config validate`, `--version` and every option's help. Those that need a database are in
`test_policy_database.py`.

Exit codes: 0 allowed / success, 1 denied / failed (a missing secret), 2 usage or
configuration error.
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.auth import SharedSecretIssuer, TokenVerifier
from gateway.catalog import dump_snapshot, snapshot_from_rows
from gateway.cli import build_parser, main
from gateway.config import load_config
from gateway.secrets import SecretStore

JWT_SECRET = "cli-test-signing-secret-0123456789-abcdefghijklmnopqrstuvwxyz-AB"
DB_PASSWORD = "cli-test-database-password-4242"

CONFIG = """
name = "cli-gateway"

[database]
url = "postgresql://gateway@db.internal:5432/app"
password_secret = "CLI_DB_PASSWORD"

[[issuers]]
name = "dev"
issuer = "edge-sql-gateway-cli"
audience = "edge-sql-gateway"
hs256_secret = "CLI_JWT_SECRET"

[[identities]]
name = "orders-worker"
issuer = "dev"
match = { sub = "orders-worker" }
role = "orders_writer"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders", "public.customers"]

  [[identities.rules]]
  allow = ["insert", "update"]
  tables = ["public.orders"]

[env.prod.database]
url = "postgresql://gateway@db.prod:5432/app"
"""


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("GATEWAY_CONFIG", "GATEWAY_ENV", "CLI_DB_PASSWORD", "CLI_JWT_SECRET"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def secrets_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLI_DB_PASSWORD", DB_PASSWORD)
    monkeypatch.setenv("CLI_JWT_SECRET", JWT_SECRET)


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(CONFIG)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# ---------------------------------------------------------------------------- gateway check


def test_check_allowed_statement_exits_0(capsys, config_path):
    code, out, _ = run(
        capsys,
        "check",
        "--config",
        str(config_path),
        "--identity",
        "orders-worker",
        "--sql",
        "select id from orders where id = $1",
    )
    assert code == 0
    assert json.loads(out)["allowed"] is True


def test_check_prints_the_decision_as_json(capsys, config_path):
    _, out, _ = run(
        capsys,
        "check",
        "--config",
        str(config_path),
        "--identity",
        "orders-worker",
        "--sql",
        "select lower(status) from orders",
    )
    assert json.loads(out) == {
        "allowed": True,
        "identity": "orders-worker",
        "kind": "select",
        "tables": ["public.orders"],
        "columns": ["public.orders.status"],
        "functions": ["lower"],
        "reason": None,
        "approval": None,
    }


def test_check_denied_statement_exits_1_with_reason(capsys, config_path):
    code, out, _ = run(
        capsys, "check", "--config", str(config_path), "--identity", "orders-worker", "--sql", "delete from orders"
    )
    assert code == 1
    decision = json.loads(out)
    assert decision["allowed"] is False
    assert decision["kind"] == "delete"
    assert decision["reason"].startswith('DELETE on public.orders is not allowed for identity "orders-worker"')


def test_check_reads_sql_from_stdin(capsys, config_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("insert into orders (id, status) values ($1,$2)\n"))
    code, out, _ = run(capsys, "check", "--config", str(config_path), "--identity", "orders-worker")
    assert code == 0
    assert json.loads(out)["kind"] == "insert"


def test_check_denies_utility_statement_from_stdin(capsys, config_path, monkeypatch):
    monkeypatch.setattr("sys.stdin", io.StringIO("SET ROLE postgres"))
    code, out, _ = run(capsys, "check", "--config", str(config_path), "--identity", "orders-worker")
    assert code == 1
    assert json.loads(out)["allowed"] is False


def test_check_unknown_identity_exits_2(capsys, config_path):
    code, out, err = run(capsys, "check", "--config", str(config_path), "--identity", "nobody", "--sql", "select 1")
    assert code == 2
    assert out == ""
    assert '"nobody"' in err


def test_check_bad_config_exits_2_naming_file_and_key(capsys, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG.replace('role = "orders_writer"', 'role = "orders_writer"\nrool = "x"'))
    code, out, err = run(capsys, "check", "--config", str(path), "--identity", "orders-worker", "--sql", "select 1")
    assert code == 2
    assert out == ""
    assert str(path) in err
    assert "identities[0].rool: unknown key" in err


def test_check_missing_config_file_exits_2(capsys, tmp_path):
    code, _, err = run(capsys, "check", "--config", str(tmp_path / "none.toml"), "--identity", "x", "--sql", "select 1")
    assert code == 2
    assert "none.toml" in err


def test_check_without_any_config_exits_2(capsys):
    code, _, err = run(capsys, "check", "--identity", "orders-worker", "--sql", "select 1")
    assert code == 2
    assert "--config" in err


def test_check_reads_config_path_from_gateway_config(capsys, config_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_CONFIG", str(config_path))
    code, _, _ = run(capsys, "check", "--identity", "orders-worker", "--sql", "select 1")
    assert code == 0


def test_check_needs_no_secrets(capsys, config_path):
    code, _, _ = run(capsys, "check", "--config", str(config_path), "--identity", "orders-worker", "--sql", "select 1")
    assert code == 0


def test_check_unknown_env_exits_2(capsys, config_path):
    code, _, err = run(
        capsys, "check", "--config", str(config_path), "--env", "qa", "--identity", "orders-worker", "--sql", "select 1"
    )
    assert code == 2
    assert "env.qa" in err


def test_check_without_identity_is_a_usage_error(capsys, config_path):
    with pytest.raises(SystemExit) as raised:
        main(["check", "--config", str(config_path), "--sql", "select 1"])
    assert raised.value.code == 2


SNAPSHOT = snapshot_from_rows(
    {"public": {"orders": ["id", "status"], "customers": ["id", "name"]}},
    {"public": {"lower": ["character varying"]}},
)


@pytest.fixture
def snapshot_path(tmp_path: Path) -> Path:
    path = tmp_path / "snapshot.json"
    path.write_bytes(dump_snapshot(SNAPSHOT))
    return path


def test_check_with_a_snapshot_judges_names_with_it(capsys, config_path, snapshot_path):
    code, out, err = run(
        capsys, "check", "--config", str(config_path), "--identity", "orders-worker", "--snapshot",
        str(snapshot_path), "--sql", "select lower(status) from orders",
    )
    assert code == 1
    assert "public.lower(character varying)" in json.loads(out)["reason"]
    assert err == ""


def test_check_with_a_snapshot_lists_the_columns(capsys, config_path, snapshot_path):
    code, out, _ = run(
        capsys, "check", "--config", str(config_path), "--identity", "orders-worker", "--snapshot",
        str(snapshot_path), "--sql", "select name, status from orders join customers on customers.id = orders.id",
    )
    assert code == 0
    assert json.loads(out)["columns"] == [
        "public.customers.id", "public.customers.name", "public.orders.id", "public.orders.status"]


def test_check_without_a_snapshot_says_what_it_cannot_see(capsys, config_path):
    code, _, err = run(
        capsys, "check", "--config", str(config_path), "--identity", "orders-worker", "--sql", "select 1"
    )
    assert code == 0
    assert "no catalog snapshot" in err


def test_check_with_an_unreadable_snapshot_exits_2(capsys, config_path, tmp_path):
    path = tmp_path / "snapshot.json"
    path.write_text("{not json")
    code, out, err = run(
        capsys, "check", "--config", str(config_path), "--identity", "orders-worker", "--snapshot", str(path),
        "--sql", "select 1",
    )
    assert code == 2
    assert out == ""
    assert str(path) in err


def test_check_takes_a_snapshot_or_the_database_not_both(capsys, config_path, snapshot_path):
    with pytest.raises(SystemExit) as raised:
        main(["check", "--config", str(config_path), "--identity", "orders-worker", "--snapshot",
              str(snapshot_path), "--database", "--sql", "select 1"])
    assert raised.value.code == 2


def test_check_with_an_unreachable_database_exits_2(capsys, config_path, secrets_set):
    code, out, err = run(
        capsys, "check", "--config", str(config_path), "--identity", "orders-worker", "--database", "--sql",
        "select 1",
    )
    assert code == 2
    assert out == ""
    assert "cannot read the catalog" in err
    assert DB_PASSWORD not in err


# ---------------------------------------------------------------------------- gateway token


def verify(text: str, config_path: Path):
    config = load_config(config_path)
    return TokenVerifier([SharedSecretIssuer(config.issuers[0], SecretStore())]).verify(text)


def test_token_is_accepted_by_the_verifier(capsys, config_path, secrets_set):
    code, out, _ = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "orders-worker")
    assert code == 0
    verified = verify(out.strip(), config_path)
    assert verified.issuer == "dev"
    assert verified.claims["sub"] == "orders-worker"


def test_token_prints_only_the_token(capsys, config_path, secrets_set):
    _, out, _ = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "orders-worker")
    assert out.count("\n") == 1
    assert out.strip().count(".") == 2


def test_token_carries_extra_claims_as_json_values(capsys, config_path, secrets_set):
    _, out, _ = run(
        capsys,
        "token",
        "--config",
        str(config_path),
        "--issuer",
        "dev",
        "--sub",
        "orders-worker",
        "--claim",
        "tenant=acme",
        "--claim",
        "level=3",
        "--claim",
        "beta=true",
        "--claim",
        'groups=["a"]',
    )
    claims = verify(out.strip(), config_path).claims
    assert claims["tenant"] == "acme"
    assert claims["level"] == 3
    assert claims["beta"] is True
    assert claims["groups"] == ["a"]


def test_token_expires_after_the_ttl(capsys, config_path, secrets_set):
    before = int(time.time())
    _, out, _ = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x", "--ttl", "5m")
    claims = verify(out.strip(), config_path).claims
    assert claims["exp"] - claims["iat"] == 300
    assert before + 300 <= claims["exp"] <= int(time.time()) + 300


def test_token_ttl_defaults_to_15_minutes(capsys, config_path, secrets_set):
    _, out, _ = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x")
    claims = verify(out.strip(), config_path).claims
    assert claims["exp"] - claims["iat"] == 900


def test_token_unknown_issuer_exits_2(capsys, config_path, secrets_set):
    code, out, err = run(capsys, "token", "--config", str(config_path), "--issuer", "google", "--sub", "x")
    assert code == 2
    assert out == ""
    assert '"google"' in err and "(issuers: dev)" in err


def test_token_with_missing_secret_exits_1_naming_it(capsys, config_path):
    code, out, err = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x")
    assert code == 1
    assert out == ""
    assert "issuers[0].hs256_secret" in err
    assert "CLI_JWT_SECRET" in err
    assert "Traceback" not in err


def test_token_with_bad_ttl_exits_2(capsys, config_path, secrets_set):
    code, out, err = run(
        capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x", "--ttl", "soon"
    )
    assert code == 2
    assert out == ""
    assert "--ttl" in err


def test_token_with_bad_claim_exits_2(capsys, config_path, secrets_set):
    code, out, err = run(
        capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x", "--claim", "tenant"
    )
    assert code == 2
    assert out == ""
    assert "key=value" in err


def test_token_secret_from_secrets_dir(capsys, tmp_path, monkeypatch):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "CLI_JWT_SECRET").write_text(JWT_SECRET + "\n")
    path = tmp_path / "gateway.toml"
    path.write_text('secrets_dir = "secrets"\n' + CONFIG)
    code, out, _ = run(capsys, "token", "--config", str(path), "--issuer", "dev", "--sub", "x")
    assert code == 0
    monkeypatch.setenv("CLI_JWT_SECRET", JWT_SECRET)
    assert verify(out.strip(), path).claims["sub"] == "x"


# ---------------------------------------------------------------------------- gateway config validate


def test_config_validate_prints_resolved_config_and_exits_0(capsys, config_path, secrets_set):
    code, out, _ = run(capsys, "config", "validate", "--config", str(config_path))
    assert code == 0
    shown = json.loads(out)
    assert shown["name"] == "cli-gateway"
    assert shown["server"]["port"] == 8080  # defaults are resolved
    assert shown["identities"][0]["rules"][1]["allow"] == ["insert", "update"]


def test_config_validate_shows_secrets_by_name_never_by_value(capsys, config_path, secrets_set):
    _, out, err = run(capsys, "config", "validate", "--config", str(config_path))
    shown = json.loads(out)
    assert shown["database"]["password_secret"] == "<secret CLI_DB_PASSWORD: environment>"
    assert shown["issuers"][0]["hs256_secret"] == "<secret CLI_JWT_SECRET: environment>"
    assert DB_PASSWORD not in out + err
    assert JWT_SECRET not in out + err


def test_config_validate_shows_file_secrets_as_files(capsys, tmp_path, secrets_set):
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "CLI_DB_PASSWORD").write_text("file-password-value\n")
    path = tmp_path / "gateway.toml"
    path.write_text('secrets_dir = "secrets"\n' + CONFIG)
    code, out, err = run(capsys, "config", "validate", "--config", str(path))
    assert code == 0
    shown = json.loads(out)
    assert shown["database"]["password_secret"] == "<secret CLI_DB_PASSWORD: file>"
    assert shown["secrets_dir"] == str((tmp_path / "secrets").resolve())
    assert "file-password-value" not in out + err


def test_config_validate_with_missing_secret_exits_1(capsys, config_path, monkeypatch):
    monkeypatch.setenv("CLI_DB_PASSWORD", DB_PASSWORD)
    code, out, err = run(capsys, "config", "validate", "--config", str(config_path))
    assert code == 1
    assert json.loads(out)["issuers"][0]["hs256_secret"] == "<secret CLI_JWT_SECRET: MISSING>"
    assert "issuers[0].hs256_secret" in err
    assert "CLI_JWT_SECRET" in err
    assert DB_PASSWORD not in out + err


def test_config_validate_invalid_config_exits_2(capsys, tmp_path):
    path = tmp_path / "gateway.toml"
    path.write_text(
        CONFIG.replace(
            'url = "postgresql://gateway@db.internal:5432/app"',
            'url = "postgresql://gateway:hunter2@db.internal:5432/app"',
        )
    )
    code, out, err = run(capsys, "config", "validate", "--config", str(path))
    assert code == 2
    assert out == ""
    assert str(path) in err
    assert "database.url" in err
    assert "hunter2" not in err


def test_config_validate_applies_env(capsys, config_path, secrets_set):
    code, out, _ = run(capsys, "config", "validate", "--config", str(config_path), "--env", "prod")
    assert code == 0
    assert json.loads(out)["database"]["url"] == "postgresql://gateway@db.prod:5432/app"


def test_config_validate_reads_env_from_gateway_env(capsys, config_path, secrets_set, monkeypatch):
    monkeypatch.setenv("GATEWAY_ENV", "prod")
    _, out, _ = run(capsys, "config", "validate", "--config", str(config_path))
    assert json.loads(out)["database"]["url"] == "postgresql://gateway@db.prod:5432/app"


def test_config_validate_accepts_the_dev_example(capsys, monkeypatch):
    monkeypatch.setenv("GATEWAY_DEV_DB_PASSWORD", "x")
    monkeypatch.setenv("GATEWAY_DEV_SECRET", "y" * 40)
    example = Path(__file__).resolve().parent.parent / "wrangler-like-config" / "dev.toml"
    code, _, _ = run(capsys, "config", "validate", "--config", str(example))
    assert code == 0


def test_version_prints_the_package_version(capsys):
    from gateway import __version__

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"gateway {__version__}"


def _commands(parser: argparse.ArgumentParser, path: str = "gateway") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _commands(child, f"{path} {name}")


def test_every_option_of_every_command_has_help():
    commands = dict(_commands(build_parser()))
    assert {"gateway init", "gateway dev", "gateway token", "gateway audit verify"} <= set(commands)
    undocumented = [
        f"{path} {action.option_strings or action.dest}"
        for path, parser in commands.items()
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and not action.help
    ]
    assert undocumented == []


def test_check_unknown_identity_lists_the_valid_ones(capsys, config_path):
    code, _, err = run(capsys, "check", "--config", str(config_path), "--identity", "orders", "--sql", "select 1")
    assert code == 2
    assert 'no identity named "orders"' in err and "(identities: orders-worker)" in err


def test_token_ttl_takes_the_configurations_duration_syntax(capsys, config_path, secrets_set):
    for ttl, seconds in (("1d", 86400), ("90", 90), ("2.5m", 150), ("8h", 28800)):
        code, out, _ = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x", "--ttl", ttl)
        assert code == 0, ttl
        claims = verify(out.strip(), config_path).claims
        assert claims["exp"] - claims["iat"] == seconds


def test_token_ttl_over_the_issuers_max_lifetime_is_refused_before_anything_is_read(capsys, config_path):
    # No secret is set: the lifetime is refused first, as a usage error.
    code, out, err = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x", "--ttl", "25h")
    assert (code, out) == (2, "")
    assert "max_token_lifetime (86400s)" in err
    code, _, err = run(capsys, "token", "--config", str(config_path), "--issuer", "dev", "--sub", "x", "--ttl", "0s")
    assert code == 2 and "from 1s" in err


def test_rotate_login_wait_that_is_not_a_duration_is_a_usage_error(capsys, config_path):
    code, out, err = run(capsys, "rotate-login", "--config", str(config_path), "--wait", "soon")
    assert (code, out) == (2, "")
    assert "--wait: expected" in err

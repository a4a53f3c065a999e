"""The README's command lines, as a reader copies them: the walkthrough's block run line by line
against the suite's database (its `psql` line as the suite's superuser), the `gateway token`
lines of the HTTP API and MCP sections in the folder it leaves, and the Command line table
checked against the parser (every command listed, every option it shows accepted)."""

from __future__ import annotations

import argparse
import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import LOGIN_ROLE, PgServer, Superuser, TlsFiles
from gateway.auth import SharedSecretIssuer, TokenVerifier
from gateway.cli import build_parser, main
from gateway.config import load_config

README = Path(__file__).resolve().parent.parent / "README.md"
README_URL = "postgresql://admin@db.internal:5432/app"
STARTER_ROLE = "gateway_reader"  # `gateway init`'s default, as the README runs it


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end]


def shell_blocks(section: str) -> list[list[str]]:
    return [block.strip().splitlines() for block in re.findall(r"```sh\n(.*?)```", section, flags=re.DOTALL)]


def run_line(line: str, folder: Path, capsys: pytest.CaptureFixture[str], stdin: str = "") -> str:
    """One command line in `folder`: a `gateway` command in this process (`> FILE` honoured),
    anything else in bash. Returns what it printed; fails the test on a non-zero exit."""
    if not line.startswith("gateway "):
        result = subprocess.run(["bash", "-c", line], cwd=folder, input=stdin, capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, f"{line}\n{result.stderr}"
        return result.stdout
    argv = shlex.split(line)[1:]
    target = None
    if ">" in argv:
        argv, target = argv[: argv.index(">")], argv[argv.index(">") + 1]
    code = main(argv)
    out, err = capsys.readouterr()
    assert code == 0, f"{line}\n{out}\n{err}"
    if target is not None:
        (folder / target).write_text(out)
    return out


@pytest.fixture
def starter_role_dropped(superuser: Superuser) -> Iterator[None]:
    yield
    if superuser.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", STARTER_ROLE):
        superuser.execute(f"DROP OWNED BY {STARTER_ROLE}; DROP ROLE {STARTER_ROLE}")


def test_the_walkthrough_runs_as_written(tmp_path, monkeypatch, capsys, database: PgServer, tls_files: TlsFiles,
                                         superuser, starter_role_dropped):
    (block,) = shell_blocks(readme_section("Configuration walkthrough"))
    url = f"{database.url('postgres', host='localhost')}?sslmode=verify-full&sslrootcert={tls_files.ca}"
    monkeypatch.setenv("PGPASSWORD", database.superuser_password)
    monkeypatch.chdir(tmp_path)
    ran = []
    for line in block:
        command = line.split("#")[0].strip()
        if command.startswith("export PGPASSWORD=") or command.startswith("gateway serve"):
            continue  # the password is the suite's; serving: tests/test_init.py
        if command.startswith("psql "):
            # The login exists in the suite's database, with the suite's password: only the SQL is run.
            superuser.execute((tmp_path / "roles.sql").read_text())
            continue
        stdin = f"{database.login_password}\n" if command.startswith("read ") else ""
        run_line(command.replace(README_URL, f"'{url}'"), tmp_path, capsys, stdin)
        ran.append(command.split()[1])
    assert ran == ["init", "-rs", "config", "check", "token"]
    assert f"GRANT {STARTER_ROLE} TO {LOGIN_ROLE};" in (tmp_path / "roles.sql").read_text()

    # The token lines of later sections, in the folder the walkthrough leaves.
    config = load_config(tmp_path / "gateway.toml")
    verifier = TokenVerifier([SharedSecretIssuer(config.issuer("dev"), config.secret_store())])
    token_lines = [line for line in README.read_text().splitlines() if "gateway token --config gateway.toml" in line]
    commands = [re.search(r"gateway token --config gateway\.toml[^)`]*", line).group(0) for line in token_lines]
    assert len(commands) >= 3
    for command in commands:
        claims = verifier.verify(run_line(command, tmp_path, capsys).strip()).claims
        assert claims["sub"] == re.search(r"--sub (\S+)", command).group(1)


def parser_commands(
    parser: argparse.ArgumentParser, path: str = "gateway"
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    subcommands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not subcommands:
        yield path, parser
    for action in subcommands:
        for name, child in action.choices.items():
            yield from parser_commands(child, f"{path} {name}")


def test_the_command_table_lists_every_command_with_options_it_takes():
    rows = re.findall(r"^\| `(gateway[^`]*)` \|", readme_section("Command line"), flags=re.MULTILINE)
    commands = dict(parser_commands(build_parser()))
    listed = set()
    for synopsis in rows:
        name = next((c for c in sorted(commands, key=len, reverse=True) if synopsis.startswith(c)), None)
        if synopsis == "gateway --version":
            continue
        assert name is not None, synopsis
        listed.add(name)
        options = {s for a in commands[name]._actions for s in a.option_strings}
        assert set(re.findall(r"--[a-z-]+", synopsis)) <= options, synopsis
    assert listed == set(commands)

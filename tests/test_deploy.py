"""The deployment files in deploy/: no container engine runs here, so they are checked as far
as that allows. The Kubernetes manifests against the Kubernetes API's JSON schemas
(kubernetes-validate's bundled copy), the compose file against the Compose Specification's schema
(check-jsonschema's vendored copy), HAProxy's configuration by `haproxy -c`, each gateway.toml by
`gateway config validate`; and what the files say to each other: every file they name exists,
every secret a gateway.toml names reaches its gateway, the stop grace outlasts the gateway's
drain, and the connection counts fit PgBouncer and PostgreSQL.
"""

from __future__ import annotations

import configparser
import json
import os
import secrets
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from conftest import REPO
from gateway.config import parse_duration

DEPLOY = REPO / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
COMPOSE = DEPLOY / "compose.yaml"
# The oldest Kubernetes release the manifests are written for (autoscaling/v2, policy/v1 and
# the Deployment fields used are older still).
KUBERNETES_VERSION = "1.30.0"
GATEWAY_CONFIGS = [DEPLOY / "gateway.toml", KUBERNETES / "gateway.toml"]
GATEWAY_SERVICES = ("gateway-1", "gateway-2")
BIN = Path(sys.executable).parent


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


def kustomization() -> dict[str, Any]:
    return load_yaml(KUBERNETES / "kustomization.yaml")


def kubernetes_resources() -> list[dict[str, Any]]:
    return [load_yaml(KUBERNETES / name) for name in kustomization()["resources"]]


def resource(kind: str) -> dict[str, Any]:
    (found,) = [doc for doc in kubernetes_resources() if doc["kind"] == kind]
    return found


def compose() -> dict[str, Any]:
    return load_yaml(COMPOSE)


def gateway_toml(path: Path) -> dict[str, Any]:
    return tomllib.loads(path.read_text())


def secret_names(table: Any) -> set[str]:
    """The secret names a gateway.toml holds: the values of every `*_secret` key."""
    if isinstance(table, dict):
        names = {value for key, value in table.items() if key.endswith("_secret") and isinstance(value, str)}
        return names.union(*(secret_names(value) for value in table.values()))
    if isinstance(table, list):
        return set().union(*(secret_names(item) for item in table))
    return set()


# ---------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("name", kustomization()["resources"])
def test_kubernetes_manifest_matches_the_kubernetes_schema(name):
    document = load_yaml(KUBERNETES / name)
    # strict: a misspelt or misplaced field is an error, not silently ignored by the schema
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_kustomization_names_only_files_that_exist():
    generated = [file for generator in kustomization()["configMapGenerator"] for file in generator["files"]]
    for name in [*kustomization()["resources"], *generated]:
        assert (KUBERNETES / name).is_file(), name


def test_deployment_mounts_the_config_map_it_is_generated_as():
    pod = resource("Deployment")["spec"]["template"]["spec"]
    (generator,) = kustomization()["configMapGenerator"]
    (config_volume,) = [volume for volume in pod["volumes"] if "configMap" in volume]
    assert config_volume["configMap"]["name"] == generator["name"]
    (container,) = pod["containers"]
    (mount,) = [mount for mount in container["volumeMounts"] if mount["name"] == config_volume["name"]]
    assert f"{mount['mountPath']}/gateway.toml" == container["args"][container["args"].index("--config") + 1]


def test_deployment_mounts_every_secret_its_gateway_toml_names():
    config = gateway_toml(KUBERNETES / "gateway.toml")
    pod = resource("Deployment")["spec"]["template"]["spec"]
    (secret_volume,) = [volume for volume in pod["volumes"] if "secret" in volume]
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == secret_volume["name"]]
    assert mount["mountPath"] == config["secrets_dir"]
    mounted = {item["path"] for item in secret_volume["secret"]["items"]}
    ca_file = Path(config["database"]["sslrootcert"])
    assert ca_file.parent == Path(config["secrets_dir"])
    assert mounted == secret_names(config) | {ca_file.name}


def test_deployment_probes_readiness_on_readyz_and_liveness_on_healthz():
    (container,) = resource("Deployment")["spec"]["template"]["spec"]["containers"]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = gateway_toml(KUBERNETES / "gateway.toml")["server"]["port"]
    named = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert named[container["readinessProbe"]["httpGet"]["port"]] == port
    assert named[resource("Service")["spec"]["ports"][0]["targetPort"]] == port


def test_termination_grace_outlasts_the_prestop_sleep_and_the_drain():
    pod = resource("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    drain = parse_duration(gateway_toml(KUBERNETES / "gateway.toml")["server"]["shutdown_grace"])
    # the gateway exits within a second of its grace period (README, Configuration walkthrough)
    assert pod["terminationGracePeriodSeconds"] > float(command[1]) + drain + 1


def test_autoscaler_and_disruption_budget_select_the_deployment():
    deployment = resource("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert resource("HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert resource("PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert resource("Service")["spec"]["selector"].items() <= labels.items()
    # CPU utilization is measured against the request: without one the autoscaler cannot act
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["cpu"]


# ---------------------------------------------------------------------------- compose


def test_compose_file_matches_the_compose_specification():
    result = subprocess.run(
        [BIN / "check-jsonschema", "--builtin-schema", "vendor.compose-spec", COMPOSE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_names_only_files_that_exist():
    stack = compose()
    named: list[Path] = [DEPLOY / config["file"] for config in stack["configs"].values()]
    for service in stack["services"].values():
        build = service.get("build")
        if isinstance(build, str):
            named.append(DEPLOY / build / "Dockerfile")
        elif build is not None:
            named.append(DEPLOY / build["context"] / build.get("dockerfile", "Dockerfile"))
        named += [DEPLOY / volume.split(":")[0] for volume in service.get("volumes", []) if volume.startswith(".")]
    assert len(named) >= 6
    for path in named:
        assert path.exists(), path


def test_compose_secrets_come_from_the_environment_never_from_a_file_here():
    for name, secret in compose()["secrets"].items():
        assert set(secret) == {"environment"}, name


def test_compose_gateways_get_every_secret_their_gateway_toml_names():
    stack = compose()
    (config,) = stack["configs"].values()
    toml = gateway_toml(DEPLOY / config["file"])
    for service in GATEWAY_SERVICES:
        settings = stack["services"][service]
        assert set(settings["secrets"]) >= secret_names(toml)
        (target,) = [c["target"] for c in settings["configs"]]
        assert target == settings["command"][settings["command"].index("--config") + 1]
        assert settings["hostname"] == service  # the replica's name in audit records


def test_compose_gateways_are_checked_on_readyz_and_outlast_their_drain():
    stack = compose()
    (config,) = stack["configs"].values()
    drain = parse_duration(gateway_toml(DEPLOY / config["file"])["server"]["shutdown_grace"])
    for service in GATEWAY_SERVICES:
        settings = stack["services"][service]
        assert any("/readyz" in part for part in settings["healthcheck"]["test"])
        assert parse_duration(settings["stop_grace_period"]) > drain + 1


def test_compose_connections_fit_pgbouncer_and_postgresql():
    stack = compose()
    (config,) = stack["configs"].values()
    database = gateway_toml(DEPLOY / config["file"])["database"]
    pgbouncer = configparser.ConfigParser(inline_comment_prefixes=(";",))
    pgbouncer.read(DEPLOY / "pgbouncer" / "pgbouncer.ini")
    settings = pgbouncer["pgbouncer"]
    assert settings["pool_mode"] == "transaction"
    # PgBouncer's clients: every replica's pool (README: Deployment, Database connections)
    assert len(GATEWAY_SERVICES) * database["pool_max"] <= int(settings["max_client_conn"])
    # PostgreSQL's: PgBouncer's server connections, and each replica's catalog listener, which
    # goes to listen_url (behind a transaction pooler, without it nothing listens)
    listeners = len(GATEWAY_SERVICES) if "listen_url" in database else 0
    command = stack["services"]["postgres"]["command"]
    max_connections = int(command[command.index("-c") + 1].split("=")[1])
    reserved = 3  # PostgreSQL's superuser_reserved_connections
    assert int(settings["max_db_connections"]) + listeners <= max_connections - reserved


def test_haproxy_configuration_is_valid_and_checks_readyz():
    haproxy = shutil.which("haproxy") or shutil.which("haproxy", path="/usr/sbin")  # Debian's, outside a user's PATH
    assert haproxy, "haproxy is not installed (apt-get install haproxy; .ci/run installs it)"
    result = subprocess.run([haproxy, "-c", "-f", DEPLOY / "haproxy.cfg"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stdout + result.stderr
    config = (DEPLOY / "haproxy.cfg").read_text()
    assert "option httpchk GET /readyz" in config
    for service in GATEWAY_SERVICES:
        assert f"server {service} {service}:8080" in config


# ---------------------------------------------------------------------------- gateway.toml


@pytest.mark.parametrize("path", GATEWAY_CONFIGS, ids=lambda path: str(path.relative_to(REPO)))
def test_deployed_gateway_toml_passes_config_validate(path):
    # The secrets as the environment gives them here (secrets_dir does not exist on this
    # machine), made up for the check; validate reads each one and prints only its name.
    values = {name: secrets.token_hex(16) for name in secret_names(gateway_toml(path))}
    result = subprocess.run(
        [BIN / "gateway", "config", "validate", "--config", path],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **values},
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(result.stdout)
    assert shown["database"]["password_secret"] == "<secret DB_PASSWORD: environment>"
    assert shown["server"]["workers"] == 1
    for value in values.values():
        assert value not in result.stdout + result.stderr

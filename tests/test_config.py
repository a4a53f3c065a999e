"""Configuration: `gateway.toml` -> frozen dataclasses, defaults, `[env.NAME]`
overrides, paths relative to the file, and secrets read by name, never written in the file.

Every error names the file, the key path and what was expected.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from gateway.config import (
    ConfigError,
    GatewayConfig,
    load_config,
    missing_secrets,
    parse_config,
    parse_duration,
    parse_rate,
    redacted,
)
from gateway.secrets import MissingSecret, SecretStore

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "wrangler-like-config"

MINIMAL = """
name = "orders-gateway"

[database]
url = "postgresql://gateway@db.internal:5432/app"
"""

WITH_IDENTITY = """
name = "orders-gateway"

[database]
url = "postgresql://gateway@db.internal:5432/app"
password_secret = "DB_PASSWORD"

[[issuers]]
name = "dev"
issuer = "edge-sql-gateway-dev"
audience = "edge-sql-gateway"
hs256_secret = "GATEWAY_DEV_SECRET"

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
"""


@pytest.fixture
def write(tmp_path: Path):
    """`write(text)` -> the path of a gateway.toml holding that text."""

    def write_config(text: str, name: str = "gateway.toml") -> Path:
        path = tmp_path / name
        path.write_text(text)
        return path

    return write_config


def load_error(path: Path, env: str | None = None) -> str:
    with pytest.raises(ConfigError) as raised:
        load_config(path, env=env)
    return str(raised.value)


# ---------------------------------------------------------------------------- a valid file


def test_minimal_file_loads(write):
    config = load_config(write(MINIMAL))
    assert isinstance(config, GatewayConfig)
    assert config.name == "orders-gateway"
    assert config.database.url == "postgresql://gateway@db.internal:5432/app"


def test_source_records_the_file_path(write):
    path = write(MINIMAL)
    assert load_config(path).source == str(path)


def test_server_defaults(write):
    server = load_config(write(MINIMAL)).server
    assert (server.host, server.port, server.max_body_bytes, server.cors_origins) == ("127.0.0.1", 8080, 1_048_576, ())
    assert server.max_param_depth == 64


def test_database_defaults(write):
    database = load_config(write(MINIMAL)).database
    assert database.sslmode == "verify-full"
    assert (database.pool_min, database.pool_max) == (2, 20)
    assert database.acquire_timeout == 2.0
    assert database.password_secret is None
    assert database.check_login_role is True


def test_policy_and_audit_defaults(write):
    config = load_config(write(MINIMAL))
    assert config.policy.max_statement_bytes == 32 * 1024
    assert config.policy.analysis_cache_size > 0
    assert config.audit.sink == "stdout"
    assert config.secrets_dir is None


def test_issuer_defaults(write):
    issuer = load_config(write(WITH_IDENTITY)).issuers[0]
    assert issuer.leeway == 30.0
    assert issuer.max_token_lifetime == 24 * 3600.0
    assert issuer.max_token_bytes == 16 * 1024
    assert issuer.jwks_cache == 3600.0
    assert issuer.jwks_refresh_min_interval == 30.0


def test_identity_defaults(write):
    identity = load_config(write(WITH_IDENTITY)).identities[0]
    assert identity.read_only is False
    assert identity.max_rows == 10_000
    assert identity.max_response_bytes == 10 * 1024 * 1024
    assert identity.statement_timeout == 5.0
    assert identity.rate is None
    assert identity.concurrency == 8
    assert identity.functions == ()
    assert identity.schemas == ("public",)


def test_rules_and_match_are_read(write):
    identity = load_config(write(WITH_IDENTITY)).identities[0]
    assert identity.match == {"sub": "orders-worker"}
    assert [rule.allow for rule in identity.rules] == [("select",), ("insert", "update")]
    assert identity.rules[0].tables == ("public.orders", "public.customers")


def test_configuration_is_immutable(write):
    config = load_config(write(MINIMAL))
    with pytest.raises(AttributeError):
        config.name = "other"  # type: ignore[misc]


def test_durations_and_rates_are_read_in_seconds(write):
    text = WITH_IDENTITY.replace(
        'role = "orders_writer"', 'role = "orders_writer"\nstatement_timeout = "250ms"\nrate = "600/m"'
    )
    config = load_config(write(text))
    assert config.identities[0].statement_timeout == 0.25
    assert config.identities[0].rate == 10.0


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("250ms", 0.25), ("5s", 5.0), ("2m", 120.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5), (3, 3.0), (0.5, 0.5)],
)
def test_duration_forms(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize(("text", "per_second"), [("100/s", 100.0), ("600/m", 10.0), ("36/h", 0.01)])
def test_rate_forms(text, per_second):
    assert parse_rate(text) == pytest.approx(per_second)


def test_column_rules_are_read(write):
    text = WITH_IDENTITY + '  columns = { "public.orders" = ["status", "note"] }\n'
    rule = load_config(write(text)).identities[0].rules[1]
    assert rule.columns == {"public.orders": ("status", "note")}


# ---------------------------------------------------------------------------- errors name file, key path, expectation


def test_unknown_top_level_key_is_an_error(write):
    path = write('nmae = "x"\n' + MINIMAL)
    message = load_error(path)
    assert str(path) in message
    assert "nmae: unknown key" in message
    assert "name" in message  # the keys allowed there


def test_unknown_nested_key_names_its_full_path(write):
    text = WITH_IDENTITY.replace('  allow = ["insert", "update"]', '  alow = ["insert", "update"]')
    path = write(text)
    message = load_error(path)
    assert str(path) in message
    assert "identities[0].rules[1].alow: unknown key" in message


def test_unknown_key_in_table_is_an_error(write):
    message = load_error(write(MINIMAL + 'sslmdoe = "disable"\n'))
    assert "database.sslmdoe: unknown key" in message


def test_wrong_type_is_an_error(write):
    path = write(MINIMAL + '[server]\nport = "8080"\n')
    message = load_error(path)
    assert str(path) in message
    assert "server.port: expected an integer" in message
    assert "'8080'" in message


def test_boolean_is_not_an_integer(write):
    assert "server.port: expected an integer" in load_error(write(MINIMAL + "[server]\nport = true\n"))


def test_negative_integer_is_an_error(write):
    assert "database.pool_max: expected a non-negative integer" in load_error(write(MINIMAL + "pool_max = -1\n"))


def test_port_out_of_range_is_an_error(write):
    assert "server.port" in load_error(write(MINIMAL + "[server]\nport = 70000\n"))


@pytest.mark.parametrize("depth", [0, 255])
def test_max_param_depth_out_of_range_is_an_error(write, depth):
    message = load_error(write(MINIMAL + f"[server]\nmax_param_depth = {depth}\n"))
    assert "server.max_param_depth: expected 1 to 254" in message


def test_wrong_type_for_boolean_is_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"', 'role = "orders_writer"\nread_only = "yes"')
    assert "identities[0].read_only: expected true or false" in load_error(write(text))


def test_table_expected_but_string_given(write):
    assert "server: expected a table" in load_error(write('server = "x"\n' + MINIMAL))


def test_array_expected_but_string_given(write):
    assert "server.cors_origins: expected an array" in load_error(write(MINIMAL + '[server]\ncors_origins = "x"\n'))


def test_bad_duration_is_an_error(write):
    path = write(MINIMAL + 'acquire_timeout = "2 seconds"\n')
    message = load_error(path)
    assert str(path) in message
    assert "database.acquire_timeout: expected a duration" in message
    assert "'2 seconds'" in message


def test_negative_duration_is_an_error(write):
    assert "database.acquire_timeout" in load_error(write(MINIMAL + "acquire_timeout = -1\n"))


def test_infinite_duration_is_an_error(write):
    assert "database.acquire_timeout" in load_error(write(MINIMAL + "acquire_timeout = inf\n"))


def test_bad_rate_is_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"', 'role = "orders_writer"\nrate = "100 per second"')
    message = load_error(write(text))
    assert "identities[0].rate: expected a rate" in message
    assert '"100/s"' in message


def test_bad_sslmode_literal_is_an_error(write):
    path = write(MINIMAL + 'sslmode = "verify_full"\n')
    message = load_error(path)
    assert str(path) in message
    assert "database.sslmode: expected one of" in message
    assert "'verify-full'" in message


def test_bad_statement_kind_is_an_error(write):
    text = WITH_IDENTITY.replace('allow = ["select"]', 'allow = ["selct"]')
    assert "identities[0].rules[0].allow[0]: expected one of" in load_error(write(text))


def test_missing_required_key_is_an_error(write):
    path = write('[database]\nurl = "postgresql://gateway@db/app"\n')
    message = load_error(path)
    assert str(path) in message
    assert "name: required key is missing" in message


def test_missing_database_url_is_an_error(write):
    assert "database.url: required key is missing" in load_error(write('name = "x"\n[database]\npool_min = 1\n'))


def test_missing_database_table_is_an_error(write):
    assert "database: required key is missing" in load_error(write('name = "x"\n'))


def test_missing_identity_role_is_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"\n', "")
    assert "identities[0].role: required key is missing" in load_error(write(text))


def test_missing_rule_tables_is_an_error(write):
    text = WITH_IDENTITY.replace('  tables = ["public.orders"]\n', "")
    assert "identities[0].rules[1].tables: required key is missing" in load_error(write(text))


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://gateway:hunter2@db.internal:5432/app",
        "postgres://gateway:hunter2@db.internal/app",
        "postgresql://gateway@db.internal/app?password=hunter2",
        "postgresql://gateway@db.internal/app?sslmode=require&PASSWORD=hunter2",
    ],
)
def test_password_in_database_url_is_an_error(write, url):
    path = write(f'name = "x"\n[database]\nurl = "{url}"\n')
    message = load_error(path)
    assert str(path) in message
    assert "database.url: must not contain a password" in message
    assert "hunter2" not in message


def test_database_url_must_be_postgresql(write):
    assert "database.url: expected a postgresql:// URL" in load_error(
        write('name = "x"\n[database]\nurl = "mysql://db/app"\n')
    )


def test_unparsable_database_url_is_an_error(write):
    message = load_error(write('name = "x"\n[database]\nurl = "postgresql://gateway@[db/app"\n'))
    assert "database.url: expected a valid postgresql:// URL" in message


def test_pool_min_above_pool_max_is_an_error(write):
    assert "database.pool_min" in load_error(write(MINIMAL + "pool_min = 5\npool_max = 2\n"))


def test_a_stream_may_stall_for_10_seconds_by_default(write):
    assert load_config(write(MINIMAL)).server.stream_idle_timeout == 10.0


@pytest.mark.parametrize("value", ['"0s"', "0"])
def test_stream_idle_timeout_of_zero_is_an_error(write, value):
    text = MINIMAL.replace("[database]", f"[server]\nstream_idle_timeout = {value}\n\n[database]")
    assert "server.stream_idle_timeout: expected a duration above zero" in load_error(write(text))


def test_stream_idle_timeout_must_end_a_stall_before_postgresql_ends_the_transaction(write):
    text = MINIMAL.replace("[database]", '[server]\nstream_idle_timeout = "30s"\n\n[database]')
    assert "server.stream_idle_timeout: expected less than database.idle_in_transaction_timeout" in load_error(
        write(text)
    )
    unbounded = load_config(write(text + "idle_in_transaction_timeout = 0\n"))  # PostgreSQL's 0: never
    assert unbounded.server.stream_idle_timeout == 30.0


SECOND_IDENTITY = """
[[identities]]
name = "reports"
issuer = "dev"
match = { sub = "reports" }
role = "orders_reader"
"""


def test_an_identity_may_hold_half_the_pool_by_default(write):
    config = load_config(write(WITH_IDENTITY + SECOND_IDENTITY))
    assert [config.connection_share(identity) for identity in config.identities] == [10, 10]


def test_the_only_identity_may_hold_the_whole_pool(write):
    config = load_config(write(WITH_IDENTITY))
    assert config.connection_share(config.identities[0]) == 20


def test_a_one_connection_pool_is_shared_by_every_identity(write):
    secret = 'password_secret = "DB_PASSWORD"\n'
    one = WITH_IDENTITY.replace(secret, secret + "pool_min = 1\npool_max = 1\n")
    config = load_config(write(one + SECOND_IDENTITY))
    assert [config.connection_share(identity) for identity in config.identities] == [1, 1]


def test_max_connections_sets_an_identitys_share(write):
    config = load_config(write(WITH_IDENTITY + SECOND_IDENTITY + "max_connections = 3\n"))
    assert [config.connection_share(identity) for identity in config.identities] == [10, 3]


def test_max_connections_of_zero_is_an_error(write):
    text = WITH_IDENTITY + SECOND_IDENTITY + "max_connections = 0\n"
    assert "identities[1].max_connections: expected at least 1" in load_error(write(text))


def test_identity_naming_unknown_issuer_is_an_error(write):
    path = write(WITH_IDENTITY.replace('issuer = "dev"', 'issuer = "google"'))
    message = load_error(path)
    assert str(path) in message
    assert 'identities[0].issuer: expected the name of an issuer, got "google"' in message


@pytest.mark.parametrize("role", ["orders writer", "orders;drop", 'x"y', "1role", ""])
def test_bad_role_name_is_an_error(write, role):
    text = WITH_IDENTITY.replace('role = "orders_writer"', f"role = '{role}'")
    assert "identities[0].role: expected a plain role name" in load_error(write(text))


def test_bad_schema_name_is_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"', 'role = "orders_writer"\nschemas = ["public; x"]')
    assert "identities[0].schemas[0]: expected a plain schema name" in load_error(write(text))


@pytest.mark.parametrize("pattern", ["orders", "public.orders.id", "*", '\\"public\\".orders', "public .orders", ""])
def test_bad_table_pattern_is_an_error(write, pattern):
    text = WITH_IDENTITY.replace('tables = ["public.orders"]', f'tables = ["{pattern}"]')
    message = load_error(write(text))
    assert "identities[0].rules[1].tables[0]" in message
    assert '"schema.table" or "schema.*"' in message


def test_schema_wildcard_is_a_table_pattern(write):
    text = WITH_IDENTITY.replace('tables = ["public.orders"]', 'tables = ["public.*"]')
    assert load_config(write(text)).identities[0].rules[1].tables == ("public.*",)


def test_column_rule_for_a_wildcard_is_an_error(write):
    text = WITH_IDENTITY + '  columns = { "public.*" = ["id"] }\n'
    assert "identities[0].rules[1].columns.public.*" in load_error(write(text))


def test_duplicate_identity_names_are_an_error(write):
    duplicate = WITH_IDENTITY[WITH_IDENTITY.index("[[identities]]") :]
    message = load_error(write(WITH_IDENTITY + duplicate))
    assert 'identities[1].name: duplicate identity name "orders-worker"' in message


def test_duplicate_issuer_names_are_an_error(write):
    second = '\n[[issuers]]\nname = "dev"\nissuer = "other"\naudience = "a"\nhs256_secret = "OTHER_SECRET"\n'
    assert 'issuers[1].name: duplicate issuer name "dev"' in load_error(write(WITH_IDENTITY + second))


def test_two_issuers_with_the_same_iss_are_an_error(write):
    second = '\n[[issuers]]\nname = "dev2"\nissuer = "edge-sql-gateway-dev"\naudience = "a"\nhs256_secret = "S2"\n'
    assert "issuers[1].issuer: duplicate issuer" in load_error(write(WITH_IDENTITY + second))


def test_secret_setting_holding_a_value_is_an_error(write):
    text = WITH_IDENTITY.replace('password_secret = "DB_PASSWORD"', 'password_secret = "hunter2 is my password"')
    message = load_error(write(text))
    assert "database.password_secret: expected the name of a secret" in message


def test_secret_name_that_is_a_path_is_an_error(write):
    text = WITH_IDENTITY.replace('hs256_secret = "GATEWAY_DEV_SECRET"', 'hs256_secret = "../../etc/passwd"')
    assert "issuers[0].hs256_secret: expected the name of a secret" in load_error(write(text))


def oidc(**settings: str) -> str:
    """WITH_IDENTITY with its issuer made an OIDC one (Google's, no hs256_secret), plus
    `settings` written as TOML values."""
    lines = "".join(f"\n{key} = {value}" for key, value in settings.items())
    return WITH_IDENTITY.replace('issuer = "edge-sql-gateway-dev"', 'issuer = "https://accounts.google.com"').replace(
        '\nhs256_secret = "GATEWAY_DEV_SECRET"', lines
    )


@pytest.mark.parametrize(
    "uri",
    [
        "http://keys.example.com/jwks",
        "http://localhost.example.com/jwks",
        "http://127.example.com/jwks",
        "ftp://keys.example.com/jwks",
        "http://[keys.example.com/jwks",
    ],
)
def test_plain_http_jwks_uri_is_an_error_off_loopback(write, uri):
    assert "issuers[0].jwks_uri: expected an https:// URL" in load_error(write(oidc(jwks_uri=f'"{uri}"')))


@pytest.mark.parametrize(
    "uri",
    [
        "https://keys.example.com/jwks",
        "http://localhost:8080/jwks",
        "http://127.0.0.1:9000/jwks",
        "http://[::1]:9000/jwks",
    ],
)
def test_https_or_loopback_jwks_uri_is_accepted(write, uri):
    assert load_config(write(oidc(jwks_uri=f'"{uri}"'))).issuers[0].jwks_uri == uri


def test_oidc_issuer_loads_with_its_defaults(write):
    issuer = load_config(write(oidc())).issuers[0]
    assert issuer.is_oidc and issuer.hs256_secret is None
    assert issuer.algorithms == ("RS256",)
    assert (issuer.jwks_uri, issuer.jwks_ca) == (None, None)
    assert (issuer.jwks_max_stale, issuer.jwks_fetch_timeout) == (24 * 3600.0, 5.0)


def test_shared_secret_issuer_defaults_to_hs256(write):
    assert load_config(write(WITH_IDENTITY)).issuers[0].algorithms == ("HS256",)


@pytest.mark.parametrize("algorithms", ['["RS256", "PS256", "ES256", "EdDSA"]', '["ES256"]'])
def test_oidc_issuer_takes_asymmetric_algorithms(write, algorithms):
    assert load_config(write(oidc(algorithms=algorithms))).issuers[0].algorithms == tuple(json.loads(algorithms))


@pytest.mark.parametrize("algorithm", ["HS256", "HS512", "none", "RS384", "rs256"])
def test_oidc_issuer_refuses_other_algorithms(write, algorithm):
    message = load_error(write(oidc(algorithms=f'["RS256", "{algorithm}"]')))
    assert "issuers[0].algorithms[1]: expected one of RS256, PS256, ES256, EdDSA for an OIDC issuer" in message


def test_empty_algorithm_list_is_an_error(write):
    assert "issuers[0].algorithms: expected at least one algorithm" in load_error(write(oidc(algorithms="[]")))


@pytest.mark.parametrize("issuer", ["http://accounts.example.com", "accounts.google.com", "http://127.evil.dev"])
def test_oidc_issuer_must_be_https_off_loopback(write, issuer):
    text = oidc().replace('issuer = "https://accounts.google.com"', f'issuer = "{issuer}"')
    assert "issuers[0].issuer: expected an https:// URL" in load_error(write(text))


def test_oidc_issuer_on_loopback_may_be_plain_http(write):
    text = oidc().replace('issuer = "https://accounts.google.com"', 'issuer = "http://127.0.0.1:8000/idp"')
    assert load_config(write(text)).issuers[0].issuer == "http://127.0.0.1:8000/idp"


@pytest.mark.parametrize("setting", ['jwks_uri = "https://keys.example.com/jwks"', 'jwks_ca = "ca.pem"'])
def test_oidc_setting_on_a_shared_secret_issuer_is_an_error(write, setting):
    secret = 'hs256_secret = "GATEWAY_DEV_SECRET"'
    text = WITH_IDENTITY.replace(secret, f"{secret}\n{setting}")
    assert "only for OIDC issuers (this issuer has hs256_secret)" in load_error(write(text))


def test_jwks_ca_is_relative_to_the_file(write, tmp_path):
    assert load_config(write(oidc(jwks_ca='"certs/ca.pem"'))).issuers[0].jwks_ca == str(tmp_path / "certs" / "ca.pem")


def test_zero_jwks_cache_is_an_error(write):
    assert "issuers[0].jwks_cache: expected a duration above zero" in load_error(write(oidc(jwks_cache='"0s"')))


def test_an_identity_without_a_statement_timeout_is_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"', 'role = "orders_writer"\nstatement_timeout = "0s"')
    assert "identities[0].statement_timeout: expected a duration above zero" in load_error(write(text))


ROLE_CLAIM = 'role_claim = "tenant_role"\nroles = ["tenant_a", "tenant_b"]'


def test_role_claim_with_an_allowlist_replaces_role(write):
    identity = load_config(write(WITH_IDENTITY.replace('role = "orders_writer"', ROLE_CLAIM))).identities[0]
    assert (identity.role, identity.role_claim, identity.roles) == (None, "tenant_role", ("tenant_a", "tenant_b"))
    assert identity.database_roles() == ("tenant_a", "tenant_b")


def test_role_claim_without_roles_is_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"', 'role_claim = "tenant_role"')
    assert "identities[0].roles: expected the roles role_claim may name (an allowlist)" in load_error(write(text))


def test_role_and_role_claim_together_are_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"', f'role = "orders_writer"\n{ROLE_CLAIM}')
    assert "identities[0].role: expected either role or role_claim, not both" in load_error(write(text))


def test_roles_without_role_claim_is_an_error(write):
    text = WITH_IDENTITY.replace('role = "orders_writer"', 'role = "orders_writer"\nroles = ["tenant_a"]')
    assert "identities[0].roles: only with role_claim" in load_error(write(text))


@pytest.mark.parametrize("role", ["tenant a", "x;drop", ""])
def test_bad_role_in_the_allowlist_is_an_error(write, role):
    text = WITH_IDENTITY.replace('role = "orders_writer"', f'role_claim = "r"\nroles = ["tenant_a", "{role}"]')
    assert "identities[0].roles: expected a plain role name" in load_error(write(text))


def test_identity_roles_cover_every_allowlisted_role(write):
    second = """
[[identities]]
name = "tenants"
issuer = "dev"
role_claim = "tenant_role"
roles = ["tenant_b", "orders_writer"]
"""
    config = load_config(write(WITH_IDENTITY + second))
    assert config.identity_roles() == ["orders_writer", "tenant_b"]


def test_invalid_toml_names_the_file(write):
    path = write("name = \n")
    message = load_error(path)
    assert str(path) in message
    assert "not valid TOML" in message


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "nowhere.toml"
    message = load_error(path)
    assert str(path) in message
    assert "not found" in message


def test_parse_config_names_its_source():
    with pytest.raises(ConfigError, match=r"^inline: nmae: unknown key"):
        parse_config({"nmae": "x"}, source="inline")


# ---------------------------------------------------------------------------- [env.NAME] overrides

ENVIRONMENTS = (
    WITH_IDENTITY
    + """
[server]
host = "0.0.0.0"
port = 8080
cors_origins = ["https://a.example", "https://b.example"]

[env.prod.server]
port = 9090
cors_origins = ["https://c.example"]

[env.prod.database]
url = "postgresql://gateway@db.prod:5432/app"

[env.staging]
name = "orders-gateway-staging"
"""
)


def test_without_env_the_base_values_hold(write):
    config = load_config(write(ENVIRONMENTS))
    assert config.server.port == 8080
    assert config.name == "orders-gateway"


def test_env_tables_merge_key_by_key(write):
    config = load_config(write(ENVIRONMENTS), env="prod")
    assert config.server.port == 9090
    assert config.server.host == "0.0.0.0"  # kept from the base table
    assert config.database.url == "postgresql://gateway@db.prod:5432/app"
    assert config.database.password_secret == "DB_PASSWORD"


def test_env_arrays_replace_whole(write):
    config = load_config(write(ENVIRONMENTS), env="prod")
    assert config.server.cors_origins == ("https://c.example",)


def test_env_array_of_tables_replaces_whole(write):
    text = (
        ENVIRONMENTS
        + """
[[env.staging.identities]]
name = "staging-worker"
issuer = "dev"
role = "staging_writer"
"""
    )
    config = load_config(write(text), env="staging")
    assert [identity.name for identity in config.identities] == ["staging-worker"]
    assert config.identities[0].rules == ()


def test_env_top_level_value_overrides(write):
    assert load_config(write(ENVIRONMENTS), env="staging").name == "orders-gateway-staging"


def test_unknown_env_name_is_an_error(write):
    path = write(ENVIRONMENTS)
    message = load_error(path, env="production")
    assert str(path) in message
    assert "env.production: no such environment" in message
    assert "prod" in message and "staging" in message


def test_env_name_without_any_env_tables_is_an_error(write):
    assert "env.prod: no such environment (defined: none)" in load_error(write(MINIMAL), env="prod")


def test_unknown_key_inside_selected_env_is_an_error(write):
    text = ENVIRONMENTS + "\n[env.qa.server]\nprot = 1\n"
    assert "server.prot: unknown key" in load_error(write(text), env="qa")


def test_env_must_be_tables(write):
    assert "env: expected tables [env.NAME]" in load_error(
        write(MINIMAL.replace('name = "orders-gateway"', 'name = "x"\nenv = 1'))
    )


# ---------------------------------------------------------------------------- paths relative to the file


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    folder = tmp_path / "conf"
    folder.mkdir()
    path = folder / "gateway.toml"
    path.write_text(MINIMAL + 'sslrootcert = "certs/ca.pem"\nsslcert = "../client.pem"\n')
    database = load_config(path).database
    assert database.sslrootcert == str((folder / "certs" / "ca.pem").resolve())
    assert database.sslcert == str((tmp_path / "client.pem").resolve())


def test_relative_paths_do_not_depend_on_the_working_directory(tmp_path, monkeypatch):
    folder = tmp_path / "conf"
    folder.mkdir()
    (folder / "gateway.toml").write_text('secrets_dir = "secrets"\n' + MINIMAL)
    monkeypatch.chdir(tmp_path)
    config = load_config(Path("conf/gateway.toml"))
    assert config.secrets_dir == str((folder / "secrets").resolve())


def test_absolute_paths_are_kept(write, tmp_path):
    absolute = tmp_path / "elsewhere" / "ca.pem"
    database = load_config(write(MINIMAL + f'sslrootcert = "{absolute}"\n')).database
    assert database.sslrootcert == str(absolute)


def test_audit_file_sink_is_relative_to_the_config_folder(write, tmp_path):
    config = load_config(write(MINIMAL + '[audit]\nsink = "logs/audit.jsonl"\n'))
    assert config.audit.sink == str((tmp_path / "logs" / "audit.jsonl").resolve())


@pytest.mark.parametrize("sink", ["stdout", "off"])
def test_audit_stream_sinks_are_not_paths(write, sink):
    assert load_config(write(MINIMAL + f'[audit]\nsink = "{sink}"\n')).audit.sink == sink


# ---------------------------------------------------------------------------- secrets


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "secrets"
    folder.mkdir()
    return folder


def test_secret_from_environment(monkeypatch):
    monkeypatch.setenv("GW_TEST_SECRET", "from-env")
    assert SecretStore().get("GW_TEST_SECRET") == "from-env"


def test_secret_from_secrets_dir_file(secrets_dir, monkeypatch):
    monkeypatch.delenv("GW_TEST_SECRET", raising=False)
    (secrets_dir / "GW_TEST_SECRET").write_text("from-file")
    assert SecretStore(secrets_dir).get("GW_TEST_SECRET") == "from-file"


def test_secret_file_wins_over_environment(secrets_dir, monkeypatch):
    monkeypatch.setenv("GW_TEST_SECRET", "from-env")
    (secrets_dir / "GW_TEST_SECRET").write_text("from-file")
    assert SecretStore(secrets_dir).get("GW_TEST_SECRET") == "from-file"


def test_environment_is_used_when_secrets_dir_lacks_the_file(secrets_dir, monkeypatch):
    monkeypatch.setenv("GW_TEST_SECRET", "from-env")
    assert SecretStore(secrets_dir).get("GW_TEST_SECRET") == "from-env"


def test_trailing_newline_of_secret_file_is_stripped(secrets_dir):
    (secrets_dir / "GW_TEST_SECRET").write_text("  value with spaces  \n")
    assert SecretStore(secrets_dir).get("GW_TEST_SECRET") == "  value with spaces  "


def test_trailing_crlf_of_secret_file_is_stripped(secrets_dir):
    (secrets_dir / "GW_TEST_SECRET").write_bytes(b"value\r\n")
    assert SecretStore(secrets_dir).get("GW_TEST_SECRET") == "value"


def test_secret_file_is_re_read_after_it_changes(secrets_dir):
    path = secrets_dir / "GW_TEST_SECRET"
    path.write_text("first-value\n")
    store = SecretStore(secrets_dir)
    assert store.get("GW_TEST_SECRET") == "first-value"
    path.write_text("second-value\n")  # same size: only the mtime tells them apart
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    assert store.get("GW_TEST_SECRET") == "second-value"


def test_secret_file_of_another_size_is_re_read(secrets_dir):
    path = secrets_dir / "GW_TEST_SECRET"
    path.write_text("short")
    store = SecretStore(secrets_dir)
    assert store.get("GW_TEST_SECRET") == "short"
    path.write_text("a-longer-rotated-value")
    assert store.get("GW_TEST_SECRET") == "a-longer-rotated-value"


def test_missing_secret_raises_with_its_name(secrets_dir, monkeypatch):
    monkeypatch.delenv("GW_TEST_SECRET", raising=False)
    with pytest.raises(MissingSecret, match="GW_TEST_SECRET"):
        SecretStore(secrets_dir).get("GW_TEST_SECRET")


def test_empty_environment_secret_counts_as_missing(monkeypatch):
    monkeypatch.setenv("GW_TEST_SECRET", "")
    with pytest.raises(MissingSecret, match="empty"):
        SecretStore().get("GW_TEST_SECRET")


def test_empty_secret_file_counts_as_missing(secrets_dir, monkeypatch):
    monkeypatch.setenv("GW_TEST_SECRET", "from-env")
    (secrets_dir / "GW_TEST_SECRET").write_text("\n")
    with pytest.raises(MissingSecret, match="empty"):
        SecretStore(secrets_dir).get("GW_TEST_SECRET")


def test_file_path_is_given_for_file_secrets_only(secrets_dir, monkeypatch):
    monkeypatch.setenv("GW_ENV_ONLY", "x")
    (secrets_dir / "GW_TEST_SECRET").write_text("x")
    store = SecretStore(secrets_dir)
    assert store.file_path("GW_TEST_SECRET") == secrets_dir / "GW_TEST_SECRET"
    assert store.file_path("GW_ENV_ONLY") is None


def test_describe_says_where_a_secret_comes_from(secrets_dir, monkeypatch):
    monkeypatch.setenv("GW_ENV_ONLY", "env-value")
    monkeypatch.delenv("GW_NOWHERE", raising=False)
    (secrets_dir / "GW_FILE_ONLY").write_text("file-value")
    store = SecretStore(secrets_dir)
    assert store.describe("GW_FILE_ONLY") == "<secret GW_FILE_ONLY: file>"
    assert store.describe("GW_ENV_ONLY") == "<secret GW_ENV_ONLY: environment>"
    assert store.describe("GW_NOWHERE") == "<secret GW_NOWHERE: MISSING>"


def test_config_secret_store_reads_its_secrets_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "DB_PASSWORD").write_text("pw\n")
    path = tmp_path / "gateway.toml"
    path.write_text('secrets_dir = "run"\n' + MINIMAL + 'password_secret = "DB_PASSWORD"\n')
    config = load_config(path)
    assert config.secret_store().get("DB_PASSWORD") == "pw"


def test_missing_secrets_lists_each_unreadable_secret(write, monkeypatch):
    monkeypatch.delenv("DB_PASSWORD", raising=False)
    monkeypatch.delenv("GATEWAY_DEV_SECRET", raising=False)
    path = write(WITH_IDENTITY)
    config = load_config(path)
    problems = missing_secrets(config, config.secret_store())
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}: database.password_secret:")
    assert "DB_PASSWORD" in problems[0]
    assert problems[1].startswith(f"{path}: issuers[0].hs256_secret:")
    assert "GATEWAY_DEV_SECRET" in problems[1]


def test_missing_secrets_is_empty_when_all_are_set(write, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "pw")
    monkeypatch.setenv("GATEWAY_DEV_SECRET", "s" * 32)
    config = load_config(write(WITH_IDENTITY))
    assert missing_secrets(config, config.secret_store()) == []


def test_redacted_never_contains_a_secret_value(write, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "db-password-value-1234")
    monkeypatch.setenv("GATEWAY_DEV_SECRET", "jwt-signing-secret-value-5678")
    config = load_config(write(WITH_IDENTITY))
    text = json.dumps(redacted(config, config.secret_store()))
    assert "db-password-value-1234" not in text
    assert "jwt-signing-secret-value-5678" not in text


def test_redacted_shows_each_secret_by_name_and_source(write, secrets_dir, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "pw")
    monkeypatch.delenv("GATEWAY_DEV_SECRET", raising=False)
    config = load_config(write(WITH_IDENTITY))
    shown = redacted(config, config.secret_store())
    assert shown["database"]["password_secret"] == "<secret DB_PASSWORD: environment>"
    assert shown["issuers"][0]["hs256_secret"] == "<secret GATEWAY_DEV_SECRET: MISSING>"


def test_redacted_is_plain_data_with_the_resolved_values(write):
    config = load_config(write(WITH_IDENTITY))
    shown = redacted(config, config.secret_store())
    json.dumps(shown)  # plain data
    assert shown["name"] == "orders-gateway"
    assert shown["identities"][0]["rules"][0]["tables"] == ["public.orders", "public.customers"]
    assert "source" not in shown


# ---------------------------------------------------------------------------- the examples shipped


def test_dev_example_is_a_valid_configuration():
    config = load_config(EXAMPLES / "dev.toml")
    assert config.issuers and config.identities


def test_dev_assets_configuration_is_valid():
    config = load_config(REPO / "gateway" / "dev_assets" / "gateway.dev.toml")
    assert config.issuers and config.identities


def test_gateway_example_is_a_valid_configuration():
    config = load_config(EXAMPLES / "gateway.toml")
    assert config.name


# The Worker project's wrangler.toml configures Cloudflare, not the gateway.
GATEWAY_EXAMPLES = sorted(path for path in EXAMPLES.glob("**/*.toml") if path.name != "wrangler.toml")


@pytest.mark.parametrize("path", GATEWAY_EXAMPLES, ids=lambda path: path.name)
def test_every_example_toml_is_a_valid_configuration(path):
    text = path.read_text()
    environments = [
        line.split(".", 1)[1].split("]")[0].split(".")[0] for line in text.splitlines() if line.startswith("[env.")
    ]
    load_config(path)
    for environment in sorted(set(environments)):
        load_config(path, env=environment)


# ---------------------------------------------------------------------------- [credentials]

CREDENTIALS = """
[credentials]
admin_url = "postgresql://gateway_admin@db.internal:5432/app"
admin_password_secret = "ADMIN_PASSWORD"
public_host = "db.example.com"
"""


def test_credentials_are_off_unless_configured(write):
    assert load_config(write(WITH_IDENTITY)).credentials is None


def test_credentials_defaults(write):
    credentials = load_config(write(WITH_IDENTITY + CREDENTIALS)).credentials
    assert credentials.admin_url == "postgresql://gateway_admin@db.internal:5432/app"
    assert (credentials.public_host, credentials.public_port, credentials.sslmode) == ("db.example.com", 5432,
                                                                                       "verify-full")
    assert (credentials.reap_interval, credentials.admin_timeout) == (60.0, 5.0)
    assert credentials.owned_objects == "reassign"


def test_password_in_admin_url_is_an_error(write):
    text = CREDENTIALS.replace("gateway_admin@", "gateway_admin:hunter2@")
    message = load_error(write(WITH_IDENTITY + text))
    assert "credentials.admin_url: must not contain a password; name it with admin_password_secret" in message


def test_admin_url_must_be_postgresql(write):
    text = CREDENTIALS.replace("postgresql://gateway_admin", "mysql://gateway_admin")
    assert "credentials.admin_url: expected a postgresql:// URL" in load_error(write(WITH_IDENTITY + text))


def test_admin_login_must_not_be_the_query_login(write):
    text = CREDENTIALS.replace("gateway_admin@", "gateway@")
    assert "credentials.admin_url: expected a login of its own" in load_error(write(WITH_IDENTITY + text))


def test_public_host_is_required(write):
    text = CREDENTIALS.replace('public_host = "db.example.com"\n', "")
    assert "credentials.public_host: required key is missing" in load_error(write(WITH_IDENTITY + text))


def test_reap_interval_of_zero_is_an_error(write):
    message = load_error(write(WITH_IDENTITY + CREDENTIALS + "reap_interval = 0\n"))
    assert "credentials.reap_interval: expected a duration above zero" in message


def test_unknown_owned_objects_setting_is_an_error(write):
    message = load_error(write(WITH_IDENTITY + CREDENTIALS + 'owned_objects = "keep"\n'))
    assert "credentials.owned_objects: expected one of 'reassign', 'drop'" in message


def test_a_missing_admin_password_is_reported_by_its_key(write, monkeypatch):
    monkeypatch.setenv("DB_PASSWORD", "pw")
    monkeypatch.setenv("GATEWAY_DEV_SECRET", "s" * 32)
    monkeypatch.delenv("ADMIN_PASSWORD", raising=False)
    path = write(WITH_IDENTITY + CREDENTIALS)
    config = load_config(path)
    problems = missing_secrets(config, config.secret_store())
    assert len(problems) == 1 and problems[0].startswith(f"{path}: credentials.admin_password_secret:")


def test_the_admin_password_is_redacted(write, monkeypatch):
    monkeypatch.setenv("ADMIN_PASSWORD", "admin-password-value-9012")
    config = load_config(write(WITH_IDENTITY + CREDENTIALS))
    shown = redacted(config, config.secret_store())
    assert "admin-password-value-9012" not in json.dumps(shown)
    assert shown["credentials"]["admin_password_secret"] == config.secret_store().describe("ADMIN_PASSWORD")

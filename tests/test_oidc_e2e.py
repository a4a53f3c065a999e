"""OIDC end to end (issue 4): a `gateway serve` process verifying the tokens callers' own
platforms issue — a Google service account's ID token, GitHub Actions OIDC, Okta and Auth0
access tokens, a Kubernetes service-account token — served by a loopback provider, mapped
to identities, a role taken from a claim, the claims reaching row-level security, keys
rotated mid-run, and an issuer that is down when the gateway starts.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from conftest import Api, GatewayProcess, PgServer, eventually
from gateway.config import parse_config
from gateway.server import preflight
from oidc_provider import (
    AUDIENCE,
    OidcProvider,
    ProviderKey,
    TestIssuer,
    auth0_access_token_claims,
    github_actions_claims,
    google_id_token_claims,
    hand_made,
    kubernetes_service_account_claims,
    okta_access_token_claims,
)

SERVICE_ACCOUNT = "orders@shop-prod.iam.gserviceaccount.com"
ROLE_CLAIM = "https://gateway.test/db_role"  # Auth0 wants custom claims namespaced by a URL
MAIN = "refs/heads/main"
MIGRATE = f"octo-org/shop/.github/workflows/migrate.yml@{MAIN}"

# Appended to the suite's test configuration (which has the HS256 "dev" issuer).
OIDC_IDENTITIES = """
[[issuers]]
name = "google"
issuer = "{google}"
audience = "{audience}"
jwks_refresh_min_interval = "0s"

[[issuers]]
name = "github"
issuer = "{github}"
audience = "{audience}"
max_token_lifetime = "1h"

[[issuers]]
name = "okta"
issuer = "{okta}"
audience = "{audience}"

[[issuers]]
name = "auth0"
issuer = "{auth0}"
audience = "{audience}"
algorithms = ["RS256", "ES256"]

[[issuers]]
name = "kubernetes"
issuer = "{kubernetes}"
audience = "{audience}"
jwks_uri = "{kubernetes_jwks}"

[[identities]]
name = "orders-function"
issuer = "google"
match = {{ email = "{service_account}", email_verified = true }}
role = "demo_reader"
functions = ["current_setting"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

[[identities]]
name = "migrations-ci"
issuer = "github"
match = {{ repository = "octo-org/shop", ref = "{main}", job_workflow_ref = "{migrate}" }}
role = "demo_writer"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

[[identities]]
name = "prefect-flows"
issuer = "okta"
match = {{ cid = "0oa8prefect", scp = "orders.read" }}
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.orders"]

[[identities]]
name = "tenant-api"
issuer = "auth0"
match = {{ permissions = "read:notes" }}
role_claim = "{role_claim}"
roles = ["tenant_acme", "tenant_globex"]

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.tenant_notes"]

[[identities]]
name = "etl-loader"
issuer = "kubernetes"
match = {{ "kubernetes.io.namespace" = "etl", "kubernetes.io.serviceaccount.name" = "loader" }}
role = "demo_reader"

  [[identities.rules]]
  allow = ["select"]
  tables = ["public.customers"]
"""

# A role per tenant, rows by current_user: the PostgREST pattern for role_claim.
TENANT_SCHEMA = """
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenant_acme') THEN CREATE ROLE tenant_acme NOLOGIN; END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'tenant_globex') THEN CREATE ROLE tenant_globex NOLOGIN; END IF;
END $$;
DROP TABLE IF EXISTS public.tenant_notes;
CREATE TABLE public.tenant_notes (tenant text NOT NULL DEFAULT current_user, body text NOT NULL);
INSERT INTO public.tenant_notes VALUES ('tenant_acme', 'acme plans'), ('tenant_globex', 'globex plans');
ALTER TABLE public.tenant_notes ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_tenant ON public.tenant_notes USING (tenant = current_user);
GRANT USAGE ON SCHEMA public TO tenant_acme, tenant_globex;
GRANT SELECT ON public.tenant_notes TO tenant_acme, tenant_globex;
GRANT tenant_acme, tenant_globex TO gateway_login;
"""


@pytest.fixture(scope="module")
def tenant_roles(database: PgServer) -> None:
    database.execute(TENANT_SCHEMA)


@pytest.fixture(scope="module")
def platforms() -> Iterator[OidcProvider]:
    """One loopback provider standing in for Google, GitHub, Okta, Auth0 and a Kubernetes
    cluster (Auth0 writes its issuer with a trailing slash and here signs with ES256)."""
    provider = OidcProvider()
    for name in ("google", "github", "okta", "kubernetes"):
        provider.add_issuer(name)
    provider.add_issuer("auth0", "ES256", suffix="/")
    yield provider.start()
    provider.stop()


def oidc_config(platforms: OidcProvider, **overrides: Any) -> str:
    issuers = platforms.issuers
    settings = {
        **{name: issuer.url for name, issuer in issuers.items()},
        "kubernetes_jwks": issuers["kubernetes"].jwks_uri,
        "audience": AUDIENCE,
        "service_account": SERVICE_ACCOUNT,
        "main": MAIN,
        "migrate": MIGRATE,
        "role_claim": ROLE_CLAIM,
        **overrides,
    }
    return OIDC_IDENTITIES.format(**settings)


@pytest.fixture(scope="module")
def oidc_gateway(
    launch_gateway: Callable[..., GatewayProcess],
    gateway_config: Callable[..., str],
    platforms: OidcProvider,
    tenant_roles: None,
) -> GatewayProcess:
    return launch_gateway(config_text=gateway_config(oidc_config(platforms)))


@pytest.fixture(scope="module")
def call(oidc_gateway: GatewayProcess, http: httpx.Client) -> Callable[[str], Api]:
    """`call(token)` -> an Api calling the OIDC gateway with that bearer token."""
    return lambda token: Api(oidc_gateway.url, token, http)


@pytest.fixture(scope="module")
def issuers(platforms: OidcProvider) -> dict[str, TestIssuer]:
    return platforms.issuers


def whoami(api: Api) -> dict[str, Any]:
    response = api.get("/v1/whoami")
    assert response.status_code == 200, response.text
    return response.json()


def rows(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    return response.json()["rows"]


def assert_no_identity(response: httpx.Response) -> None:
    assert response.status_code == 403, response.text
    assert response.json()["error"]["code"] == "no_identity"


# ---------------------------------------------------------------------------- readiness


def test_readyz_reports_every_issuers_keys_loaded(call):
    response = call("").get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["issuers"] == {
        "dev": "ok", "google": "ok", "github": "ok", "okta": "ok", "auth0": "ok", "kubernetes": "ok"
    }


# ---------------------------------------------------------------------------- real-world token shapes


def test_key_fetches_are_counted_in_metrics(call):
    metrics = call("").get("/metrics").text
    assert 'gateway_jwks_refreshes_total{issuer="kubernetes",outcome="ok"}' in metrics


def test_google_service_account_id_token_maps_to_its_identity(call, issuers):
    token = issuers["google"].mint(**google_id_token_claims(SERVICE_ACCOUNT))
    me = whoami(call(token))
    assert (me["identity"], me["role"], me["issuer"]) == ("orders-function", "demo_reader", "google")
    assert me["subject"].isdigit()


def test_google_token_of_another_service_account_is_no_identity(call, issuers):
    token = issuers["google"].mint(**google_id_token_claims("intruder@other-project.iam.gserviceaccount.com"))
    assert_no_identity(call(token).get("/v1/whoami"))


def test_github_actions_token_from_main_runs_the_migrations_identity(call, issuers):
    token = issuers["github"].mint(**github_actions_claims("octo-org/shop", MAIN, "migrate.yml"))
    assert whoami(call(token))["identity"] == "migrations-ci"


def test_github_actions_token_from_a_pull_request_is_no_identity(call, issuers):
    token = issuers["github"].mint(**github_actions_claims("octo-org/shop", "refs/pull/7/merge", "migrate.yml"))
    assert_no_identity(call(token).get("/v1/whoami"))


def test_github_actions_token_from_a_fork_is_no_identity(call, issuers):
    token = issuers["github"].mint(**github_actions_claims("mallory/shop", MAIN, "migrate.yml"))
    assert_no_identity(call(token).get("/v1/whoami"))


def test_okta_access_token_maps_by_client_and_scope(call, issuers):
    token = issuers["okta"].mint(**okta_access_token_claims("0oa8prefect", ["orders.read", "orders.write"]))
    assert whoami(call(token))["identity"] == "prefect-flows"


def test_okta_access_token_without_the_scope_is_no_identity(call, issuers):
    token = issuers["okta"].mint(**okta_access_token_claims("0oa8prefect", ["profile"]))
    assert_no_identity(call(token).get("/v1/whoami"))


def test_kubernetes_service_account_token_maps_by_namespace_and_account(call, issuers):
    token = issuers["kubernetes"].mint(**kubernetes_service_account_claims("etl", "loader"))
    me = whoami(call(token))
    assert (me["identity"], me["subject"]) == ("etl-loader", "system:serviceaccount:etl:loader")


def test_kubernetes_token_of_another_namespace_is_no_identity(call, issuers):
    token = issuers["kubernetes"].mint(**kubernetes_service_account_claims("web", "loader"))
    assert_no_identity(call(token).get("/v1/whoami"))


# ---------------------------------------------------------------------------- claims in the database


def test_verified_claims_are_request_jwt_claims(call, issuers):
    token = issuers["google"].mint(**google_id_token_claims(SERVICE_ACCOUNT))
    sql = "select current_setting('request.jwt.claims', true)::jsonb ->> 'email' as email"
    assert rows(call(token).query(sql)) == [{"email": SERVICE_ACCOUNT}]


def test_row_level_security_keys_on_a_claim_of_the_token(call, issuers):
    claims = okta_access_token_claims("0oa8prefect", ["orders.read"], tenant="globex")
    found = rows(call(issuers["okta"].mint(**claims)).query("select tenant, note from orders"))
    assert {row["tenant"] for row in found} == {"globex"}
    assert {"tenant": "globex", "note": "globex only"} in found


@pytest.mark.parametrize("tenant", ["tenant_acme", "tenant_globex"])
def test_role_claim_picks_the_role_and_its_rows(call, issuers, tenant):
    api = call(issuers["auth0"].mint(**auth0_access_token_claims("m2m", ["read:notes"], **{ROLE_CLAIM: tenant})))
    assert whoami(api)["role"] == tenant
    assert rows(api.query("select tenant from tenant_notes")) == [{"tenant": tenant}]


@pytest.mark.parametrize("role", ["demo_writer", "postgres", "gateway_login", ["tenant_acme"]])
def test_role_claim_outside_the_allowlist_is_no_identity(call, issuers, role):
    token = issuers["auth0"].mint(**auth0_access_token_claims("m2m", ["read:notes"], **{ROLE_CLAIM: role}))
    assert_no_identity(call(token).query("select tenant from tenant_notes"))


def test_login_role_check_covers_every_allowlisted_role(gateway_config, platforms, database, monkeypatch):
    text = gateway_config(oidc_config(platforms)).replace(
        'roles = ["tenant_acme", "tenant_globex"]', 'roles = ["tenant_acme", "tenant_initech"]'
    )
    monkeypatch.setenv("TEST_DB_PASSWORD", database.login_password)
    problem = asyncio.run(preflight(parse_config(tomllib.loads(text))))
    assert problem is not None and 'is not a member of identity role "tenant_initech"' in problem


# ---------------------------------------------------------------------------- keys and attacks over HTTP


def test_rotated_key_is_fetched_once_mid_run(call, issuers, platforms):
    google = issuers["google"]
    fetched = platforms.hits["google/jwks"]
    google.rotate()
    for _ in range(3):
        assert whoami(call(google.mint(**google_id_token_claims(SERVICE_ACCOUNT))))["identity"] == "orders-function"
    assert platforms.hits["google/jwks"] == fetched + 1


@pytest.fixture(scope="module")
def forgeries(issuers: dict[str, TestIssuer], attacker: OidcProvider) -> dict[str, str]:
    google, evil = issuers["google"], attacker.issuers["attacker"]
    now = int(time.time())
    claims = google.claims(**google_id_token_claims(SERVICE_ACCOUNT))
    return {
        "unsigned": hand_made({"alg": "none", "kid": google.signing.kid}, claims),
        "jku": evil.signing.sign(claims, {"jku": evil.jwks_uri}),
        "x5u": evil.signing.sign(claims, {"x5u": evil.jwks_uri}),
        "another-key": ProviderKey.make("RS256").sign(claims, {"kid": google.signing.kid}),
        "expired": google.mint(**google_id_token_claims(SERVICE_ACCOUNT), iat=now - 900, exp=now - 300),
    }


REASONS = {
    "unsigned": "algorithm_not_allowed",
    "jku": "untrusted_key_header",
    "x5u": "untrusted_key_header",
    "another-key": "bad_signature",
    "expired": "expired",
}


@pytest.mark.parametrize("kind", sorted(REASONS))
def test_forged_token_is_401_with_its_reason_and_nothing_fetched(call, forgeries, attacker, kind):
    response = call(forgeries[kind]).get("/v1/whoami")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == (
        f'Bearer error="invalid_token", error_description="{REASONS[kind]}"'
    )
    assert response.json()["error"]["code"] == "unauthenticated"
    assert sum(attacker.hits.values()) == 0


# ---------------------------------------------------------------------------- an issuer down at start

LATE_ISSUER = """
[[issuers]]
name = "late"
issuer = "{url}"
audience = "{audience}"
algorithms = ["ES256"]
jwks_refresh_min_interval = "1s"

[[identities]]
name = "late-caller"
issuer = "late"
match = {{ sub = "late-caller" }}
role = "demo_reader"
"""


def test_issuer_down_at_start_is_not_ready_until_it_comes_up(launch_gateway, gateway_config, oidc_provider, http):
    late = oidc_provider.add_issuer("late", "ES256")
    gateway = launch_gateway(config_text=gateway_config(LATE_ISSUER.format(url=late.url, audience=AUDIENCE)))
    api = Api(gateway.url, late.mint(sub="late-caller"), http)
    ready = api.get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"] == {"database": "ok", "issuers": {"dev": "ok", "late": "keys_not_loaded"}}
    refused = api.get("/v1/whoami")
    assert refused.status_code == 401 and "issuer_unavailable" in refused.headers["www-authenticate"]

    oidc_provider.start()  # the background retry finds it: no request needed
    eventually(lambda: api.get("/readyz").status_code == 200, "the late issuer's keys to load")
    assert whoami(api)["identity"] == "late-caller"
    assert oidc_provider.hits["late/jwks"] == 1


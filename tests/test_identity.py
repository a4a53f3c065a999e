"""Identity resolution: the token's issuer selects the candidates, tried in file
order; the first whose `match` holds wins; no match is a 403 `no_identity`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.identity import Identity, IdentityResolver, claim_at, matches

CONFIG: dict[str, Any] = {
    "name": "identity-tests",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [
        {"name": "dev", "issuer": "https://dev.test", "audience": "gateway", "hs256_secret": "DEV_SECRET"},
        {"name": "partner", "issuer": "https://partner.test", "audience": "gateway", "hs256_secret": "PARTNER_SECRET"},
    ],
    "identities": [
        {"name": "orders-worker", "issuer": "dev", "role": "orders_writer", "match": {"sub": "orders-worker"}},
        {"name": "ops", "issuer": "dev", "role": "ops", "match": {"realm.team": "ops"}},
        {"name": "admins", "issuer": "dev", "role": "admin", "match": {"groups": "admins"}},
        {"name": "support", "issuer": "dev", "role": "support", "match": {"email": ["ann@x.test", "bob@x.test"]}},
        {"name": "flagged", "issuer": "dev", "role": "flagged", "match": {"level": 1}},
        {"name": "verified", "issuer": "dev", "role": "verified", "match": {"email_verified": True}},
        {
            "name": "tenant-reader",
            "issuer": "dev",
            "role": "tenant_reader",
            "match": {"tenant": "acme", "scope": "read"},
        },
        {"name": "acme-any", "issuer": "dev", "role": "acme", "match": {"tenant": "acme"}},
        {"name": "partner-worker", "issuer": "partner", "role": "partner", "match": {"sub": "orders-worker"}},
        {"name": "partner-anyone", "issuer": "partner", "role": "partner_any"},
    ],
}


@pytest.fixture(scope="module")
def resolver() -> IdentityResolver:
    return IdentityResolver.from_config(parse_config(CONFIG))


def resolve(resolver: IdentityResolver, issuer: str = "dev", **claims: Any) -> str:
    return resolver.resolve(issuer, claims).name


def no_identity(resolver: IdentityResolver, issuer: str = "dev", **claims: Any) -> GatewayError:
    with pytest.raises(GatewayError) as raised:
        resolver.resolve(issuer, claims)
    return raised.value


def test_claim_equality_matches(resolver):
    assert resolve(resolver, sub="orders-worker") == "orders-worker"


def test_list_in_config_means_any_of(resolver):
    assert resolve(resolver, email="ann@x.test") == "support"
    assert resolve(resolver, email="bob@x.test") == "support"


def test_value_outside_the_config_list_does_not_match(resolver):
    assert no_identity(resolver, email="eve@x.test").code == "no_identity"


def test_claim_that_is_a_list_matches_when_it_contains_the_value(resolver):
    assert resolve(resolver, groups=["staff", "admins"]) == "admins"


def test_claim_list_without_the_value_does_not_match(resolver):
    assert no_identity(resolver, groups=["staff"]).status == 403


def test_dotted_key_reaches_a_nested_claim(resolver):
    assert resolve(resolver, realm={"team": "ops"}) == "ops"


def test_exact_top_level_key_with_a_dot_wins_over_nesting():
    assert claim_at({"realm.team": "a", "realm": {"team": "b"}}, "realm.team") == "a"


def test_dotted_key_through_a_non_table_does_not_match(resolver):
    assert no_identity(resolver, realm="ops").code == "no_identity"


def test_match_is_by_exact_type_true_is_not_1(resolver):
    assert no_identity(resolver, level=True).code == "no_identity"


def test_match_is_by_exact_type_1_is_not_true(resolver):
    assert no_identity(resolver, email_verified=1).code == "no_identity"


def test_match_is_by_exact_type_string_is_not_number(resolver):
    assert no_identity(resolver, level="1").code == "no_identity"


def test_number_matches_number(resolver):
    assert resolve(resolver, level=1) == "flagged"


def test_boolean_matches_boolean(resolver):
    assert resolve(resolver, email_verified=True) == "verified"


def test_every_match_key_must_hold(resolver):
    assert resolve(resolver, tenant="acme", scope="read") == "tenant-reader"


def test_first_match_in_file_order_wins(resolver):
    # Both tenant-reader and acme-any hold; tenant-reader comes first in the file.
    assert resolve(resolver, tenant="acme", scope="read", sub="someone") == "tenant-reader"


def test_later_identity_matches_when_earlier_ones_do_not(resolver):
    assert resolve(resolver, tenant="acme", scope="write") == "acme-any"


def test_earlier_identity_wins_over_later_for_same_claims(resolver):
    assert resolve(resolver, sub="orders-worker", tenant="acme") == "orders-worker"


def test_identities_of_another_issuer_never_match(resolver):
    assert resolve(resolver, "partner", sub="orders-worker") == "partner-worker"


def test_token_of_one_issuer_never_gets_another_issuers_identity(resolver):
    assert resolve(resolver, "dev", sub="someone-else", tenant="acme") == "acme-any"
    assert resolve(resolver, "partner", sub="someone-else", tenant="acme") == "partner-anyone"


def test_empty_match_matches_every_token_of_its_issuer(resolver):
    assert resolve(resolver, "partner", sub="anyone") == "partner-anyone"


def test_issuer_without_identities_gives_no_identity():
    resolver = IdentityResolver([])
    with pytest.raises(GatewayError) as raised:
        resolver.resolve("dev", {"sub": "x"})
    assert raised.value.code == "no_identity"


def test_no_match_is_403_no_identity_naming_the_issuer(resolver):
    error = no_identity(resolver, sub="stranger")
    assert error.status == 403
    assert error.code == "no_identity"
    assert '"dev"' in error.message


def test_missing_claim_does_not_match(resolver):
    assert no_identity(resolver).code == "no_identity"


def test_identity_carries_role_rules_and_limits_from_config():
    config = parse_config(
        CONFIG
        | {
            "identities": [
                {
                    "name": "limited",
                    "issuer": "dev",
                    "role": "reader",
                    "read_only": True,
                    "max_rows": 5,
                    "statement_timeout": "250ms",
                    "rate": "10/s",
                    "concurrency": 2,
                    "functions": ["my_schema.safe_fn"],
                    "schemas": ["app", "public"],
                    "rules": [{"allow": ["select"], "tables": ["app.orders"]}],
                }
            ]
        }
    )
    identity = Identity.from_config(config.identities[0])
    assert (identity.role, identity.read_only, identity.schemas) == ("reader", True, ("app", "public"))
    assert identity.functions == frozenset({"my_schema.safe_fn"})
    assert identity.rules[0].tables == ("app.orders",)
    assert identity.limits() == {
        "readOnly": True,
        "maxRows": 5,
        "maxResponseBytes": 10 * 1024 * 1024,
        "statementTimeoutMs": 250,
        "ratePerSecond": 10.0,
        "concurrency": 2,
    }


def test_identity_is_found_by_name(resolver):
    assert resolver.by_name("ops").role == "ops"
    assert resolver.by_name("nobody") is None


def test_dotted_key_reaches_into_a_claim_whose_name_has_dots():
    claims = {"kubernetes.io": {"namespace": "etl", "serviceaccount": {"name": "loader"}}}
    assert claim_at(claims, "kubernetes.io.namespace") == "etl"
    assert claim_at(claims, "kubernetes.io.serviceaccount.name") == "loader"


def test_dotted_key_through_a_missing_prefix_does_not_match():
    assert not matches({"kubernetes.io.namespace": "etl"}, {"kubernetes": {"io": "x"}})


# ---------------------------------------------------------------------------- role from a claim

TENANTS: dict[str, Any] = CONFIG | {
    "identities": [
        {
            "name": "tenant-api",
            "issuer": "dev",
            "match": {"aud_group": "api"},
            "role_claim": "app.db_role",
            "roles": ["tenant_a", "tenant_b"],
        },
        {"name": "fallback", "issuer": "dev", "role": "anonymous_reader", "match": {"aud_group": "api"}},
    ]
}


@pytest.fixture(scope="module")
def tenants() -> IdentityResolver:
    return IdentityResolver.from_config(parse_config(TENANTS))


@pytest.mark.parametrize("role", ["tenant_a", "tenant_b"])
def test_role_claim_names_the_role_among_the_allowed(tenants, role):
    identity = tenants.resolve("dev", {"aud_group": "api", "app": {"db_role": role}})
    assert (identity.name, identity.role) == ("tenant-api", role)


@pytest.mark.parametrize("role", ["postgres", "tenant_c", ["tenant_a"], 1, None])
def test_role_claim_outside_the_allowlist_does_not_match(tenants, role):
    identity = tenants.resolve("dev", {"aud_group": "api", "app": {"db_role": role}})
    assert identity.name == "fallback"


def test_missing_role_claim_does_not_match(tenants):
    assert tenants.resolve("dev", {"aud_group": "api"}).name == "fallback"


def test_role_claim_outside_the_allowlist_with_no_other_identity_is_no_identity():
    only = TENANTS | {"identities": TENANTS["identities"][:1]}
    with pytest.raises(GatewayError) as raised:
        IdentityResolver.from_config(parse_config(only)).resolve("dev", {"aud_group": "api", "app": {"db_role": "x"}})
    assert (raised.value.status, raised.value.code) == (403, "no_identity")


def test_identities_for_each_role_share_everything_but_the_role(tenants):
    a = tenants.resolve("dev", {"aud_group": "api", "app": {"db_role": "tenant_a"}})
    b = tenants.resolve("dev", {"aud_group": "api", "app": {"db_role": "tenant_b"}})
    assert dataclasses.replace(a, role="x") == dataclasses.replace(b, role="x")


def test_identity_with_a_role_claim_is_found_by_name(tenants):
    assert tenants.by_name("tenant-api").name == "tenant-api"

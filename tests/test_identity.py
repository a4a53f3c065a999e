"""Identity resolution (SPEC §2): the token's issuer selects the candidates, tried in file
order; the first whose `match` holds wins; no match is a 403 `no_identity`.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import parse_config
from gateway.errors import GatewayError
from gateway.identity import Identity, IdentityResolver, claim_at

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

"""What an identity may read of the catalog (`gateway.policy.readable`), which the MCP
endpoint's `list_tables` and `describe_table` show: covered relations only, narrowed columns
only, keys only where everything they name may be read.

No database: the snapshot is built here. `test_mcp.py` asks a real gateway.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.catalog import snapshot_from_rows
from gateway.config import parse_config
from gateway.identity import Identity
from gateway.policy.readable import readable_relation, readable_relations


def shape(columns: list[str], primary_key: list[str], foreign_keys: list[Any] = ()) -> dict[str, Any]:
    return {
        "kind": "table",
        "columns": [[column, "text", column != "id"] for column in columns],
        "primaryKey": primary_key,
        "foreignKeys": list(foreign_keys),
    }


CUSTOMERS = ["id", "name", "email"]
ORDERS = ["id", "customer_id", "total"]
CATALOG = snapshot_from_rows(
    {
        "pg_catalog": {"pg_class": ["oid"]},
        "public": {"customers": CUSTOMERS, "orders": ORDERS, "payments": ["id", "secret"]},
        "app": {"orders": ["id"]},
    },
    {"pg_catalog": {}},
    shapes={
        "public": {
            "customers": shape(CUSTOMERS, ["id"]),
            "orders": shape(ORDERS, ["id"], [[["customer_id"], ["public", "customers"], ["id"]]]),
            "payments": shape(["id", "secret"], ["id"]),
        },
        "app": {"orders": shape(["id"], ["id"])},
    },
)
IDENTITIES = {
    config.name: Identity.from_config(config)
    for config in parse_config(
        {
            "name": "readable-tests",
            "database": {"url": "postgresql://gateway@localhost/app"},
            "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
            "identities": [
                {
                    "name": "clerk",
                    "issuer": "dev",
                    "role": "app_reader",
                    "rules": [
                        {"allow": ["select"], "tables": ["public.orders", "public.customers"],
                         "columns": {"public.customers": ["name", "email"]}},
                        {"allow": ["insert"], "tables": ["public.payments"]},
                    ],
                },
                {
                    "name": "everything",
                    "issuer": "dev",
                    "role": "app_reader",
                    "schemas": ["app", "public"],
                    "rules": [{"allow": ["select"], "tables": ["public.*", "app.*"]}],
                },
            ],
        }
    ).identities
}


def names(identity: str) -> list[str]:
    return [relation.name for relation in readable_relations(IDENTITIES[identity], CATALOG)]


def test_only_the_relations_select_rules_cover_are_readable():
    assert names("clerk") == ["public.customers", "public.orders"]  # not payments: insert only
    assert names("everything") == ["app.orders", "public.customers", "public.orders", "public.payments"]


def test_a_narrowed_relation_shows_only_its_columns_and_no_key_naming_others():
    customers = readable_relation(IDENTITIES["clerk"], CATALOG, "public.customers")
    assert customers is not None
    assert [column.name for column in customers.shape.columns] == ["name", "email"]
    assert customers.shape.primary_key == ()


def test_a_foreign_key_is_shown_only_when_the_columns_it_references_are_readable():
    clerk_orders = readable_relation(IDENTITIES["clerk"], CATALOG, "public.orders")
    everything_orders = readable_relation(IDENTITIES["everything"], CATALOG, "public.orders")
    assert clerk_orders is not None and everything_orders is not None
    assert clerk_orders.shape.foreign_keys == ()  # customers.id is not the clerk's to read
    assert [key.references for key in everything_orders.shape.foreign_keys] == [("public", "customers")]


@pytest.mark.parametrize("name", ["public.payments", "payments", "public.nowhere", "pg_catalog.pg_class", "pg_class"])
def test_a_relation_the_identity_may_not_read_is_not_found_like_one_that_does_not_exist(name):
    assert readable_relation(IDENTITIES["clerk"], CATALOG, name) is None


def test_an_unqualified_name_resolves_along_the_identity_search_path():
    orders = readable_relation(IDENTITIES["everything"], CATALOG, "orders")
    assert orders is not None and orders.name == "app.orders"

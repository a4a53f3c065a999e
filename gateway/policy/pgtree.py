"""Reading PostgreSQL's parse tree in the JSON form pglast gives it (`parse_sql_json`):
nodes are `{"NodeName": {field: value}}`, lists are lists, names are lists of `String`s.

Owns only the walking and the name lists; what the nodes mean is `gateway.policy.analysis`
and `gateway.policy.columns`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def entries(node: object, stop: frozenset[str] = frozenset()) -> Iterator[tuple[dict, str, Any]]:
    """(object, key, value) for every field of every object in the tree, depth first; a value
    under a key in `stop` is given but not entered."""
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list):
            stack.extend(current)
            continue
        if not isinstance(current, dict):
            continue
        for key, value in current.items():
            yield current, key, value
            if key not in stop and isinstance(value, dict | list):
                stack.append(value)


def names(items: list[dict] | None) -> tuple[str, ...]:
    """The strings of a name list: `[{"String": {"sval": "pg_catalog"}}, ...]`."""
    return tuple(item["String"]["sval"] for item in items or [] if "String" in item)

"""Reading PostgreSQL's parse tree in the JSON form pglast gives it (`parse_sql_json`):
nodes are `{"NodeName": {field: value}}`, lists are lists, names are lists of `String`s.

Owns only the walking and the name lists; what the nodes mean is `gateway.policy.analysis`
and `gateway.policy.columns`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

# Nodes that hold only scalars and names (`src/include/nodes/value.h`, `A_Const`,
# `ColumnRef`, `ParamRef`, `A_Star` in `parsenodes.h`): no node of any other kind is ever
# below one, so a walk looking for other nodes stops at them. Close to half the objects of
# a typical tree are in them.
LEAF_NODES = frozenset(
    {"String", "Integer", "Float", "Boolean", "BitString", "A_Const", "ColumnRef", "ParamRef", "A_Star"}
)


def entries(node: object, keys: frozenset[str], stop: frozenset[str] = frozenset()) -> Iterator[tuple[dict, str, Any]]:
    """(object, key, value) for every field named in `keys` of every object in the tree, depth
    first; a value under a key in `stop` is given but not entered.

    The hot loop of analysis (a statement's tree has hundreds of fields, a few of them
    wanted): filtering happens here, not in the caller, and containers are told by exact
    type, which is all orjson makes."""
    stack = [node]
    pop, push = stack.pop, stack.append
    while stack:
        current = pop()
        if type(current) is dict:
            for key, value in current.items():
                if key in keys:
                    yield current, key, value
                if (type(value) is dict or type(value) is list) and key not in stop:
                    push(value)
        elif type(current) is list:
            stack.extend(current)


def names(items: list[dict] | None) -> tuple[str, ...]:
    """The strings of a name list: `[{"String": {"sval": "pg_catalog"}}, ...]`."""
    return tuple(item["String"]["sval"] for item in items or [] if "String" in item)

"""The names PostgreSQL gives the output columns of a query: `FigureColname` in
`src/backend/parser/parse_target.c`, rule for rule.

A select-list entry without `AS` is named after its expression: a column reference after
its last field, a function call after the function, a cast after its argument when the
argument has a name of its own (else after the type), `NULLIF`, `COALESCE`, `ARRAY[...]`,
`ROW(...)`, `EXISTS`, SQL value functions and the SQL/XML and SQL/JSON constructors after
their keyword, a scalar subquery after its own first column, a `CASE` after its `ELSE`
branch when that has a name; anything else is `?column?`. These names decide what a bare
column name in an enclosing query, ORDER BY, GROUP BY or DISTINCT ON refers to, so a name
that differs from PostgreSQL's is how a hidden column is read under an allowed one.
Where the name cannot be known here (a scalar subquery whose first column comes from
`*`), the answer is None, and callers treat it as possibly any name.
"""

from __future__ import annotations

from collections.abc import Callable

from gateway.policy.pgtree import names

UNNAMED = "?column?"  # what PostgreSQL calls a column it cannot name

# FigureColnameInternal's strengths: 2 for a name of the expression's own, 1 for a fallback
# (a cast's type, CASE), 0 for none.
OWN, FALLBACK, NONE = 2, 1, 0

# Expression nodes PostgreSQL names after a keyword, "like a regular function".
KEYWORD_NAMES = {
    "A_ArrayExpr": "array",
    "RowExpr": "row",
    "CoalesceExpr": "coalesce",
    "GroupingFunc": "grouping",
    "MergeSupportFunc": "merge_action",
    "XmlSerialize": "xmlserialize",
    "JsonParseExpr": "json",
    "JsonScalarExpr": "json_scalar",
    "JsonSerializeExpr": "json_serialize",
    "JsonObjectConstructor": "json_object",
    "JsonArrayConstructor": "json_array",
    "JsonArrayQueryConstructor": "json_array",
    "JsonObjectAgg": "json_objectagg",
    "JsonArrayAgg": "json_arrayagg",
}
SUBLINK_NAMES = {"EXISTS_SUBLINK": "exists", "ARRAY_SUBLINK": "array"}
MINMAX_NAMES = {"IS_GREATEST": "greatest", "IS_LEAST": "least"}

# The output names of a scalar subquery (keyed by the id of its parse node); None where a
# name is not known.
SubqueryOutputs = Callable[[dict], tuple[str | None, ...] | None]


def _string_fields(items: list[dict] | None) -> list[str]:
    return [item["String"]["sval"] for item in items or [] if "String" in item]


def figure_name(node: dict | None, subquery_outputs: SubqueryOutputs) -> str | None:
    """The output name of an unnamed select-list (or RETURNING) entry, or None when it cannot
    be known here."""
    found, strength = _figure(node, subquery_outputs)
    return found if strength else UNNAMED


def _figure(node: dict | None, subquery_outputs: SubqueryOutputs) -> tuple[str | None, int]:
    if not node:
        return UNNAMED, NONE
    ((kind, body),) = node.items()
    if kind == "ColumnRef":
        fields = _string_fields(body.get("fields"))  # the last name, ignoring `*`
        return (fields[-1], OWN) if fields else (UNNAMED, NONE)
    if kind == "A_Indirection":
        fields = _string_fields(body.get("indirection"))  # ignoring subscripts and `*`
        return (fields[-1], OWN) if fields else _figure(body.get("arg"), subquery_outputs)
    if kind == "FuncCall":
        return names(body["funcname"])[-1], OWN
    if kind == "A_Expr":
        return ("nullif", OWN) if body.get("kind") == "AEXPR_NULLIF" else (UNNAMED, NONE)
    if kind == "TypeCast":
        found, strength = _figure(body.get("arg"), subquery_outputs)
        if strength <= FALLBACK and body.get("typeName"):
            return names(body["typeName"]["names"])[-1], FALLBACK
        return found, strength
    if kind == "CollateClause":
        return _figure(body.get("arg"), subquery_outputs)
    if kind == "SubLink":
        return _sublink(body, subquery_outputs)
    if kind == "CaseExpr":
        found, strength = _figure(body.get("defresult"), subquery_outputs)
        return (found, strength) if strength > FALLBACK else ("case", FALLBACK)
    if kind in KEYWORD_NAMES:
        return KEYWORD_NAMES[kind], OWN
    if kind == "MinMaxExpr" and body.get("op") in MINMAX_NAMES:
        return MINMAX_NAMES[body["op"]], OWN
    if kind == "SQLValueFunction":
        return sql_value_function_name(body), OWN
    if kind == "XmlExpr" and body.get("op") != "IS_DOCUMENT":
        return body["op"].removeprefix("IS_").lower(), OWN
    if kind == "JsonFuncExpr":
        return body["op"].removesuffix("_OP").lower(), OWN
    return UNNAMED, NONE


def _sublink(body: dict, subquery_outputs: SubqueryOutputs) -> tuple[str | None, int]:
    link = body.get("subLinkType")
    if link in SUBLINK_NAMES:
        return SUBLINK_NAMES[link], OWN
    if link != "EXPR_SUBLINK":
        return UNNAMED, NONE  # ANY, ALL, row comparisons: operators, unnamed
    # A scalar subquery is named after its single output column, whatever that is called.
    outputs = subquery_outputs(body["subselect"])
    return (outputs[0] if outputs else None), OWN


def sql_value_function_name(body: dict) -> str:
    """`SVFOP_CURRENT_TIMESTAMP_N` -> `current_timestamp`: the keyword the caller wrote."""
    return body["op"].removeprefix("SVFOP_").removesuffix("_N").lower()

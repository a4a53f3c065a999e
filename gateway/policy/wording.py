"""Words a denial reason uses for the parsers' internal names.

Owns the mapping from PostgreSQL's parse-node names (`VariableSetStmt`, `OBJECT_SEQUENCE`,
`AT_AddIdentity`) and sqlglot's expression classes (`GeneratedAsIdentityColumnConstraint`)
to the SQL a developer wrote. A reason never shows an internal class name: it is nothing a
caller can act on, and it changes with the parsers' versions. What is denied, and why, is
decided elsewhere.
"""

from __future__ import annotations

import re

# Readable names for the utility statements callers try most (PostgreSQL's root nodes), where
# the node's name in words is not the SQL (`CheckPointStmt` -> CHECKPOINT).
STATEMENT_TITLES = {
    "VariableSetStmt": "SET and RESET",
    "VariableShowStmt": "SHOW",
    "TransactionStmt": "transaction control (BEGIN, COMMIT, ROLLBACK, SAVEPOINT)",
    "CheckPointStmt": "CHECKPOINT",
    "ClosePortalStmt": "CLOSE",
    "FetchStmt": "FETCH and MOVE",
    "CreateTrigStmt": "CREATE TRIGGER",
    "CreateSeqStmt": "CREATE SEQUENCE",
    "VacuumStmt": "VACUUM and ANALYZE",
    "SecLabelStmt": "SECURITY LABEL",
    "CompositeTypeStmt": "CREATE TYPE ... AS (composite)",
    "CreateRangeStmt": "CREATE TYPE ... AS RANGE",
    "DefineStmt": "CREATE AGGREGATE, OPERATOR, TYPE or COLLATION",
    "CreateFunctionStmt": "CREATE FUNCTION and CREATE PROCEDURE",
}

# PostgreSQL's other parse nodes a reason may have to name, as SQL writes them.
NODE_TITLES = {
    "RangeTableFunc": "XMLTABLE",
    "JsonTable": "JSON_TABLE",
    "RangeSubselect": "a subquery in FROM",
    "RangeFunction": "a function in FROM",
    "RangeVar": "a table name",
    "JoinExpr": "a join",
    "RangeTableSample": "TABLESAMPLE",
}

# sqlglot classes whose words are not what SQL calls them.
SYNTAX_TITLES = {
    "Command": "a statement the analyser reads only as an opaque command",
    "ComputedColumnConstraint": "a generated column (GENERATED ALWAYS AS (...) STORED)",
    "GeneratedAsRowColumnConstraint": "a system-versioned column (GENERATED ... AS ROW)",
}

_CAMEL_WORD = re.compile(r"[A-Z]+(?![a-z])|[A-Z][a-z0-9]*|[a-z0-9]+")


def words(name: str) -> str:
    """`GeneratedAsIdentityColumnConstraint` -> `generated as identity column constraint`."""
    return " ".join(word.lower() for word in _CAMEL_WORD.findall(name))


def statement_title(node_name: str) -> str:
    """A PostgreSQL statement node as the SQL that makes it: `CreateSeqStmt` -> `CREATE SEQUENCE`."""
    if node_name in STATEMENT_TITLES:
        return STATEMENT_TITLES[node_name]
    return words(node_name.removesuffix("Stmt")).upper()


def node_title(node_name: str) -> str:
    """Any PostgreSQL parse node as SQL: a statement as `statement_title`, others by name."""
    if node_name.endswith("Stmt"):
        return statement_title(node_name)
    return NODE_TITLES.get(node_name) or words(node_name)


def syntax_title(class_name: str) -> str:
    """A sqlglot expression class as the SQL construct it stands for."""
    return SYNTAX_TITLES.get(class_name) or words(class_name)


def enum_title(value: str, prefix: str) -> str:
    """A PostgreSQL enum value without its prefix: `OBJECT_MATVIEW` -> `MATVIEW`,
    `AT_AddIdentity` -> `ADD IDENTITY`."""
    return words(value.removeprefix(prefix).replace("_", " ")).upper()

"""What analysis learns about a statement text, independent of who sends it.

`StatementFacts` is the cached unit: statement kind, every table access with its kind,
the column references with the query levels that resolve them, functions called, casts,
parameters used — or the reason the text cannot be allowed for anyone. Decisions against an
identity's rules are made from these facts (and the catalog snapshot) alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import total_ordering

SYNTAX_ERROR = "42601"
UNDEFINED_TABLE = "42P01"


class Denial(Exception):
    """A statement that is refused; `category` is stable, `message` says why. A statement
    PostgreSQL itself would reject carries PostgreSQL's SQLSTATE and the 1-based character
    position of the error, as the server would report them."""

    def __init__(self, category: str, message: str, sqlstate: str | None = None, position: int | None = None) -> None:
        super().__init__(message)
        self.category = category
        self.message = message
        self.sqlstate = sqlstate
        self.position = position

    def __reduce__(self) -> tuple:
        # Facts travel between processes (analysis runs in workers): pickle the fields, not
        # the exception's args.
        return Denial, (self.category, self.message, self.sqlstate, self.position)

    @classmethod
    def syntax_error(cls, error: Exception, text: str) -> Denial:
        """PostgreSQL's parser or scanner refused the text (pglast's ParseError: PostgreSQL's
        message and a 0-based character offset, None at the end of the input)."""
        message, location = (*error.args, None)[:2]
        position = (location if isinstance(location, int) else len(text)) + 1
        return cls("parse", str(message), sqlstate=SYNTAX_ERROR, position=position)


@total_ordering
@dataclass(frozen=True)
class TableName:
    """A relation as written: `schema` is None when unqualified. Names are already folded the
    way PostgreSQL folds them (unquoted to lower case, quoted kept exact)."""

    schema: str | None
    name: str

    def __lt__(self, other: TableName) -> bool:
        # Unqualified names sort first; a None schema cannot be compared with a string.
        return (self.schema or "", self.name) < (other.schema or "", other.name)

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name

    @classmethod
    def from_range_var(cls, node: dict) -> TableName:
        """A relation name in PostgreSQL's parse tree (a RangeVar)."""
        if node.get("catalogname"):
            raise Denial("syntax", f"three-part name {node['catalogname']}.{node.get('schemaname')}.{node['relname']}")
        return cls(node.get("schemaname"), node["relname"])


@dataclass(frozen=True, order=True)
class TableAccess:
    kind: str  # select | insert | update | delete | merge | ddl
    table: TableName
    # The statement makes this relation (CREATE TABLE, VIEW, TYPE, a named sequence): an
    # unqualified name is where it will be created, not a reference to an existing one.
    creates: bool = False


@dataclass(frozen=True)
class Source:
    """Something a query level's column names can come from: a FROM item, a write target, or
    a pseudo-relation (`excluded`, RETURNING's `old` and `new`)."""

    refname: str  # what columns are qualified with: the alias, else the relation's own name
    table: TableName | None = None  # a relation; None for a subquery, CTE, function or VALUES
    aliased: bool = False  # an alias hides the relation's name: `schema.table.column` cannot reach it
    columns: frozenset[str] = frozenset()  # names it certainly has (subqueries, CTEs, VALUES)
    open: bool = True  # it may have other names too (for a relation: ask the catalog)
    members: tuple[int, ...] = ()  # a JOIN with an alias: the sources it stands for


@dataclass(frozen=True)
class Scope:
    """One query level: its sources, and the level a name not found here is looked up in."""

    sources: tuple[int, ...]
    parent: int | None


@dataclass(frozen=True)
class ColumnRef:
    """A column reference as written: `("name",)`, `("c", "name")`, `("public", "c", "name")`,
    `("c", "*")` or `("*",)`."""

    scope: int
    fields: tuple[str, ...]
    output_names: frozenset[str] = frozenset()  # GROUP BY and DISTINCT ON may name output columns


@dataclass(frozen=True)
class ColumnWrite:
    source: int
    column: str | None  # None: every column (an INSERT without a column list)
    kind: str  # insert | update


@dataclass(frozen=True)
class WholeRow:
    """A use of every column of a source that no column name shows (NATURAL JOIN, column
    aliases on a relation)."""

    source: int
    why: str


@dataclass(frozen=True)
class ColumnFacts:
    sources: tuple[Source, ...] = ()
    scopes: tuple[Scope, ...] = ()
    references: tuple[ColumnRef, ...] = ()
    writes: tuple[ColumnWrite, ...] = ()
    whole_rows: tuple[WholeRow, ...] = ()


@dataclass(frozen=True)
class StatementFacts:
    kind: str | None = None
    accesses: frozenset[TableAccess] = frozenset()
    columns: ColumnFacts = ColumnFacts()
    functions: frozenset[str] = frozenset()  # as PostgreSQL's parser reports them, schema-qualified if written so
    casts: frozenset[str] = frozenset()
    params_used: frozenset[int] = frozenset()
    cascade: bool = False  # DROP, TRUNCATE, ALTER TABLE or REVOKE ... CASCADE
    # Where each relation is first named (1-based character position), for errors about it.
    positions: tuple[tuple[TableName, int], ...] = ()
    fingerprint: str = ""
    denial: Denial | None = field(default=None, compare=False)

    @property
    def tables(self) -> list[TableName]:
        return sorted({access.table for access in self.accesses})

    @property
    def param_count(self) -> int:
        return max(self.params_used, default=0)

    def position_of(self, table: TableName) -> int | None:
        return next((position for name, position in self.positions if name == table), None)

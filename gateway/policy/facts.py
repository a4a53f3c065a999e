"""What analysis learns about a statement text, independent of who sends it.

`StatementFacts` is the cached unit: statement kind, every table access with its kind,
functions called, casts, parameters used — or the reason the text cannot be allowed for
anyone. Decisions against an identity's rules are made from these facts alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field


class Denial(Exception):
    """A statement that is refused; `category` is stable, `message` says why."""

    def __init__(self, category: str, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.message = message


@dataclass(frozen=True, order=True)
class TableName:
    """A relation as written: `schema` is None when unqualified. Names are already folded the
    way PostgreSQL folds them (unquoted to lower case, quoted kept exact)."""

    schema: str | None
    name: str

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


@dataclass(frozen=True, order=True)
class TableAccess:
    kind: str  # select | insert | update | delete | merge | ddl
    table: TableName


@dataclass(frozen=True)
class StatementFacts:
    kind: str | None = None
    accesses: frozenset[TableAccess] = frozenset()
    functions: frozenset[str] = frozenset()  # as PostgreSQL's parser reports them, schema-qualified if written so
    casts: frozenset[str] = frozenset()
    params_used: frozenset[int] = frozenset()
    fingerprint: str = ""
    denial: Denial | None = field(default=None, compare=False)

    @property
    def tables(self) -> list[TableName]:
        return sorted({access.table for access in self.accesses})

    @property
    def param_count(self) -> int:
        return max(self.params_used, default=0)

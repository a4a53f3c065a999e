"""Names -> what PostgreSQL will reach, for one identity: relations and functions along the
lookup order of the pinned search path, `pg_catalog, <schemas>, pg_temp`, and column references
through their query levels.

Owns resolution only, with the catalog snapshot when there is one. Without one, or for a
name the snapshot does not know, every place the name could lead is returned, so the rules
judge each of them (failing closed). Which uses are allowed is `gateway.policy.decision`.
Every column a statement reads is a read, whatever the statement does with it; only the
columns it writes are writes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from gateway.catalog import CATALOG_SCHEMA, CatalogSnapshot
from gateway.policy.facts import ColumnFacts, ColumnRef, TableAccess, TableName

CATALOG_PREFIX = "pg_"  # every relation in pg_catalog is named so


def resolve_table(name: TableName, schemas: tuple[str, ...], catalog: CatalogSnapshot | None) -> list[str]:
    """The qualified names a relation reference may mean. Qualified: itself. Unqualified:
    the first schema on the search path that has it (pg_catalog first); a name the snapshot
    does not know (or any name, without a snapshot) may mean any schema of the path."""
    if name.schema is not None:
        return [f"{name.schema}.{name.name}"]
    if catalog is not None and (schema := catalog.find_relation(name.name, schemas)) is not None:
        return [f"{schema}.{name.name}"]
    candidates = [f"{schema}.{name.name}" for schema in schemas]
    if catalog is None and name.name.startswith(CATALOG_PREFIX):
        candidates.insert(0, f"{CATALOG_SCHEMA}.{name.name}")
    return candidates


def resolve_access(access: TableAccess, schemas: tuple[str, ...], catalog: CatalogSnapshot | None) -> list[str]:
    """The qualified names a table access may reach. A relation the statement creates without
    a schema goes to the first schema of the path that exists and the role may use (pg_catalog
    is searched first but never created in: the path the gateway sets does not name it), not
    to the schema where the snapshot finds the name: every schema of the path is a candidate."""
    if access.creates and access.table.schema is None:
        # Without schemas the path is `pg_catalog, pg_temp`, and pg_catalog is where it goes.
        return [f"{schema}.{access.table.name}" for schema in schemas or (CATALOG_SCHEMA,)]
    return resolve_table(access.table, schemas, catalog)


def resolve_function(name: str, schemas: tuple[str, ...], catalog: CatalogSnapshot | None) -> list[str]:
    """The qualified functions a call may run. Qualified: itself. Unqualified: PostgreSQL
    picks the best match among the functions of that name in every schema of the path, so
    each schema that has one is a candidate; with none known (or no snapshot), the built-in."""
    if "." in name:
        return [name]
    if catalog is None:
        return [f"{CATALOG_SCHEMA}.{name}"]
    defining = [f"{schema}.{name}" for schema in (CATALOG_SCHEMA, *schemas) if catalog.defines_function(schema, name)]
    return defining or [f"{CATALOG_SCHEMA}.{name}"]


@dataclass(frozen=True)
class ColumnUse:
    """One use of a relation's columns that the rules must allow: reads (`read`, `every`) by
    the select rules, writes by the rules of the write's kind."""

    table: str  # schema.table
    column: str | None  # None: every column
    action: str  # read | write | every
    kind: str = "select"  # whose rules are asked: select for reads, insert or update for writes
    detail: str = ""  # for `every`: how the statement reaches every column


class ColumnResolver:
    """Column references of one statement -> `ColumnUse`s, for one search path.

    An unqualified name binds at the innermost level where some source has it, as in
    PostgreSQL; a source whose columns are unknown (a relation the snapshot does not know, a
    subquery selecting `*`) may have it, so the name is attributed to it and also looked up
    further out. Every relation it may reach is judged: over-attribution only denies more.
    """

    def __init__(self, facts: ColumnFacts, schemas: tuple[str, ...], catalog: CatalogSnapshot | None) -> None:
        self.facts = facts
        self.catalog = catalog
        self.tables = [
            resolve_table(source.table, schemas, catalog) if source.table else [] for source in facts.sources
        ]

    def uses(self) -> Iterator[ColumnUse]:
        # A name written several times at one level (`t.revenue` in the select list and in
        # ORDER BY) reaches the same columns each time: resolve it once.
        for reference in dict.fromkeys(self.facts.references):
            yield from self._reference(reference)
        for write in self.facts.writes:
            for table in self.tables[write.source]:
                yield ColumnUse(table, write.column, "write", write.kind)
        for whole in self.facts.whole_rows:
            yield from self._every(whole.source, whole.why)

    # ------------------------------------------------------------------ lookups

    def _columns(self, table: str) -> frozenset[str] | None:
        schema, _, name = table.partition(".")
        return self.catalog.columns(schema, name) if self.catalog is not None else None

    def _has(self, index: int, column: str) -> bool | None:
        """Whether a source has the column: True, False, or None when that cannot be told."""
        source = self.facts.sources[index]
        if source.members:
            answers = {self._has(member, column) for member in source.members}
            return True if True in answers else (None if None in answers else False)
        if source.table is None:
            return True if column in source.columns else (None if source.open else False)
        known = [self._columns(table) for table in self.tables[index]]
        if None in known:
            return None
        return any(column in columns for columns in known)

    def _leaves(self, sources: tuple[int, ...]) -> Iterator[int]:
        """Sources with JOIN aliases replaced by what they stand for."""
        for index in sources:
            members = self.facts.sources[index].members
            if members:
                yield from self._leaves(members)
            else:
                yield index

    def _levels(self, scope: int | None) -> Iterator[tuple[int, ...]]:
        while scope is not None:
            level = self.facts.scopes[scope]
            yield level.sources
            scope = level.parent

    def _unqualified(self, scope: int, column: str) -> tuple[list[int], bool]:
        """The sources an unqualified name may come from, and whether one certainly has it."""
        found: list[int] = []
        for level in self._levels(scope):
            certain = False
            for index in self._leaves(level):
                has = self._has(index, column)
                if has is not False:
                    found.append(index)
                    certain = certain or has is True
            if certain:
                return found, True
        return found, False

    def _by_refname(self, scope: int, refname: str, schema: str | None = None) -> int | None:
        """The source a qualifier names, innermost level first; `schema.table` names only an
        unaliased relation."""
        for level in self._levels(scope):
            for index in level:
                source = self.facts.sources[index]
                if source.refname != refname:
                    continue
                if schema is None or (
                    not source.aliased and any(table.startswith(f"{schema}.") for table in self.tables[index])
                ):
                    return index
        return None

    # ------------------------------------------------------------------ references

    def _reference(self, reference: ColumnRef) -> Iterator[ColumnUse]:
        fields = reference.fields[-3:]  # catalog.schema.table.column: the catalog is this database
        if fields == ("*",):
            for index in self._leaves(self.facts.scopes[reference.scope].sources):
                yield from self._every(index, "SELECT *")
        elif len(fields) == 1:
            yield from self._bare(reference)
        else:
            *qualifier, column = fields
            schema = qualifier[0] if len(qualifier) == 2 else None
            source = self._by_refname(reference.scope, qualifier[-1], schema)
            shown = ".".join(fields)
            if source is None:
                # PostgreSQL will refuse the name; judge it against everything in sight anyway.
                yield from self._everywhere(reference.scope, column)
            elif column == "*":
                yield from self._every(source, shown)
            elif self._has(source, column) is False:
                yield from self._every(source, f"{shown} (not a column, so a function of the whole row)")
            else:
                yield from self._read(source, column)

    def _bare(self, reference: ColumnRef) -> Iterator[ColumnUse]:
        """A one-part name: a column at any level first, else a whole-row reference."""
        (name,) = reference.fields
        sources, certain = self._unqualified(reference.scope, name)
        for index in sources:
            yield from self._read(index, name)
        if certain or name in reference.output_names:
            return
        whole = self._by_refname(reference.scope, name)
        if whole is not None:
            yield from self._every(whole, f"the whole-row reference {name}")
        elif not sources:
            # No source has it: a stale snapshot, or an error PostgreSQL will report.
            yield from self._everywhere(reference.scope, name)

    def _read(self, index: int, column: str, *, only_where_it_may_be: bool = True) -> Iterator[ColumnUse]:
        """A read of the column on every relation the source may be (that may have it)."""
        for leaf in self._leaves((index,)):
            for table in self.tables[leaf]:
                columns = self._columns(table)
                if not only_where_it_may_be or columns is None or column in columns:
                    yield ColumnUse(table, column, "read")

    def _every(self, index: int, detail: str) -> Iterator[ColumnUse]:
        for leaf in self._leaves((index,)):
            for table in self.tables[leaf]:
                yield ColumnUse(table, None, "every", detail=detail)

    def _everywhere(self, scope: int, column: str) -> Iterator[ColumnUse]:
        for level in self._levels(scope):
            for index in level:
                yield from self._read(index, column, only_where_it_may_be=False)

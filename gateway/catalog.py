"""The catalog snapshot: which relations (with their columns) and which functions exist in
which schema, in which schemas each identity role can create objects, and which functions
PostgreSQL calls on its own when a relation is read or written — what the policy needs to
resolve names exactly as PostgreSQL will, to know where a name could change, and to know
which statements may run code it never sees. Also the shape of each user relation (column
types, keys), which describes the database to a caller (`gateway.policy.readable`).

Owns the immutable `CatalogSnapshot`, its lookups and its JSON file form (`gateway catalog
dump`, `gateway check --snapshot`). Reading one from a live database is `gateway.db.catalog`;
judging statements with it is `gateway.policy`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from gateway.config import IdentityConfig

# 2: pg_catalog functions and the schemas roles can create in; the implicit calls of
# relations and their shapes are optional (a snapshot without them knows of none)
SNAPSHOT_FORMAT = 2
CATALOG_SCHEMA = "pg_catalog"


class CatalogError(ValueError):
    """A snapshot file that cannot be read; the message names the file and the problem."""


@dataclass(frozen=True)
class ColumnShape:
    name: str
    type: str  # as PostgreSQL's format_type writes it: "numeric(12,2)", "public.mood"
    nullable: bool


@dataclass(frozen=True)
class ForeignKey:
    columns: tuple[str, ...]
    references: tuple[str, str]  # (schema, relation)
    referenced_columns: tuple[str, ...]


@dataclass(frozen=True)
class RelationShape:
    """A relation outside pg_catalog and information_schema as a caller would describe it."""

    kind: str  # "table", "partitioned table", "view", "materialized view", "foreign table"
    columns: tuple[ColumnShape, ...]  # in column order, without system columns
    primary_key: tuple[str, ...]
    foreign_keys: tuple[ForeignKey, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "columns": [[column.name, column.type, column.nullable] for column in self.columns],
            "primaryKey": list(self.primary_key),
            "foreignKeys": [
                [list(key.columns), list(key.references), list(key.referenced_columns)] for key in self.foreign_keys
            ],
        }

    @classmethod
    def from_json(cls, data: Any, key: str) -> RelationShape:
        """Raises ValueError naming `key` when `data` is not a shape's JSON form."""
        try:
            return cls(
                kind=_string(data["kind"]),
                columns=tuple(ColumnShape(_string(n), _string(t), _boolean(null)) for n, t, null in data["columns"]),
                primary_key=_strings(data["primaryKey"]),
                foreign_keys=tuple(
                    ForeignKey(_strings(columns), _pair(references), _strings(referenced))
                    for columns, references, referenced in data["foreignKeys"]
                ),
            )
        except (KeyError, TypeError, ValueError):
            raise ValueError(
                f'{key}: expected {{"kind", "columns": [[name, type, nullable]...], "primaryKey": [...], '
                '"foreignKeys": [[columns, [schema, relation], columns]...]}'
            ) from None


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError(value)
    return value


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(value)
    return value


def _strings(value: Any) -> tuple[str, ...]:
    return tuple(map(_string, value))


def _pair(value: Any) -> tuple[str, str]:
    schema, relation = _strings(value)
    return schema, relation


@dataclass(frozen=True)
class CatalogSnapshot:
    """Relations and functions per schema. Equal snapshots describe the same catalog, whenever
    and wherever they were taken."""

    # schema -> relation (table, view, materialized view, foreign table, sequence) -> columns,
    # system columns (ctid, xmin, ...) included for relations that have them
    relations: Mapping[str, Mapping[str, frozenset[str]]]
    # schema -> function name -> argument lists, e.g. {"public": {"lower": ("character varying",)}},
    # pg_catalog's own included
    functions: Mapping[str, Mapping[str, tuple[str, ...]]]
    # role -> the schemas it can create objects in (identity roles only)
    creatable: Mapping[str, frozenset[str]] = field(default_factory=lambda: MappingProxyType({}))
    # schema -> relation -> the functions PostgreSQL may call on its own when a statement reads
    # the relation (its view query and row-level-security policies, and theirs of the relations
    # they read), e.g. {"public": {"orders": frozenset({"pg_catalog.current_setting", ...})}};
    # relations outside pg_catalog and information_schema, and only those with any
    implicit_reads: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=lambda: MappingProxyType({}))
    # the same for writes: also triggers, rules, defaults and generated columns, check and domain
    # constraints, index expressions, and those of the relations its rules, cascading foreign
    # keys and partitions write
    implicit_writes: Mapping[str, Mapping[str, frozenset[str]]] = field(default_factory=lambda: MappingProxyType({}))
    # schema -> relation -> its shape; relations outside pg_catalog and information_schema
    shapes: Mapping[str, Mapping[str, RelationShape]] = field(default_factory=lambda: MappingProxyType({}))
    taken_at: str = field(default="", compare=False)
    database: str = field(default="", compare=False)

    def columns(self, schema: str, relation: str) -> frozenset[str] | None:
        """The relation's columns, or None when the snapshot does not know the relation."""
        return self.relations.get(schema, {}).get(relation)

    def find_relation(self, name: str, schemas: tuple[str, ...]) -> str | None:
        """The schema an unqualified relation name resolves to on the pinned search path
        `pg_catalog, <schemas>, pg_temp`, or None when no schema in the snapshot has it."""
        for schema in (CATALOG_SCHEMA, *schemas):
            if name in self.relations.get(schema, {}):
                return schema
        return None

    def defines_function(self, schema: str, name: str) -> bool:
        return name in self.functions.get(schema, {})

    def can_create(self, role: str, schema: str) -> bool:
        """Whether `role` can create objects in `schema` (by grant, membership or ownership)."""
        return schema in self.creatable.get(role, frozenset())

    def signatures(self, schema: str, name: str) -> tuple[str, ...]:
        return self.functions.get(schema, {}).get(name, ())

    def implicit_calls(self, schema: str, relation: str, *, write: bool) -> frozenset[str]:
        """The functions ("schema.name") PostgreSQL may call on its own when a statement reads
        (or writes) the relation."""
        calls = self.implicit_writes if write else self.implicit_reads
        return calls.get(schema, {}).get(relation, frozenset())

    def shape(self, schema: str, relation: str) -> RelationShape | None:
        return self.shapes.get(schema, {}).get(relation)

    # ------------------------------------------------------------------ JSON form

    def to_json(self) -> dict[str, Any]:
        return {
            "format": SNAPSHOT_FORMAT,
            "taken_at": self.taken_at,
            "database": self.database,
            "relations": _sorted_lists(self.relations),
            "functions": {
                schema: {name: list(signatures) for name, signatures in sorted(functions.items())}
                for schema, functions in sorted(self.functions.items())
            },
            "creatable": {role: sorted(schemas) for role, schemas in sorted(self.creatable.items())},
            "implicit_reads": _sorted_lists(self.implicit_reads),
            "implicit_writes": _sorted_lists(self.implicit_writes),
            "shapes": {
                schema: {name: shape.to_json() for name, shape in sorted(shapes.items())}
                for schema, shapes in sorted(self.shapes.items())
            },
        }

    @classmethod
    def from_json(cls, data: Any) -> CatalogSnapshot:
        """Raises ValueError naming the first part that is not a snapshot."""
        if not isinstance(data, dict) or data.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(
                f'expected a catalog snapshot object with "format": {SNAPSHOT_FORMAT} '
                "(a snapshot of an older format: dump it again with `gateway catalog dump`)"
            )
        return cls(
            relations=_frozen(_nested_lists(data.get("relations"), "relations"), frozenset),
            functions=_frozen(_nested_lists(data.get("functions"), "functions"), tuple),
            creatable=_frozen_sets(_string_lists(data.get("creatable", {}), "creatable")),
            implicit_reads=_frozen(_nested_lists(data.get("implicit_reads", {}), "implicit_reads"), frozenset),
            implicit_writes=_frozen(_nested_lists(data.get("implicit_writes", {}), "implicit_writes"), frozenset),
            shapes=_shapes(data.get("shapes", {})),
            taken_at=str(data.get("taken_at", "")),
            database=str(data.get("database", "")),
        )


def _sorted_lists(value: Mapping[str, Mapping[str, frozenset[str]]]) -> dict[str, dict[str, list[str]]]:
    return {
        schema: {name: sorted(items) for name, items in sorted(entries.items())}
        for schema, entries in sorted(value.items())
    }


def _nested_lists(value: Any, key: str) -> dict[str, dict[str, list[str]]]:
    """`{schema: {name: [string, ...]}}`, checked."""
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected an object of schemas")
    for schema, entries in value.items():
        _string_lists(entries, f"{key}.{schema}")
    return value


def _string_lists(value: Any, key: str) -> dict[str, list[str]]:
    """`{name: [string, ...]}`, checked."""
    if not isinstance(value, dict):
        raise ValueError(f"{key}: expected an object")
    for name, items in value.items():
        if not isinstance(items, list) or not all(isinstance(item, str) for item in items):
            raise ValueError(f"{key}.{name}: expected a list of strings")
    return value


def _shapes(value: Any) -> Mapping[str, Mapping[str, RelationShape]]:
    """`{schema: {relation: <a shape's JSON form>}}`, checked."""
    if not isinstance(value, dict) or not all(isinstance(shapes, dict) for shapes in value.values()):
        raise ValueError("shapes: expected an object of schemas, each an object of relations")
    return MappingProxyType(
        {
            schema: MappingProxyType(
                {name: RelationShape.from_json(shape, f"shapes.{schema}.{name}") for name, shape in shapes.items()}
            )
            for schema, shapes in value.items()
        }
    )


def _frozen_sets(value: dict[str, list[str]]) -> Mapping[str, frozenset[str]]:
    return MappingProxyType({name: frozenset(items) for name, items in value.items()})


def _frozen(value: dict[str, dict[str, list[str]]], kind: type) -> Mapping[str, Mapping[str, Any]]:
    return MappingProxyType(
        {
            schema: MappingProxyType({name: kind(items) for name, items in entries.items()})
            for schema, entries in value.items()
        }
    )


def snapshot_from_rows(
    relations: dict[str, dict[str, list[str]]],
    functions: dict[str, dict[str, list[str]]],
    creatable: dict[str, list[str]] | None = None,
    *,
    implicit_reads: dict[str, dict[str, list[str]]] | None = None,
    implicit_writes: dict[str, dict[str, list[str]]] | None = None,
    shapes: dict[str, dict[str, Any]] | None = None,
    taken_at: str = "",
    database: str = "",
) -> CatalogSnapshot:
    """A snapshot from the JSON forms of its parts (shapes as `RelationShape.to_json` writes them)."""
    return CatalogSnapshot(
        _frozen(relations, frozenset),
        _frozen(functions, tuple),
        _frozen_sets(creatable or {}),
        _frozen(implicit_reads or {}, frozenset),
        _frozen(implicit_writes or {}, frozenset),
        _shapes(shapes or {}),
        taken_at,
        database,
    )


def load_snapshot(path: str | Path) -> CatalogSnapshot:
    path = Path(path)
    try:
        return CatalogSnapshot.from_json(orjson.loads(path.read_bytes()))
    except FileNotFoundError:
        raise CatalogError(f"{path}: file not found") from None
    except orjson.JSONDecodeError as error:
        raise CatalogError(f"{path}: not valid JSON: {error}") from None
    except ValueError as error:
        raise CatalogError(f"{path}: {error}") from None


def dump_snapshot(snapshot: CatalogSnapshot) -> bytes:
    return orjson.dumps(snapshot.to_json(), option=orjson.OPT_INDENT_2) + b"\n"


def absent_rule_tables(identities: Iterable[IdentityConfig], present: Iterable[tuple[str, str]]) -> list[str]:
    """A warning for each table a rule names exactly (not `schema.*`) that the database lacks:
    most often a typo, which would deny every statement on the table meant. Rules that allow
    `ddl` are left out: a table such an identity may create need not exist yet."""
    known = set(present)
    warnings = []
    for identity in identities:
        for rule in identity.rules:
            if "ddl" in rule.allow:
                continue
            for table in rule.tables:
                schema, _, name = table.partition(".")
                if name != "*" and (schema, name) not in known:
                    warnings.append(f'identity "{identity.name}": rule table {table} is not in the database')
    return warnings

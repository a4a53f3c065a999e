"""What an identity may read of the catalog, for the tools that describe the database to a
caller (the MCP endpoint's `list_tables` and `describe_table`): the relations its select
rules cover and, of a relation a rule narrows, only those columns; a key only where every
column it names may be read. Of a relation it may not read nothing is told, not even that
it exists. Judging statements is `gateway.policy.decision`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

from gateway.catalog import CatalogSnapshot, ForeignKey, RelationShape
from gateway.identity import Identity
from gateway.policy.decision import NOT_COVERED, allowed_columns

Readable = Callable[[str], bool]  # whether a column (of one relation) may be read


@dataclass(frozen=True)
class ReadableRelation:
    name: str  # "schema.relation"
    shape: RelationShape  # what the identity may read of it


def readable_relations(identity: Identity, catalog: CatalogSnapshot) -> list[ReadableRelation]:
    """Every relation the identity may read, ordered by name."""
    found = (
        _readable(identity, catalog, schema, relation)
        for schema, shapes in sorted(catalog.shapes.items())
        for relation in sorted(shapes)
    )
    return [relation for relation in found if relation is not None]


def readable_relation(identity: Identity, catalog: CatalogSnapshot, name: str) -> ReadableRelation | None:
    """The relation `name` ("schema.relation", or a relation name resolved along the
    identity's search path as PostgreSQL would) when the identity may read it, else None."""
    schema, _, relation = name.rpartition(".")
    if not schema:
        schema = catalog.find_relation(relation, identity.schemas) or ""
    return _readable(identity, catalog, schema, relation)


def _columns_of(identity: Identity, qualified: str) -> Readable | None:
    allowed = allowed_columns(identity, qualified, "select")
    if allowed is NOT_COVERED:
        return None
    if allowed is True:
        return lambda column: True
    return allowed.__contains__


def _readable(identity: Identity, catalog: CatalogSnapshot, schema: str, relation: str) -> ReadableRelation | None:
    shape = catalog.shape(schema, relation)
    readable = _columns_of(identity, f"{schema}.{relation}")
    if shape is None or readable is None:
        return None
    primary_key = shape.primary_key if all(map(readable, shape.primary_key)) else ()
    foreign_keys = tuple(key for key in shape.foreign_keys if _tells_only_readable(identity, key, readable))
    columns = tuple(column for column in shape.columns if readable(column.name))
    return ReadableRelation(
        f"{schema}.{relation}", replace(shape, columns=columns, primary_key=primary_key, foreign_keys=foreign_keys)
    )


def _tells_only_readable(identity: Identity, key: ForeignKey, readable: Readable) -> bool:
    """A foreign key names its own columns and the relation and columns it references: all of
    them must be readable for the key to be shown."""
    schema, relation = key.references
    referenced = _columns_of(identity, f"{schema}.{relation}")
    return referenced is not None and all(map(readable, key.columns)) and all(map(referenced, key.referenced_columns))

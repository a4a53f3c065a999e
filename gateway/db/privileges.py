"""Reads what identity roles can do in PostgreSQL: every relation outside the system schemas
(kind, owner, columns, the sequences its column defaults call) and every privilege an
identity role can use — its own grants, PUBLIC's, those of the roles it is a member of, and
the ownership and role attributes it reaches. One query over pg_catalog: any role may run it.

Owns the query and the shape of its answer; what the roles *should* hold, and the statements
that get them there, is `gateway.grants`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import asyncpg
import orjson

PUBLIC = "PUBLIC"
OWNERSHIP = "OWNERSHIP"  # a privilege-like fact: the role (or a role it is a member of) owns the relation
# Role attributes that void every privilege check (SUPERUSER) or row-level security (BYPASSRLS);
# a role reaches them through SET ROLE to any role it is a member of.
ROLE_ATTRIBUTES = ("SUPERUSER", "BYPASSRLS")
# Predefined roles whose members may act as if granted these privileges on every relation
# (PostgreSQL 14+): they appear in no ACL.
PREDEFINED_ROLE_PRIVILEGES = {
    "pg_read_all_data": ("SELECT",),
    "pg_write_all_data": ("INSERT", "UPDATE", "DELETE"),
}


@dataclass(frozen=True)
class Relation:
    schema: str
    name: str
    kind: str  # pg_class.relkind: r table, p partitioned table, v view, m materialized view, f foreign, S sequence
    owner: str
    columns: frozenset[str]  # system columns included, as GRANT accepts them
    # Sequences (schema, name) that the defaults of its columns call (nextval): an INSERT that
    # leaves such a column to its default needs USAGE on the sequence. Identity columns have
    # no default expression and need nothing.
    default_sequences: tuple[tuple[str, str], ...] = ()

    @property
    def key(self) -> tuple[str, str]:
        return self.schema, self.name

    @property
    def qualified(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def is_sequence(self) -> bool:
        return self.kind == "S"


@dataclass(frozen=True)
class Held:
    """One privilege an identity role can use, as PostgreSQL records it."""

    role: str  # the identity role
    privilege: str  # SELECT … TRIGGER, USAGE, CREATE, or OWNERSHIP / SUPERUSER / BYPASSRLS
    schema: str = ""  # "" for a role attribute
    relation: str | None = None  # None: the schema itself (or a role attribute)
    column: str | None = None  # None: the whole relation
    holder: str = ""  # whom the grant names: the role itself, PUBLIC, or a role it is a member of
    grantor: str = ""
    grantable: bool = False

    @property
    def direct(self) -> bool:
        """Granted to the role itself, not through PUBLIC or another role."""
        return self.holder == self.role


@dataclass(frozen=True)
class DatabasePrivileges:
    database: str
    relations: dict[tuple[str, str], Relation]
    schemas: dict[str, str]  # schema -> owner
    held: tuple[Held, ...]
    missing_roles: frozenset[str]  # identity roles the database does not have

    def held_by(self, role: str) -> list[Held]:
        return [held for held in self.held if held.role == role]


PRIVILEGES_SQL = """
WITH identity_roles AS (
    SELECT oid, rolname FROM pg_catalog.pg_roles WHERE rolname = ANY($1::text[])
),
-- Whose privileges each identity role can use: its own, PUBLIC's, and those of every role it
-- is a member of (SET ROLE reaches them even where it does not inherit them).
holders AS (
    SELECT i.rolname AS role, h.oid, h.rolname AS holder, h.rolsuper, h.rolbypassrls
    FROM identity_roles i JOIN pg_catalog.pg_roles h ON pg_catalog.pg_has_role(i.oid, h.oid, 'MEMBER')
    UNION ALL
    SELECT i.rolname, 0, 'PUBLIC', false, false FROM identity_roles i
),
schemas AS (
    SELECT oid, nspname, nspowner, nspacl FROM pg_catalog.pg_namespace
    WHERE nspname !~ '^pg_(toast|temp_)' AND nspname NOT IN ('pg_catalog', 'information_schema')
),
relations AS (
    SELECT c.oid, s.nspname, c.relname, c.relkind, c.relowner, c.relacl
    FROM pg_catalog.pg_class c JOIN schemas s ON s.oid = c.relnamespace
    WHERE c.relkind IN ('r', 'v', 'm', 'f', 'p', 'S')
),
acl AS (
    SELECT r.nspname, r.relname, NULL::name AS attname, a.grantor, a.grantee, a.privilege_type, a.is_grantable
    FROM relations r, LATERAL pg_catalog.aclexplode(COALESCE(r.relacl, pg_catalog.acldefault(
        CASE r.relkind WHEN 'S' THEN 's' ELSE 'r' END::"char", r.relowner))) a
    UNION ALL
    SELECT r.nspname, r.relname, att.attname, a.grantor, a.grantee, a.privilege_type, a.is_grantable
    FROM relations r
    JOIN pg_catalog.pg_attribute att ON att.attrelid = r.oid AND att.attnum <> 0 AND NOT att.attisdropped
    CROSS JOIN LATERAL pg_catalog.aclexplode(att.attacl) a
    WHERE att.attacl IS NOT NULL
    UNION ALL
    SELECT s.nspname, NULL, NULL, a.grantor, a.grantee, a.privilege_type, a.is_grantable
    FROM schemas s, LATERAL pg_catalog.aclexplode(COALESCE(s.nspacl, pg_catalog.acldefault('n', s.nspowner))) a
)
SELECT pg_catalog.json_build_object(
    'database', pg_catalog.current_database(),
    'roles', (SELECT pg_catalog.json_agg(rolname) FROM identity_roles),
    'schemas', (SELECT pg_catalog.json_object_agg(nspname, pg_catalog.pg_get_userbyid(nspowner)) FROM schemas),
    'relations', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
        r.nspname, r.relname, r.relkind, pg_catalog.pg_get_userbyid(r.relowner),
        (SELECT pg_catalog.json_agg(att.attname) FROM pg_catalog.pg_attribute att
          WHERE att.attrelid = r.oid AND att.attnum <> 0 AND NOT att.attisdropped),
        (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(q.nspname, q.relname)) FROM (
            SELECT DISTINCT sn.nspname, sc.relname
            FROM pg_catalog.pg_attrdef ad
            JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_attrdef'::pg_catalog.regclass
                 AND d.objid = ad.oid AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass
            JOIN pg_catalog.pg_class sc ON sc.oid = d.refobjid AND sc.relkind = 'S'
            JOIN pg_catalog.pg_namespace sn ON sn.oid = sc.relnamespace
            WHERE ad.adrelid = r.oid) q)))
        FROM relations r),
    'held', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(
        h.role, acl.privilege_type, acl.nspname, acl.relname, acl.attname, h.holder,
        pg_catalog.pg_get_userbyid(acl.grantor), acl.is_grantable))
        FROM acl JOIN holders h ON h.oid = acl.grantee),
    'owned', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(h.role, r.nspname, r.relname, h.holder))
        FROM relations r JOIN holders h ON h.oid = r.relowner),
    'attributes', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(h.role, h.holder, h.rolsuper, h.rolbypassrls))
        FROM holders h WHERE h.rolsuper OR h.rolbypassrls),
    'predefined', (SELECT pg_catalog.json_agg(pg_catalog.json_build_array(h.role, h.holder))
        FROM holders h WHERE h.holder IN ('pg_read_all_data', 'pg_write_all_data'))
)::text
"""


async def read_privileges(connection: asyncpg.Connection, roles: Iterable[str]) -> DatabasePrivileges:
    """What `roles` hold in the database `connection` is connected to. Names in the query
    resolve in pg_catalog only: the session's own search_path is not trusted here."""
    roles = sorted(set(roles))
    async with connection.transaction():
        await connection.execute("SET LOCAL search_path = pg_catalog, pg_temp")
        text = await connection.fetchval(PRIVILEGES_SQL, roles)
    return _privileges_from(orjson.loads(text), roles)


def _privileges_from(data: dict, roles: list[str]) -> DatabasePrivileges:
    relations = {}
    for schema, name, kind, owner, columns, sequences in data["relations"] or ():
        defaults = tuple(sorted(tuple(sequence) for sequence in sequences or ()))
        relation = Relation(schema, name, kind, owner, frozenset(columns or ()), defaults)
        relations[relation.key] = relation
    held = [
        Held(role, privilege, schema, relation, column, holder, grantor, grantable)
        for role, privilege, schema, relation, column, holder, grantor, grantable in data["held"] or ()
    ]
    held += [
        Held(role, OWNERSHIP, schema, relation, holder=holder, grantor=holder)
        for role, schema, relation, holder in data["owned"] or ()
    ]
    for role, holder, superuser, bypassrls in data["attributes"] or ():
        for attribute, has in zip(ROLE_ATTRIBUTES, (superuser, bypassrls), strict=True):
            if has:
                held.append(Held(role, attribute, holder=holder))
    for role, holder in data["predefined"] or ():
        held += _predefined_role_privileges(role, holder, relations.values())
    return DatabasePrivileges(
        database=data["database"],
        relations=relations,
        schemas=data["schemas"] or {},
        held=tuple(sorted(set(held), key=_held_order)),
        missing_roles=frozenset(roles) - frozenset(data["roles"] or ()),
    )


def _held_order(held: Held) -> tuple:
    return held.role, held.schema, held.relation or "", held.column or "", held.privilege, held.holder, held.grantor


def _predefined_role_privileges(role: str, holder: str, relations: Iterable[Relation]) -> list[Held]:
    """What membership in pg_read_all_data or pg_write_all_data gives, as if granted on every
    relation (a sequence takes SELECT and UPDATE only)."""
    return [
        Held(role, privilege, relation.schema, relation.name, holder=holder, grantor=holder)
        for relation in relations
        for privilege in PREDEFINED_ROLE_PRIVILEGES[holder]
        if not relation.is_sequence or privilege in ("SELECT", "UPDATE")
    ]

"""Shadow roles: database roles holding exactly the privileges an identity's rules grant,
worked out here from the rules alone, independently of the gateway's code.

A shadow role is how PostgreSQL judges the policy: a statement the gateway allows must also
pass PostgreSQL's own privilege checks when run as the identity's shadow role. The mapping:
a `select` rule grants SELECT on its tables (or on its listed columns), `insert` and `update`
rules INSERT and UPDATE on the table (or on the listed columns), `delete` DELETE; `merge`
and `ddl` grant nothing (MERGE needs the privileges of its actions; DDL needs ownership).
Rules add up, and a grant on the whole table covers every column. A read-only identity gets
SELECT only. `schema.*` names every relation of the schema that the catalog lists.
"""

from __future__ import annotations

from collections.abc import Mapping

from gateway.config import IdentityConfig

PRIVILEGES = {"select": "SELECT", "insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}
COLUMN_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE"})
SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})

# (schema.table, privilege) -> the columns granted, or None for the whole table
Privileges = dict[tuple[str, str], frozenset[str] | None]


def _tables(pattern: str, relations: Mapping[str, Mapping[str, frozenset[str]]]) -> list[str]:
    schema, _, name = pattern.partition(".")
    if name != "*":
        return [pattern] if name in relations.get(schema, {}) else []
    if schema in SYSTEM_SCHEMAS:
        return []
    return [f"{schema}.{table}" for table in sorted(relations.get(schema, {}))]


def shadow_privileges(identity: IdentityConfig, relations: Mapping[str, Mapping[str, frozenset[str]]]) -> Privileges:
    """What the identity's rules grant, per table and privilege."""
    granted: Privileges = {}
    for rule in identity.rules:
        for kind in rule.allow:
            privilege = PRIVILEGES.get(kind)
            if privilege is None or (identity.read_only and privilege != "SELECT"):
                continue
            for pattern in rule.tables:
                for table in _tables(pattern, relations):
                    key = (table, privilege)
                    if key in granted and granted[key] is None:
                        continue
                    narrowed = rule.columns.get(table) if privilege in COLUMN_PRIVILEGES else None
                    if narrowed is None:
                        granted[key] = None
                    else:
                        granted[key] = (granted.get(key) or frozenset()) | frozenset(narrowed)
    return granted


def _quoted(qualified: str) -> str:
    schema, _, table = qualified.partition(".")
    return f'"{schema}"."{table}"'


def shadow_role_sql(role: str, identity: IdentityConfig, relations: Mapping[str, Mapping[str, frozenset[str]]]) -> str:
    """SQL that (re)creates `role` with exactly the identity's privileges (run as a superuser)."""
    statements = [f'CREATE ROLE "{role}" NOLOGIN']
    schemas = set()
    for (table, privilege), columns in sorted(shadow_privileges(identity, relations).items()):
        schemas.add(table.partition(".")[0])
        target = _quoted(table)
        if columns is None:
            statements.append(f'GRANT {privilege} ON {target} TO "{role}"')
        else:
            listed = ", ".join(f'"{column}"' for column in sorted(columns))
            statements.append(f'GRANT {privilege} ({listed}) ON {target} TO "{role}"')
    statements += [f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"' for schema in sorted(schemas)]
    return ";\n".join(statements)

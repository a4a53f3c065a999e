"""The policy mirrored as grants: what each identity role should hold in PostgreSQL (exactly
what the rules of the identities running as it allow), what it holds beyond that, and the
GRANT and REVOKE statements that close the gap — so that PostgreSQL is a second lock behind
the gateway's.

Owns the mapping from rules to privileges, the plan and its SQL, and the excess report
(`gateway grants`, `gateway check --database`, the warning and metric at start). Reading
what the roles hold is `gateway.db.privileges`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import asyncpg
from pglast.stream import maybe_double_quote_name

from gateway.config import GatewayConfig
from gateway.db.privileges import (
    OWNERSHIP,
    PREDEFINED_ROLE_PRIVILEGES,
    PUBLIC,
    ROLE_ATTRIBUTES,
    DatabasePrivileges,
    Held,
    Relation,
    read_privileges,
)
from gateway.identity import Identity
from gateway.policy.decision import SYSTEM_SCHEMAS, rule_covers

if TYPE_CHECKING:
    from gateway.db.pool import Database
    from gateway.metrics import GatewayMetrics

logger = logging.getLogger("gateway")

# The statement kinds that map to a privilege of their own; `merge` runs with the privileges
# of its actions, and `ddl` needs ownership, which no GRANT gives.
KIND_PRIVILEGES = {"select": "SELECT", "insert": "INSERT", "update": "UPDATE", "delete": "DELETE"}
COLUMN_PRIVILEGES = frozenset({"SELECT", "INSERT", "UPDATE"})
SEQUENCE_PRIVILEGES = frozenset({"SELECT", "UPDATE", "USAGE"})

Key = tuple[str, str]  # (schema, relation)
Columns = frozenset[str] | None  # None: every column (a grant on the whole relation)


def quoted(name: str) -> str:
    """A name as SQL: quoted when PostgreSQL would otherwise fold or misread it."""
    return maybe_double_quote_name(name)


def qualified(schema: str, name: str) -> str:
    return f"{quoted(schema)}.{quoted(name)}"


# ---------------------------------------------------------------------------- what a role should hold


@dataclass
class Wanted:
    """What one role should hold: the union over the identities that run as it."""

    relations: dict[Key, dict[str, Columns]] = field(default_factory=dict)
    ddl_relations: set[Key] = field(default_factory=set)  # TRUNCATE and ownership there are the rules' due
    ddl_schemas: set[str] = field(default_factory=set)  # CREATE there too (a `schema.*` ddl rule)
    notes: list[str] = field(default_factory=list)

    def add(self, key: Key, privilege: str, columns: Columns) -> None:
        granted = self.relations.setdefault(key, {})
        if privilege not in granted:
            granted[privilege] = columns
        elif granted[privilege] is not None:
            granted[privilege] = None if columns is None else granted[privilege] | columns

    @property
    def schemas(self) -> set[str]:
        """The schemas it needs USAGE on: those of the relations it is granted anything on."""
        return {key[0] for key, granted in self.relations.items() if any(c is None or c for c in granted.values())}


def wanted_privileges(identities: Iterable[Identity], privileges: DatabasePrivileges) -> Wanted:
    """A `select` rule grants SELECT on its tables (or on its listed columns), `insert` and
    `update` INSERT and UPDATE (or on the listed columns), `delete` DELETE; a read-only
    identity gets SELECT only. A sequence takes SELECT and UPDATE (INSERT and DELETE do not
    exist for it), and INSERT on a table brings USAGE on the sequences its column defaults
    call. Rules add up; a grant on the whole relation covers every column."""
    wanted = Wanted()
    relations = privileges.relations
    for identity in identities:
        for relation in relations.values():
            _add_relation(wanted, identity, relation, relations)
        for rule in identity.rules:
            if "ddl" in rule.allow:
                wanted.ddl_schemas.update(pattern[:-2] for pattern in rule.tables if pattern.endswith(".*"))
        _note_rules(wanted, identity, privileges)
    return wanted


def _add_relation(wanted: Wanted, identity: Identity, relation: Relation, relations: Mapping[Key, Relation]) -> None:
    name = relation.qualified
    for rule in identity.rules:
        for kind in rule.allow:
            privilege = KIND_PRIVILEGES.get(kind)
            if privilege is None or (identity.read_only and privilege != "SELECT"):
                continue
            if (relation.is_sequence and privilege not in SEQUENCE_PRIVILEGES) or not rule_covers(rule, kind, name):
                continue
            narrowed = rule.columns.get(name) if privilege in COLUMN_PRIVILEGES else None
            # A column the relation lacks is noted, not granted.
            wanted.add(relation.key, privilege, None if narrowed is None else frozenset(narrowed) & relation.columns)
            if privilege == "INSERT":
                for sequence in relation.default_sequences:
                    if sequence in relations:
                        wanted.add(sequence, "USAGE", None)
        if rule_covers(rule, "ddl", name):
            wanted.ddl_relations.add(relation.key)


def _note_rules(wanted: Wanted, identity: Identity, privileges: DatabasePrivileges) -> None:
    """What the rules ask for that no GRANT here gives, said once per identity."""
    who = f'identity "{identity.name}"'
    for rule in identity.rules:
        if "merge" in rule.allow:
            wanted.notes.append(
                f"{who}: merge rules grant nothing themselves; MERGE runs with the privileges of its "
                "actions (insert, update and delete rules)"
            )
        if "ddl" in rule.allow:
            wanted.notes.append(
                f"{who}: ddl rules ({', '.join(rule.tables)}) need ownership of the tables (or CREATE on the "
                "schema, to create them), which this plan does not give: grant them deliberately; TRUNCATE, "
                "ownership and CREATE there are not counted as excess"
            )
        for pattern in rule.tables:
            wanted.notes += _pattern_notes(who, pattern, rule.columns.get(pattern, ()), privileges)
    wanted.notes[:] = list(dict.fromkeys(wanted.notes))


def _pattern_notes(who: str, pattern: str, columns: Iterable[str], privileges: DatabasePrivileges) -> list[str]:
    schema, _, name = pattern.partition(".")
    if schema in SYSTEM_SCHEMAS:
        return [f"{who}: {pattern} is PostgreSQL's own catalog: not managed here (PUBLIC reads most of it)"]
    if name == "*":
        return [] if schema in privileges.schemas else [f"{who}: rules name {pattern}, but there is no schema {schema}"]
    relation = privileges.relations.get((schema, name))
    if relation is None:
        return [f"{who}: rules name {pattern}, which the database does not have"]
    return [
        f"{who}: rules name column {pattern}.{column}, which the table does not have"
        for column in columns
        if column not in relation.columns
    ]


# ---------------------------------------------------------------------------- what it holds beyond that


@dataclass(frozen=True)
class Excess:
    """A privilege a role can use that its rules do not allow."""

    held: Held
    allowed: Columns = None  # the columns the rules do allow, where they narrow that privilege
    grant_option_only: bool = False  # the privilege is allowed; granting it onward is not

    @property
    def revocable(self) -> bool:
        """A REVOKE from the role itself removes it (the plan does)."""
        held = self.held
        return held.direct and held.privilege not in (OWNERSHIP, *ROLE_ATTRIBUTES)

    def target(self) -> str:
        held = self.held
        if held.privilege in ROLE_ATTRIBUTES:
            return f"role {quoted(held.holder)}"
        if held.relation is None:
            return f"schema {quoted(held.schema)}"
        name = qualified(held.schema, held.relation)
        return f"{name}.{quoted(held.column)}" if held.column is not None else name

    def describe(self) -> str:
        held = self.held
        if held.privilege in ROLE_ATTRIBUTES:
            text = f"the {held.privilege} attribute"
        elif held.privilege == OWNERSHIP:
            text = f"ownership of {self.target()} (the owner holds every privilege on it and can grant them)"
        elif self.grant_option_only:
            text = f"the grant option of {held.privilege} on {self.target()}"
        else:
            text = f"{held.privilege} on {self.target()}"
            if self.allowed is not None:
                allowed = ", ".join(quoted(column) for column in sorted(self.allowed)) or "no column"
                text += f" ({'every column' if held.column is None else 'a column'}; the rules allow {allowed})"
        if held.holder == PUBLIC:
            return f"{text} through PUBLIC"
        return text if held.direct else f"{text} through role {quoted(held.holder)}"

    def fix(self) -> str:
        held = self.held
        role = quoted(held.role)
        if held.direct:
            if held.privilege in ROLE_ATTRIBUTES:
                return f"ALTER ROLE {role} NO{held.privilege}"
            if held.privilege == OWNERSHIP:
                return f"ALTER TABLE {self.target()} OWNER TO <a role no identity runs as>"
            return _revoke_sql(self, held.role)
        if held.holder == PUBLIC:
            return f"{_revoke_sql(self, PUBLIC)} (every role loses it)"
        holder = quoted(held.holder)
        membership = f"REVOKE {holder} FROM {role} (or from the role through which {role} is a member of {holder})"
        if held.privilege in (OWNERSHIP, *ROLE_ATTRIBUTES) or held.holder in PREDEFINED_ROLE_PRIVILEGES:
            return membership
        return f"{membership}, or {_revoke_sql(self, held.holder)}"

    def as_json(self) -> dict[str, Any]:
        held = self.held
        return {
            "privilege": held.privilege,
            "on": self.target(),
            "through": held.holder,
            "description": self.describe(),
            "fix": self.fix(),
        }


def find_excess(held: Iterable[Held], wanted: Wanted) -> list[Excess]:
    return [excess for item in held if (excess := _excess(item, wanted)) is not None]


def _excess(held: Held, wanted: Wanted) -> Excess | None:
    if held.privilege in ROLE_ATTRIBUTES:
        return Excess(held)
    if held.relation is None:  # a schema: USAGE reads nothing by itself, CREATE makes objects
        allowed = held.privilege != "CREATE" or held.schema in wanted.ddl_schemas
        return None if allowed else Excess(held)
    key = (held.schema, held.relation)
    if held.privilege in (OWNERSHIP, "TRUNCATE") and key in wanted.ddl_relations:
        return None
    granted = wanted.relations.get(key, {})
    if held.privilege not in granted:
        return Excess(held)
    columns = granted[held.privilege]
    if columns is not None and (held.column is None or held.column not in columns):
        return Excess(held, allowed=columns)
    return Excess(held, grant_option_only=True) if held.grantable else None


# ---------------------------------------------------------------------------- SQL


def _on(schema: str, relation: str | None, privilege: str, columns: Iterable[str] | None = None) -> str:
    """`[(columns)] ON <object>` for a privilege on a schema, a relation or its columns."""
    if relation is None:
        return f"ON SCHEMA {quoted(schema)}"
    name = qualified(schema, relation)
    if columns is not None:
        return f"({', '.join(quoted(column) for column in sorted(columns))}) ON TABLE {name}"
    # USAGE exists on sequences only; ON TABLE takes a sequence's SELECT and UPDATE too.
    return f"ON {'SEQUENCE' if privilege == 'USAGE' else 'TABLE'} {name}"


def _revoke_sql(excess: Excess, grantee: str, columns: Iterable[str] | None = None) -> str:
    held = excess.held
    if columns is None and held.column is not None:
        columns = (held.column,)
    what = f"GRANT OPTION FOR {held.privilege}" if excess.grant_option_only else held.privilege
    target = PUBLIC if grantee == PUBLIC else quoted(grantee)
    return f"REVOKE {what} {_on(held.schema, held.relation, held.privilege, columns)} FROM {target}"


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True)
class RolePlan:
    role: str
    identities: tuple[str, ...]
    statements: tuple[str, ...]  # REVOKEs first, then GRANTs
    excess: tuple[Excess, ...]  # everything beyond the rules, revocable by the plan or not
    notes: tuple[str, ...]
    missing: bool = False  # the database has no such role
    # Identities that may take temporary logins of this role: their sessions meet no policy,
    # only the role's grants.
    brokered: tuple[str, ...] = ()

    @property
    def unrevocable(self) -> tuple[Excess, ...]:
        return tuple(excess for excess in self.excess if not excess.revocable)

    def as_json(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "identities": list(self.identities),
            "missing": self.missing,
            "excess": [excess.as_json() for excess in self.excess],
            "credentials": list(self.brokered),
        }


def identities_by_role(config: GatewayConfig) -> dict[str, list[Identity]]:
    """Every role some identity runs as, with every identity that can run as it."""
    by_role: dict[str, list[Identity]] = {}
    for identity in config.identities:
        for role in identity.database_roles():
            by_role.setdefault(role, []).append(Identity.from_config(identity, role))
    return dict(sorted(by_role.items()))


@dataclass(frozen=True)
class GrantsPlan:
    database: str
    roles: tuple[RolePlan, ...]

    @property
    def statements(self) -> list[str]:
        return [statement for plan in self.roles for statement in plan.statements]

    def render(self, title: str) -> str:
        """The plan as SQL: each role's statements, and as comments what no statement here
        changes (excess held through PUBLIC or other roles, ownership) and why."""
        lines = [f"-- {title}", f"-- database {self.database}"]
        for plan in self.roles:
            who = f"-- role {quoted(plan.role)} (identities: {', '.join(plan.identities)})"
            lines += ["", who if plan.statements else f"{who}: nothing to change"]
            lines += [f"{statement};" for statement in plan.statements]
            if plan.unrevocable:
                lines.append(f"-- held beyond its rules, which no REVOKE from {quoted(plan.role)} removes:")
                lines += [f"--   {excess.describe()}; fix: {excess.fix()}" for excess in plan.unrevocable]
            lines += [f"-- note: {note}" for note in plan.notes]
        return "\n".join(lines) + "\n"


def plan_grants(
    config: GatewayConfig, privileges: DatabasePrivileges, roles: Iterable[str] | None = None
) -> GrantsPlan:
    """One plan per identity role (or per role of `roles`)."""
    by_role = identities_by_role(config)
    chosen = by_role if roles is None else {role: by_role[role] for role in roles}
    plans = tuple(plan_role(role, identities, privileges) for role, identities in chosen.items())
    return GrantsPlan(privileges.database, plans)


def plan_role(role: str, identities: list[Identity], privileges: DatabasePrivileges) -> RolePlan:
    names = tuple(identity.name for identity in identities)
    brokered = tuple(identity.name for identity in identities if identity.credentials is not None)
    if role in privileges.missing_roles:
        note = f"role {quoted(role)} does not exist: CREATE ROLE {quoted(role)} NOLOGIN, and grant it to the login"
        return RolePlan(role, names, (), (), (note,), missing=True, brokered=brokered)
    wanted = wanted_privileges(identities, privileges)
    held = privileges.held_by(role)
    excess = find_excess(held, wanted)
    revokes, revoked = _revokes(excess, held, privileges)
    remaining = [item for item in held if item.direct and item not in revoked]
    grants = _grants(role, wanted, remaining)
    return RolePlan(
        role, names, tuple(revokes + grants), tuple(_worth_reporting(excess)), tuple(wanted.notes), brokered=brokered
    )


def grants_for_new_role(role: str, identities: list[Identity], privileges: DatabasePrivileges) -> list[str]:
    """Every GRANT a role that does not exist yet needs for its rules (`gateway init` writes
    them before anyone has created the role; `plan_role` then has nothing to compare with)."""
    return _grants(role, wanted_privileges(identities, privileges), [])


def _worth_reporting(excess: list[Excess]) -> list[Excess]:
    """A role that is (or can SET ROLE to) a superuser passes every privilege check, and
    PostgreSQL counts a superuser as a member of every role: report that alone."""
    superuser = [item for item in excess if item.held.privilege == "SUPERUSER"]
    if not superuser:
        return excess
    itself = any(item.held.direct for item in superuser)
    return [item for item in excess if item.held.privilege in ROLE_ATTRIBUTES and (item.held.direct or not itself)]


def _revokes(excess: list[Excess], held: list[Held], privileges: DatabasePrivileges) -> tuple[list[str], set[Held]]:
    """The REVOKEs that remove the revocable excess, and every grant they take with them. A
    REVOKE on a table also takes the same grantor's grants of that privilege on its columns. A
    grant is revoked by its grantor (a superuser acts as the owner), so another grantor's is
    revoked under SET ROLE to it."""
    revocable = [item for item in excess if item.revocable]
    whole = {_grant_key(item.held) for item in revocable if item.held.column is None and not item.grant_option_only}
    revoked = {h for h in held if h.direct and h.column is not None and _grant_key(h) in whole}
    by_statement: dict[tuple, list[Excess]] = {}
    for item in revocable:
        if item.held not in revoked:
            statement = (*_grant_key(item.held), item.held.column is None, item.grant_option_only)
            by_statement.setdefault(statement, []).append(item)
    statements: list[str] = []
    for items in by_statement.values():
        first = items[0].held
        columns = None if first.column is None else [item.held.column for item in items]
        statements += _as_grantor(_revoke_sql(items[0], first.role, columns), first, privileges)
        revoked.update(item.held for item in items if not item.grant_option_only)
    return statements, revoked


def _grant_key(held: Held) -> tuple[str, str | None, str, str]:
    return held.schema, held.relation, held.privilege, held.grantor


def _as_grantor(sql: str, held: Held, privileges: DatabasePrivileges) -> list[str]:
    if held.relation is None:
        owner = privileges.schemas.get(held.schema)
    else:
        owner = privileges.relations[(held.schema, held.relation)].owner
    if held.grantor == owner:
        return [sql]
    return [f"SET ROLE {quoted(held.grantor)}", sql, "RESET ROLE"]


def _grants(role: str, wanted: Wanted, remaining: list[Held]) -> list[str]:
    """GRANTs for what the role does not hold itself: a privilege it has only through PUBLIC or
    another role is granted too, so that revoking it there later takes nothing from the role."""
    statements = []
    for key, granted in sorted(wanted.relations.items()):
        for privilege, columns in sorted(granted.items(), key=lambda item: item[0]):
            own = [h for h in remaining if (h.schema, h.relation, h.privilege) == (*key, privilege)]
            if any(h.column is None for h in own):
                continue
            if columns is not None:
                columns = columns - {h.column for h in own}
                if not columns:
                    continue
            statements.append(f"GRANT {privilege} {_on(*key, privilege, columns)} TO {quoted(role)}")
    usage = {h.schema for h in remaining if h.relation is None and h.privilege == "USAGE"}
    statements += [
        f"GRANT USAGE ON SCHEMA {quoted(schema)} TO {quoted(role)}" for schema in sorted(wanted.schemas - usage)
    ]
    return statements


# ---------------------------------------------------------------------------- applying it and reporting


class GrantsNotApplied(Exception):
    """The plan could not be applied; nothing was changed."""


async def apply_grants(connection: asyncpg.Connection, config: GatewayConfig) -> GrantsPlan:
    """Plan and run the statements in one transaction, then read the privileges again inside
    it: where PostgreSQL only warned (a REVOKE of a grant the session cannot revoke) the plan
    would not be empty then, and everything is rolled back."""
    roles = config.identity_roles()
    async with connection.transaction():
        plan = plan_grants(config, await read_privileges(connection, roles))
        for statement in plan.statements:
            try:
                await connection.execute(statement)
            except asyncpg.PostgresError as error:
                raise GrantsNotApplied(f"{statement}: {error}") from None
        left = plan_grants(config, await read_privileges(connection, roles)).statements
        if left:
            raise GrantsNotApplied(f"after the plan ran, it would still take: {'; '.join(left)}")
    return plan


def excess_message(plan: RolePlan) -> str:
    """One line for the log: the role, its identities and everything it holds beyond them."""
    listed = "; ".join(excess.describe() for excess in plan.excess)
    message = (
        f"role {quoted(plan.role)} holds more than the rules of its identities ({', '.join(plan.identities)}) "
        f"allow: {listed} (gateway grants plan shows the fix)"
    )
    if plan.brokered:
        message += (
            f"; identities {', '.join(plan.brokered)} may take database logins of this role, whose sessions "
            "no policy checks: all of it is theirs"
        )
    return message


# ---------------------------------------------------------------------------- at start


async def report_excess_privileges(config: GatewayConfig, database: Database, metrics: GatewayMetrics) -> None:
    """Read what the identity roles hold (as the gateway's login: reading the catalog needs no
    privileges), log one warning per role holding more than its rules allow, and set the
    `gateway_role_excess_privileges` gauge. A failure is logged, never raised: the gateway's
    own lock still holds."""
    try:
        async with database.connection() as connection:
            privileges = await read_privileges(connection, config.identity_roles())
        plan = plan_grants(config, privileges)
    except Exception as error:
        logger.warning("identity roles' privileges not checked (%s: %s)", type(error).__name__, error)
        return
    for role in plan.roles:
        metrics.observe_role_excess(role.role, len(role.excess))
        if role.excess:
            logger.warning(excess_message(role))

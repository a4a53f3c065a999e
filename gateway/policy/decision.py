"""Facts + an identity's rules -> a decision with a reason a developer can act on.

Owns name resolution against the identity's pinned search path, rule matching per
(kind, table), and the function and cast checks. It never parses SQL.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.config import RuleConfig
from gateway.identity import Identity
from gateway.policy.analysis import SAFE_CAST_TYPES
from gateway.policy.facts import StatementFacts, TableAccess, TableName
from gateway.policy.functions import is_builtin_safe, is_denied, unqualified

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})


@dataclass(frozen=True)
class Decision:
    allowed: bool
    identity: str
    kind: str | None
    tables: tuple[str, ...]
    functions: tuple[str, ...]
    reason: str | None = None
    category: str | None = None  # stable name of the reason's class, None when allowed

    def as_json(self) -> dict:
        return {
            "allowed": self.allowed,
            "identity": self.identity,
            "kind": self.kind,
            "tables": list(self.tables),
            "columns": [],
            "functions": list(self.functions),
            "reason": self.reason,
        }


class _Refused(Exception):
    def __init__(self, category: str, reason: str) -> None:
        self.category = category
        self.reason = reason


def resolve_table(name: TableName, schemas: tuple[str, ...]) -> list[str]:
    """The qualified names an unqualified reference may mean. With `pg_catalog` first on the
    pinned search path, a `pg_` name is a catalog relation (every relation in pg_catalog is
    prefixed so). With several schemas, the name could mean any of them: all must be allowed."""
    if name.schema is not None:
        return [f"{name.schema}.{name.name}"]
    if name.name.startswith("pg_"):
        return [f"pg_catalog.{name.name}"]
    return [f"{schema}.{name.name}" for schema in schemas]


def rule_covers(rule: RuleConfig, kind: str, qualified: str) -> bool:
    if kind not in rule.allow:
        return False
    schema = qualified.split(".", 1)[0]
    for pattern in rule.tables:
        if pattern == qualified:
            return True
        if pattern.endswith(".*") and pattern[:-2] == schema and schema not in SYSTEM_SCHEMAS:
            return True
    return False


def decide(identity: Identity, facts: StatementFacts) -> Decision:
    resolved = sorted({q for access in facts.accesses for q in resolve_table(access.table, identity.schemas)})
    functions = tuple(sorted(facts.functions))
    try:
        if facts.denial is not None:
            raise _Refused(facts.denial.category, facts.denial.message)
        for access in sorted(facts.accesses):
            _check_access(identity, access)
        for function in functions:
            _check_function(identity, function)
        for cast in sorted(facts.casts):
            if unqualified(cast) not in SAFE_CAST_TYPES:
                raise _Refused("cast", f"a cast to {cast} is not allowed (only built-in scalar types)")
    except _Refused as refused:
        return Decision(False, identity.name, facts.kind, tuple(resolved), functions, refused.reason, refused.category)
    return Decision(True, identity.name, facts.kind, tuple(resolved), functions)


def _check_access(identity: Identity, access: TableAccess) -> None:
    who = f'identity "{identity.name}"'
    for qualified in resolve_table(access.table, identity.schemas):
        if identity.read_only and access.kind != "select":
            raise _Refused("read_only", f"{access.kind.upper()} on {qualified} is not allowed for {who} (read-only)")
        covering = [rule for rule in identity.rules if rule_covers(rule, access.kind, qualified)]
        if not covering:
            raise _Refused(
                "table",
                f"{access.kind.upper()} on {qualified} is not allowed for {who}; a rule with "
                f'allow = ["{access.kind}"] and tables = ["{qualified}"] would allow it',
            )
        if any(qualified in rule.columns for rule in covering):
            raise _Refused(
                "columns",
                f"{qualified} has column rules for {who}, which this version cannot enforce; "
                "statements on it are denied",
            )


def _check_function(identity: Identity, function: str) -> None:
    if function in identity.functions:
        return
    if is_denied(function):
        raise _Refused(
            "function",
            f"function {function} is on the deny list; only naming it exactly in the functions of "
            f'identity "{identity.name}" allows it',
        )
    if not is_builtin_safe(function):
        raise _Refused(
            "function",
            f'function {function} is not allowed for identity "{identity.name}"; add "{function}" '
            "to its functions to allow it",
        )

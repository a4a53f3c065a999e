"""Facts + an identity's rules (+ the catalog snapshot) -> a decision with a reason a
developer can act on.

Owns rule matching per (kind, table) and per column, the function checks (built-in safe
list, deny list, the identity's own functions, names a schema on the search path shadows)
and the cast check. Names are resolved by `gateway.policy.resolution`; nothing here parses
SQL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from functools import partial

from gateway.catalog import CatalogSnapshot
from gateway.config import RuleConfig
from gateway.identity import Identity
from gateway.policy.analysis import SAFE_CAST_TYPES
from gateway.policy.facts import StatementFacts, TableAccess
from gateway.policy.functions import is_builtin_safe, is_denied, unqualified
from gateway.policy.resolution import ColumnResolver, ColumnUse, resolve_table

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
    columns: tuple[str, ...] = ()  # "schema.table.column"; "schema.table.*" for every column
    # The statement may leave session state behind (DDL, or a function that is not a built-in
    # on the safe list): its connection gets a full reset before reuse.
    resets_session: bool = False

    def as_json(self) -> dict:
        return {
            "allowed": self.allowed,
            "identity": self.identity,
            "kind": self.kind,
            "tables": list(self.tables),
            "columns": list(self.columns),
            "functions": list(self.functions),
            "reason": self.reason,
        }


class _Refused(Exception):
    def __init__(self, category: str, reason: str) -> None:
        self.category = category
        self.reason = reason


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


def allowed_columns(identity: Identity, table: str, kinds: Iterable[str]) -> frozenset[str] | None:
    """The columns of `table` the identity may use for any of `kinds`: None for every column
    (a rule covering it without narrowing it), else the union of the rules' column lists."""
    allowed: set[str] = set()
    for rule in identity.rules:
        if any(rule_covers(rule, kind, table) for kind in kinds):
            if table not in rule.columns:
                return None
            allowed.update(rule.columns[table])
    return frozenset(allowed)


def decide(identity: Identity, facts: StatementFacts, catalog: CatalogSnapshot | None = None) -> Decision:
    """Never raises: a failure while judging is a denial too, never an error or a pass."""
    try:
        return _judge(identity, facts, catalog)
    except Exception as error:
        return Decision(
            False,
            identity.name,
            facts.kind,
            (),
            tuple(sorted(facts.functions)),
            reason=f"the statement could not be judged ({type(error).__name__})",
            category="internal",
        )


def _judge(identity: Identity, facts: StatementFacts, catalog: CatalogSnapshot | None) -> Decision:
    tables = sorted({q for access in facts.accesses for q in resolve_table(access.table, identity.schemas, catalog)})
    functions = tuple(sorted(facts.functions))
    uses = sorted(set(ColumnResolver(facts.columns, identity.schemas, catalog).uses()), key=_use_order)
    denied = partial(Decision, False, identity.name, facts.kind, tuple(tables), functions, columns=_column_names(uses))
    try:
        if facts.denial is not None:
            raise _Refused(facts.denial.category, facts.denial.message)
        for access in sorted(facts.accesses):
            _check_access(identity, access, catalog)
        for use in uses:
            _check_column(identity, use)
        runs_other_code = [_check_function(identity, function, catalog) for function in functions]
        for cast in sorted(facts.casts):
            if unqualified(cast) not in SAFE_CAST_TYPES:
                raise _Refused("cast", f"a cast to {cast} is not allowed (only built-in scalar types)")
    except _Refused as refused:
        return denied(reason=refused.reason, category=refused.category)
    resets = facts.kind == "ddl" or any(runs_other_code)
    return Decision(
        True, identity.name, facts.kind, tuple(tables), functions, columns=_column_names(uses), resets_session=resets
    )


def _use_order(use: ColumnUse) -> tuple[str, str, str]:
    return use.table, use.column or "", use.action


def _column_names(uses: list[ColumnUse]) -> tuple[str, ...]:
    return tuple(sorted({f"{use.table}.{use.column or '*'}" for use in uses}))


def _check_access(identity: Identity, access: TableAccess, catalog: CatalogSnapshot | None) -> None:
    who = f'identity "{identity.name}"'
    for qualified in resolve_table(access.table, identity.schemas, catalog):
        if identity.read_only and access.kind != "select":
            raise _Refused("read_only", f"{access.kind.upper()} on {qualified} is not allowed for {who} (read-only)")
        if not any(rule_covers(rule, access.kind, qualified) for rule in identity.rules):
            raise _Refused(
                "table",
                f"{access.kind.upper()} on {qualified} is not allowed for {who}; a rule with "
                f'allow = ["{access.kind}"] and tables = ["{qualified}"] would allow it',
            )


def _check_column(identity: Identity, use: ColumnUse) -> None:
    allowed = allowed_columns(identity, use.table, use.kinds)
    if allowed is None or (use.action != "every" and use.column in allowed):
        return
    who = f'identity "{identity.name}"'
    narrowed = f"its rules narrow {use.table} to {', '.join(sorted(allowed)) or 'no columns'}"
    if use.action == "every":
        raise _Refused(
            "columns",
            f"{use.detail} uses every column of {use.table}, which {who} may not: {narrowed}; name the columns instead",
        )
    if use.column is None:
        raise _Refused(
            "columns",
            f"an INSERT into {use.table} without a column list writes every column, which {who} may "
            f"not: {narrowed}; list the columns",
        )
    (kind,) = use.kinds if use.action == "write" else ("select",)
    verb = "writing" if use.action == "write" else "reading"
    raise _Refused(
        "columns",
        f"{verb} column {use.table}.{use.column} is not allowed for {who}: {narrowed}; a rule with "
        f'allow = ["{kind}"] and "{use.column}" in columns."{use.table}" would allow it',
    )


def _check_function(identity: Identity, function: str, catalog: CatalogSnapshot | None) -> bool:
    """Refuse a call the identity may not make; True when it may run something other than a
    built-in on the safe list."""
    who = f'identity "{identity.name}"'
    if is_denied(function) and function not in identity.functions:
        raise _Refused(
            "function",
            f"function {function} is on the deny list; only naming it exactly in the functions of {who} allows it",
        )
    defining = catalog.function_schemas(function, identity.schemas) if catalog and "." not in function else []
    for schema in defining:
        if f"{schema}.{function}" not in identity.functions:
            signature = catalog.signatures(schema, function)[0]
            raise _Refused(
                "function",
                f"function {function} also exists as {schema}.{function}({signature}) on the search path of {who}, "
                f"and PostgreSQL may pick it over the built-in; call pg_catalog.{function}(...) or add "
                f'"{schema}.{function}" to its functions to allow it',
            )
    if defining:
        return True  # every definition on the path is allowed by its qualified name
    if function in identity.functions:
        return not is_builtin_safe(function)
    if not is_builtin_safe(function):
        raise _Refused(
            "function",
            f'function {function} is not allowed for {who}; add "{function}" to its functions to allow it',
        )
    return False

"""Facts + an identity's rules (+ the catalog snapshot) -> a decision with a reason a
developer can act on.

Owns rule matching per (kind, table) and per column, the function checks (built-in safe
list, deny list, the identity's own functions, every function an unqualified call may
resolve to), the cast check, CASCADE, names the identity's own role could make resolve
elsewhere, and whether the statement may leave session state behind. Names are resolved by
`gateway.policy.resolution`; nothing here parses SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

from gateway.catalog import CATALOG_SCHEMA, CatalogSnapshot
from gateway.config import ApprovalConfig, RuleConfig
from gateway.identity import Identity
from gateway.policy.analysis import SAFE_CAST_TYPES
from gateway.policy.facts import UNDEFINED_TABLE, StatementFacts, TableAccess, TableName
from gateway.policy.functions import is_builtin_safe, is_denied, unqualified
from gateway.policy.resolution import ColumnResolver, ColumnUse, resolve_access, resolve_function

SYSTEM_SCHEMAS = frozenset({"pg_catalog", "information_schema"})
# Built-ins that can leave session settings behind (or a replication origin or temporary
# slot), or run SQL given as text, which can call anything: called by PostgreSQL on its own
# (a view, policy, trigger, rule or default calls them), they call for a full reset. Any
# function outside pg_catalog can do all of it. Advisory locks and sequence positions are
# released at the end of every transaction anyway (`gateway.db.session`).
SESSION_BUILTINS = frozenset(
    """
    set_config pg_replication_origin_session_setup pg_create_logical_replication_slot
    pg_create_physical_replication_slot query_to_xml query_to_xmlschema query_to_xml_and_xmlschema
    table_to_xml table_to_xmlschema table_to_xml_and_xmlschema cursor_to_xml cursor_to_xmlschema
    schema_to_xml schema_to_xmlschema schema_to_xml_and_xmlschema database_to_xml database_to_xmlschema
    database_to_xml_and_xmlschema ts_stat ts_rewrite
    """.split()
)


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
    # The statement may leave session state behind (DDL, a function that is not a built-in on
    # the safe list, or one PostgreSQL calls on its own for a relation it touches): its
    # connection gets a full reset before reuse.
    resets_session: bool = False
    # A statement PostgreSQL itself would refuse: its SQLSTATE and 1-based error position.
    sqlstate: str | None = None
    position: int | None = None
    # Allowed only once approved: some access is allowed by no rule but rules with `approval`.
    approval: ApprovalConfig | None = None

    def as_json(self) -> dict:
        return {
            "allowed": self.allowed,
            "identity": self.identity,
            "kind": self.kind,
            "tables": list(self.tables),
            "columns": list(self.columns),
            "functions": list(self.functions),
            "reason": self.reason,
            # What running it takes beyond the policy: who may approve it, within how long.
            "approval": None
            if self.approval is None
            else {"approvers": list(self.approval.approvers), "ttl": self.approval.ttl},
        }


class _Refused(Exception):
    def __init__(self, category: str, reason: str, *, sqlstate: str | None = None, position: int | None = None):
        self.category = category
        self.reason = reason
        self.sqlstate = sqlstate
        self.position = position


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


NOT_COVERED = None  # no rule of the kind covers the table


def allowed_columns(identity: Identity, table: str, kind: str) -> frozenset[str] | bool | None:
    """The columns of `table` the identity may use for `kind`: True for every column (a rule
    covers it without narrowing it), the union of the rules' column lists where they narrow
    it, or None when no rule of that kind covers the table at all."""
    allowed: set[str] = set()
    covered = False
    for rule in identity.rules:
        if rule_covers(rule, kind, table):
            if table not in rule.columns:
                return True
            covered = True
            allowed.update(rule.columns[table])
    return frozenset(allowed) if covered else NOT_COVERED


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
    tables = sorted({q for access in facts.accesses for q in resolve_access(access, identity.schemas, catalog)})
    functions = tuple(sorted(facts.functions))
    uses = sorted(set(ColumnResolver(facts.columns, identity.schemas, catalog).uses()), key=_use_order)
    columns = _column_names(identity, uses)
    denied = partial(Decision, False, identity.name, facts.kind, tuple(tables), functions, columns=columns)
    try:
        if facts.denial is not None:
            denial = facts.denial
            raise _Refused(denial.category, denial.message, sqlstate=denial.sqlstate, position=denial.position)
        for access in sorted(facts.accesses):
            _check_access(identity, access, facts, catalog)
        if facts.cascade:
            _check_cascade(identity, facts, catalog)
        for use in uses:
            _check_column(identity, use)
        runs_other_code = [_check_function(identity, function, catalog) for function in functions]
        for cast in sorted(facts.casts):
            if unqualified(cast) not in SAFE_CAST_TYPES:
                raise _Refused("cast", f"a cast to {cast} is not allowed (only built-in scalar types)")
    except _Refused as refused:
        return denied(
            reason=refused.reason, category=refused.category, sqlstate=refused.sqlstate, position=refused.position
        )
    resets = facts.kind == "ddl" or any(runs_other_code) or _runs_session_code(identity, facts, catalog)
    approval = _approval_needed(identity, facts, catalog)
    return Decision(
        True,
        identity.name,
        facts.kind,
        tuple(tables),
        functions,
        columns=columns,
        resets_session=resets,
        approval=approval,
    )


def _approval_needed(
    identity: Identity, facts: StatementFacts, catalog: CatalogSnapshot | None
) -> ApprovalConfig | None:
    """What approving the statement takes, or None when it runs without: an access that some
    rule without `approval` covers needs none; one that only rules with `approval` cover needs
    theirs. Several such accesses or rules combine (`ApprovalConfig.combined`)."""
    needed: ApprovalConfig | None = None
    for access in facts.accesses:
        for qualified in resolve_access(access, identity.schemas, catalog):
            covering = [rule for rule in identity.rules if rule_covers(rule, access.kind, qualified)]
            if any(rule.approval is None for rule in covering):
                continue
            for rule in covering:
                assert rule.approval is not None
                needed = rule.approval if needed is None else needed.combined(rule.approval)
    return needed


def _runs_session_code(identity: Identity, facts: StatementFacts, catalog: CatalogSnapshot | None) -> bool:
    """Whether PostgreSQL may call, on its own, a function that changes session state while it
    reads or writes a relation the statement touches (views, row-level-security policies,
    triggers, rules, defaults, checks: the snapshot's implicit calls)."""
    if catalog is None:
        return False
    for access in facts.accesses:
        for qualified in resolve_access(access, identity.schemas, catalog):
            schema, _, relation = qualified.partition(".")
            calls = catalog.implicit_calls(schema, relation, write=access.kind != "select")
            if any(_changes_session(function) for function in calls):
                return True
    return False


def _changes_session(function: str) -> bool:
    schema, _, name = function.rpartition(".")
    return schema != CATALOG_SCHEMA or name in SESSION_BUILTINS


def _use_order(use: ColumnUse) -> tuple[str, str, str]:
    return use.table, use.column or "", use.action


def _column_names(identity: Identity, uses: list[ColumnUse]) -> tuple[str, ...]:
    """The columns used: those written, and those read on tables the identity may read. Of a
    table it may not read, not even whether a column exists there is told."""
    shown = {
        f"{use.table}.{use.column or '*'}"
        for use in uses
        if use.action == "write" or allowed_columns(identity, use.table, "select") is not NOT_COVERED
    }
    return tuple(sorted(shown))


def _who(identity: Identity) -> str:
    return f'identity "{identity.name}"'


def _check_access(
    identity: Identity, access: TableAccess, facts: StatementFacts, catalog: CatalogSnapshot | None
) -> None:
    for qualified in resolve_access(access, identity.schemas, catalog):
        if identity.read_only and access.kind != "select":
            raise _Refused(
                "read_only", f"{access.kind.upper()} on {qualified} is not allowed for {_who(identity)} (read-only)"
            )
        if not any(rule_covers(rule, access.kind, qualified) for rule in identity.rules):
            if access.kind != "ddl" and _missing(access.table, identity, catalog):
                # PostgreSQL's own answer; nothing a rule could change.
                raise _Refused(
                    "missing_relation",
                    f'relation "{access.table}" does not exist',
                    sqlstate=UNDEFINED_TABLE,
                    position=facts.position_of(access.table),
                )
            raise _Refused(
                "table",
                f"{access.kind.upper()} on {qualified} is not allowed for {_who(identity)}; a rule with "
                f'allow = ["{access.kind}"] and tables = ["{qualified}"] would allow it',
            )
    if not access.creates:  # a name being created is not looked up
        _check_unqualified(identity, access.table, catalog)


def _missing(name: TableName, identity: Identity, catalog: CatalogSnapshot | None) -> bool:
    """Whether the snapshot knows no relation the name could mean."""
    if catalog is None:
        return False
    if name.schema is not None:
        return catalog.columns(name.schema, name.name) is None
    return catalog.find_relation(name.name, identity.schemas) is None


def _check_unqualified(identity: Identity, name: TableName, catalog: CatalogSnapshot | None) -> None:
    """An unqualified name the snapshot resolves to a schema after one the identity's own role
    can create objects in: a relation created there would take the name's place between two
    snapshots (the pattern of CVE-2018-1058), so the name must be written qualified."""
    if name.schema is not None or catalog is None:
        return
    resolved = catalog.find_relation(name.name, identity.schemas)
    if resolved is None or resolved == CATALOG_SCHEMA:
        return
    earlier = identity.schemas[: identity.schemas.index(resolved)]
    creatable = [schema for schema in earlier if catalog.can_create(identity.role, schema)]
    if creatable:
        raise _Refused(
            "search_path",
            f'{name} resolves to {resolved}.{name}, but role "{identity.role}" of {_who(identity)} can create '
            f"relations in {', '.join(creatable)}, which comes before {resolved} on its search path: a relation "
            f"created there would take its place; write {resolved}.{name}",
        )


def _check_cascade(identity: Identity, facts: StatementFacts, catalog: CatalogSnapshot | None) -> None:
    for access in sorted(facts.accesses):
        if access.kind != "ddl":
            continue
        for qualified in resolve_access(access, identity.schemas, catalog):
            if not any(rule.cascade and rule_covers(rule, "ddl", qualified) for rule in identity.rules):
                raise _Refused(
                    "cascade",
                    f"CASCADE on {qualified} also changes objects that depend on it, which no rule was asked "
                    f"about; a ddl rule for {qualified} with cascade = true would allow it",
                )


def _check_column(identity: Identity, use: ColumnUse) -> None:
    allowed = allowed_columns(identity, use.table, use.kind)
    if allowed is True:
        return
    if use.action == "write":
        _check_write(identity, use, allowed)
        return
    if allowed is NOT_COVERED:
        # Whether the column exists is not told: the identity may not read the table at all.
        raise _Refused(
            "columns",
            f"{_who(identity)} may not read {use.table}, and this statement reads it (a column read inside "
            f'an INSERT, UPDATE, DELETE or MERGE is a read too); a rule with allow = ["select"] and '
            f'tables = ["{use.table}"] would allow it',
        )
    narrowed = f"its select rules narrow {use.table} to {', '.join(sorted(allowed)) or 'no columns'}"
    if use.action == "every":
        raise _Refused(
            "columns",
            f"{use.detail} uses every column of {use.table}, which {_who(identity)} may not: {narrowed}; "
            "name the columns instead",
        )
    if use.column in allowed:
        return
    # A column the snapshot lacks may have been added since: denied like any other.
    raise _Refused(
        "columns",
        f"reading column {use.table}.{use.column} is not allowed for {_who(identity)}: {narrowed}; a rule with "
        f'allow = ["select"] and "{use.column}" in columns."{use.table}" would allow it',
    )


def _check_write(identity: Identity, use: ColumnUse, allowed: frozenset[str] | None) -> None:
    narrowed = f"its {use.kind} rules narrow {use.table} to {', '.join(sorted(allowed or ())) or 'no columns'}"
    if use.column is None:
        raise _Refused(
            "columns",
            f"an INSERT into {use.table} without a column list writes every column, which {_who(identity)} may "
            f"not: {narrowed}; list the columns",
        )
    if allowed and use.column in allowed:
        return
    raise _Refused(
        "columns",
        f"writing column {use.table}.{use.column} is not allowed for {_who(identity)}: {narrowed}; a rule with "
        f'allow = ["{use.kind}"] and "{use.column}" in columns."{use.table}" would allow it',
    )


def _check_function(identity: Identity, function: str, catalog: CatalogSnapshot | None) -> bool:
    """Refuse a call the identity may not make; True when it may run something other than a
    built-in on the safe list. Every function the call may resolve to must be allowed."""
    candidates = resolve_function(function, identity.schemas, catalog)
    for candidate in candidates:
        schema, _, name = candidate.rpartition(".")
        if schema != CATALOG_SCHEMA:
            _check_user_function(identity, function, candidate, catalog)
            continue
        listed = candidate in identity.functions or name in identity.functions
        if is_denied(name) and not listed:
            raise _Refused(
                "function",
                f"function {function} is on the deny list; only naming it exactly in the functions of {_who(identity)} "
                f'("{name}" or "{candidate}") allows it',
            )
        if not listed and not is_builtin_safe(name):
            raise _Refused(
                "function",
                f'function {function} is not allowed for {_who(identity)}; add "{name}" to its functions to allow it',
            )
    return not all(is_builtin_safe(candidate) for candidate in candidates)


def _check_user_function(identity: Identity, function: str, candidate: str, catalog: CatalogSnapshot | None) -> None:
    """A function outside pg_catalog runs only when listed by its qualified name."""
    if candidate in identity.functions:
        return
    if "." in function:
        raise _Refused(
            "function", f'function {function} is not allowed for {_who(identity)}; add "{function}" to its functions'
        )
    schema = candidate.rpartition(".")[0]
    signature = f"{candidate}({(catalog.signatures(schema, function) or ('',))[0] if catalog else ''})"
    if catalog is not None and catalog.defines_function(CATALOG_SCHEMA, function):
        raise _Refused(
            "function",
            f"function {function} also exists as {signature} on the search path of {_who(identity)}, and "
            f"PostgreSQL may pick it over the built-in; call pg_catalog.{function}(...) or add "
            f'"{candidate}" to its functions to allow it',
        )
    raise _Refused(
        "function",
        f'function {function} resolves to {signature} on the search path of {_who(identity)}; add "{candidate}" '
        "to its functions to allow it",
    )

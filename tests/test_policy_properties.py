"""Property-based tests of the statement analyser: generated statements, mangled
statements and arbitrary text never make it raise or run away, and nothing it allows is read
differently by PostgreSQL's own parser.

The generator is a small SQL grammar (SELECT, INSERT, UPDATE, DELETE, MERGE, WITH, set
operations) over table names that are quoted, qualified, shadowed by CTEs or in the catalog,
with functions from the safe list, the deny list and neither, casts, `$1..$3` with and without
spaces after commas, comments and dollar-quoted strings. Every allowed statement is read again
here, independently, from pglast's JSON; the runs are derandomised so CI sees the same cases.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pglast import parser as pg_parser

from gateway.config import PolicyConfig, parse_config
from gateway.identity import Identity
from gateway.policy import Decision, PolicyEngine, StatementFacts
from gateway.policy.analysis import analyze
from gateway.policy.facts import TableName

MAX_BYTES = PolicyConfig().max_statement_bytes
# A hang or explosion guard, not a speed test: the performance bars are the benchmarks' business (bench/).
CALL_CAP_SECONDS = 2.0

PROPERTY_SETTINGS = settings(
    deadline=None,  # timing is asserted per call below, with a cap meant for hangs
    derandomize=True,  # the same cases on every run, so a CI failure reproduces
    database=None,  # no example database: derandomising already replays a failure
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

CONFIG: dict[str, Any] = {
    "name": "policy-properties",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
    "identities": [
        {
            # Broad rules, so that many generated statements are allowed and cross-examined;
            # one deny-list function and one qualified function lifted by exact name.
            "name": "prober",
            "issuer": "dev",
            "role": "app_owner",
            "functions": ["pg_sleep", "my_schema.safe_fn"],
            "rules": [
                {"allow": ["select", "insert", "update", "delete", "merge"], "tables": ["public.*"]},
                {"allow": ["select"], "tables": ["app.*", "pg_catalog.pg_class", "information_schema.tables"]},
            ],
        }
    ],
}
PROBER = Identity.from_config(parse_config(CONFIG).identities[0])
ENGINE = PolicyEngine(PolicyConfig())

# ---------------------------------------------------------------------------- vocabulary

TABLES = [
    "orders",
    "customers",
    "ORDERS",
    '"orders"',
    '"Orders"',
    "public.orders",
    'public."customers"',
    '"public"."customers"',
    "app.items",
    "secrets",
    "pg_class",
    "pg_catalog.pg_class",
    "pg_catalog.pg_roles",
    "information_schema.tables",
    '"we""ird"',
    "örders",
]
# Names a CTE may take: some shadow tables above, so scoping decides what they mean.
CTE_NAMES = ["c", "recent", "orders", "customers", '"Orders"', "pg_class"]
SAFE_FUNCTIONS = ["lower", "upper", "count", "now", "length", "abs", "pg_catalog.lower", '"lower"',
                  "jsonb_build_object"]
DENIED_FUNCTIONS = ["pg_sleep", "pg_catalog.pg_sleep", "current_setting", "set_config", "nextval", "pg_read_file",
                    "lo_import", "pg_advisory_lock", "txid_current", "dblink"]
OTHER_FUNCTIONS = ["lcase", '"Lower"', "public.lower", "my_func", "my_schema.safe_fn"]
CAST_TYPES = ["int", "bigint", "text", "text[]", "numeric(10,2)", "jsonb", "double precision", "pg_catalog.text",
              "timestamp with time zone", "regclass", "public.mytype", "orders"]
COLUMNS = ["id", "status", "note", "o.id", "orders.id", '"Id"', "t.x", "excluded.status"]
STRINGS = ["'abc'", "''", "'it''s'", "E'a\\nb'", "'$1,$2'", "$$x$$", "$$ ; delete from secrets $$",
           "$tag$ it's $1; select 1 $tag$", "$a$ ' $a$", "'-- not a comment'", "'/* not either */'"]
ALIASES = ["x", "total", '"Orders"', "orders"]
OPERATORS = ["+", "-", "*", "/", "=", "<>", "<", ">=", "and", "or", "||", "->>", "->", "like", "is distinct from"]
# Mostly plain spaces; sometimes a newline, a tab or a comment where a space would do.
SEPARATORS = st.sampled_from([" "] * 8 + ["\n", "\t", "  ", " /* c */ ", "/**/", " -- $1,$2 ; x\n",
                                          " /* ; delete from secrets */ "])
PARAMS = st.sampled_from(["$1", "$2", "$3"])
COMMAS = st.sampled_from([",", ", ", " , ", ",\n"])
Draw = Callable[[st.SearchStrategy[Any]], Any]  # what `st.composite` hands its function
# Characters that end strings, comments, quotes and statements, PostgreSQL's tricky whitespace,
# and letters outside ASCII (a Fraktur capital U among them).
JUNK = st.sampled_from([*";'\"$()-/*\\,.:[]{}&|^~!?@#%`", "\x00", "\u00a0", "\u3000", "\ufeff", "é", "Ö", "\U0001d518",
                        "U&", "$$", "$1", "--", "/*", "*/", "\n"])


def glue(draw: Draw, parts: list[str]) -> str:
    """Parts of a statement joined by drawn separators."""
    text = parts[0]
    for part in parts[1:]:
        text += draw(SEPARATORS) + part
    return text


def listed(draw: Draw, items: list[str]) -> str:
    """A comma list whose commas are sometimes followed by a space (`$1,$2`) and sometimes not."""
    text = items[0]
    for item in items[1:]:
        text += draw(COMMAS) + item
    return text


# ---------------------------------------------------------------------------- expressions


@st.composite
def function_calls(draw: Draw, depth: int) -> str:
    name = draw(st.sampled_from(SAFE_FUNCTIONS + DENIED_FUNCTIONS + OTHER_FUNCTIONS))
    arguments = draw(st.lists(expressions(depth - 1), max_size=3))
    return f"{name}({listed(draw, arguments) if arguments else ''})"


@st.composite
def casts(draw: Draw, depth: int) -> str:
    value, type_name = draw(expressions(depth - 1)), draw(st.sampled_from(CAST_TYPES))
    if draw(st.booleans()):
        return f"({value})::{type_name}"
    return f"cast({value} as {type_name})"


@st.composite
def expressions(draw: Draw, depth: int = 2) -> str:
    atoms = st.one_of(
        PARAMS,
        st.sampled_from(COLUMNS),
        st.sampled_from(STRINGS),
        st.integers(-5, 1000).map(str),
        st.sampled_from(["null", "true", "current_date", "now()"]),
    )
    if depth <= 0:
        return draw(atoms)
    shape = draw(st.sampled_from(["atom", "atom", "call", "cast", "binary", "in", "subquery", "exists", "case"]))
    if shape == "call":
        return draw(function_calls(depth))
    if shape == "cast":
        return draw(casts(depth))
    if shape == "binary":
        left, right = draw(expressions(depth - 1)), draw(expressions(depth - 1))
        return glue(draw, [left, draw(st.sampled_from(OPERATORS)), right])
    if shape == "in":
        items = draw(st.lists(st.one_of(PARAMS, st.sampled_from(STRINGS)), min_size=1, max_size=3))
        return glue(draw, [draw(st.sampled_from(COLUMNS)), "in", f"({listed(draw, items)})"])
    if shape == "subquery":
        return f"({draw(selects(depth - 1))})"
    if shape == "exists":
        return glue(draw, ["exists", f"({draw(selects(depth - 1))})"])
    if shape == "case":
        condition, then, otherwise = (draw(expressions(depth - 1)) for _ in range(3))
        return glue(draw, ["case when", condition, "then", then, "else", otherwise, "end"])
    return draw(atoms)


# ---------------------------------------------------------------------------- FROM items


@st.composite
def tables(draw: Draw) -> str:
    """A relation name, or a CTE name (which may also be a table's), with an optional alias."""
    name = draw(st.sampled_from(TABLES + CTE_NAMES))
    alias = draw(st.sampled_from(["", " o", " as t", " c"]))
    return name + alias


@st.composite
def from_items(draw: Draw, depth: int) -> str:
    shape = draw(st.sampled_from(["table", "table", "join", "subquery", "lateral", "function"]))
    if shape == "join" and depth > 0:
        left, right = draw(tables()), draw(from_items(depth - 1))
        kind = draw(st.sampled_from(["join", "left join", "cross join", "full outer join"]))
        condition = "" if kind == "cross join" else f" on {draw(expressions(depth - 1))}"
        return glue(draw, [left, kind, right]) + condition
    if shape == "subquery" and depth > 0:
        return f"({draw(selects(depth - 1))}) as s"
    if shape == "lateral" and depth > 0:
        return glue(draw, ["lateral", f"({draw(selects(depth - 1))}) as l"])
    if shape == "function":
        return draw(function_calls(max(depth, 1))) + " as f"
    return draw(tables())


# ---------------------------------------------------------------------------- statements


@st.composite
def select_items(draw: Draw, depth: int) -> str:
    shape = draw(st.sampled_from(["expression", "expression", "aliased", "star"]))
    if shape == "star":
        return draw(st.sampled_from(["*", "o.*", "orders.*"]))
    if shape == "aliased":
        return f"{draw(expressions(depth))} as {draw(st.sampled_from(ALIASES))}"
    return draw(expressions(depth))


@st.composite
def selects(draw: Draw, depth: int = 2, locking: bool = False) -> str:
    """A SELECT; a locking clause only where one may stand (not inside a set operation)."""
    items = draw(st.lists(select_items(depth), min_size=1, max_size=3))
    parts = ["select", listed(draw, items)]
    if draw(st.booleans()):
        sources = draw(st.lists(from_items(depth), min_size=1, max_size=2))
        parts += ["from", listed(draw, sources)]
    if draw(st.booleans()):
        parts += ["where", draw(expressions(depth))]
    if draw(st.integers(0, 4)) == 0:
        parts += ["order by", draw(st.sampled_from(COLUMNS)), "limit", draw(PARAMS)]
    if locking and draw(st.integers(0, 3)) == 0:
        parts.append(draw(st.sampled_from(["for update", "for share", "for no key update skip locked"])))
    return glue(draw, parts)


@st.composite
def set_operations(draw: Draw, depth: int = 2) -> str:
    left, right = draw(selects(depth)), draw(selects(depth))
    operator = draw(st.sampled_from(["union", "union all", "intersect", "except all"]))
    if draw(st.booleans()):
        left, right = f"({left})", f"({right})"
    return glue(draw, [left, operator, right])


def returning(draw: Draw, depth: int) -> list[str]:
    if draw(st.booleans()):
        return []
    return ["returning", draw(st.sampled_from(["*", "id"])) if draw(st.booleans()) else draw(expressions(depth))]


@st.composite
def inserts(draw: Draw, depth: int = 2) -> str:
    parts = ["insert into", draw(st.sampled_from(TABLES + CTE_NAMES))]
    source = draw(st.sampled_from(["values", "values", "select", "default"]))
    if source == "values":
        rows = [f"({listed(draw, draw(st.lists(expressions(depth - 1), min_size=2, max_size=2)))})"
                for _ in range(draw(st.integers(1, 2)))]
        parts += ["(id, status)", "values", listed(draw, rows)]
    elif source == "select":
        parts += ["(id, status)", draw(selects(depth - 1))]
    else:
        parts.append("default values")
    conflict = draw(st.sampled_from(["", "", "on conflict do nothing",
                                     "on conflict (id) do update set status = excluded.status"]))
    if conflict:
        parts.append(conflict)
    return glue(draw, parts + returning(draw, depth - 1))


@st.composite
def updates(draw: Draw, depth: int = 2) -> str:
    parts = ["update", draw(tables()), "set", f"status = {draw(expressions(depth - 1))}"]
    if draw(st.booleans()):
        parts += ["from", draw(from_items(depth - 1))]
    if draw(st.booleans()):
        parts += ["where", draw(expressions(depth - 1))]
    return glue(draw, parts + returning(draw, depth - 1))


@st.composite
def deletes(draw: Draw, depth: int = 2) -> str:
    parts = ["delete from", draw(tables())]
    if draw(st.booleans()):
        parts += ["using", draw(from_items(depth - 1))]
    if draw(st.booleans()):
        parts += ["where", draw(expressions(depth - 1))]
    return glue(draw, parts + returning(draw, depth - 1))


@st.composite
def merges(draw: Draw, depth: int = 2) -> str:
    actions = draw(st.lists(st.sampled_from(["when matched then delete", "when matched then update set status = $1",
                                             "when not matched then insert (status) values ($2)",
                                             "when matched then do nothing"]), min_size=1, max_size=3))
    return glue(draw, ["merge into", draw(tables()), "using", draw(from_items(depth - 1)), "on",
                       draw(expressions(depth - 1)), *actions])


@st.composite
def cte_bodies(draw: Draw, depth: int) -> str:
    """A CTE body; sometimes a data-modifying statement, which counts as what it does."""
    body = draw(st.sampled_from([selects, selects, set_operations, inserts, updates, deletes]))
    return draw(body(depth))


@st.composite
def withs(draw: Draw, depth: int = 2) -> str:
    names = draw(st.lists(st.sampled_from(CTE_NAMES), min_size=1, max_size=3))
    ctes = [f"{name} as ({draw(cte_bodies(depth - 1))})" for name in names]
    main = draw(st.sampled_from([selects, selects, set_operations, inserts, updates, deletes]))
    keyword = "with recursive" if draw(st.integers(0, 3)) == 0 else "with"
    return glue(draw, [keyword, listed(draw, ctes), draw(main(depth - 1))])


STATEMENT_KINDS = {"set": set_operations, "insert": inserts, "update": updates, "delete": deletes, "merge": merges,
                   "with": withs}


@st.composite
def statements(draw: Draw) -> str:
    """One statement, sometimes framed: a leading comment, a trailing semicolon or comment,
    or a second statement (which must be denied)."""
    depth = draw(st.integers(1, 2))
    kind = draw(st.sampled_from(["select", "select", "set", "insert", "update", "delete", "merge", "with", "with"]))
    body = draw(selects(depth, locking=True) if kind == "select" else STATEMENT_KINDS[kind](depth))
    prefix = draw(st.sampled_from(["", "", "", "/* lead */ ", "-- lead\n", "\n  "]))
    suffix = draw(st.sampled_from(["", "", "", ";", " ;  ", " -- trail", "; select 1", ";delete from orders"]))
    return prefix + body + suffix


@st.composite
def mangled_statements(draw: Draw) -> str:
    """A generated statement with junk and random characters (any code point, lone surrogates
    included) spliced in at random places."""
    text = draw(statements())
    for _ in range(draw(st.integers(1, 4))):
        at = draw(st.integers(0, len(text)))
        junk = draw(st.one_of(JUNK, st.text(min_size=1, max_size=3)))
        text = text[:at] + junk + text[at:]
    return text


# Deep enough to pass Python's recursion limit in a recursive walk, shallow enough to be allowed.
NESTED_SUBQUERIES_ALLOWED = "select * from " + "(select * from " * 200 + "orders" + ") s" * 200


@st.composite
def deep_statements(draw: Draw) -> str:
    """Statements nested or repeated far past what callers send: the explosion guard."""
    depth = draw(st.integers(50, 3000))
    shape = draw(st.sampled_from(["parens", "subqueries", "not", "operators", "in-list", "ctes", "unions"]))
    if shape == "parens":
        return "select " + "(" * depth + "1" + ")" * depth
    if shape == "subqueries":
        return "select * from " + "(select * from " * depth + "orders" + ") s" * depth
    if shape == "not":
        return "select " + "not " * depth + "true"
    if shape == "operators":
        return "select " + "$1 + " * depth + "1"
    if shape == "in-list":
        return "select 1 from orders where id in (" + ",".join(f"${n % 3 + 1}" for n in range(depth)) + ")"
    if shape == "ctes":
        return "with " + ", ".join(f"c{n} as (select * from orders)" for n in range(depth)) + " select * from c0"
    return " union all ".join(["select id from orders"] * depth)


# ---------------------------------------------------------------------------- PostgreSQL's reading, done here


@dataclass
class PostgresReading:
    """An allowed statement as PostgreSQL's parser reads it, worked out independently of the
    analyser: relations with CTE references resolved by lexical scope, writes with their
    targets, function names, and whether a locking clause appears and what it surely locks."""

    kind: str
    relations: set[TableName] = field(default_factory=set)
    writes: set[tuple[str, TableName]] = field(default_factory=set)
    functions: set[str] = field(default_factory=set)
    locks: bool = False
    locked: set[TableName] = field(default_factory=set)  # relations named in a locking SELECT's FROM

    @property
    def write_kinds(self) -> set[str]:
        return {kind for kind, _ in self.writes}


ROOT_KINDS = {"SelectStmt": "select", "InsertStmt": "insert", "UpdateStmt": "update", "DeleteStmt": "delete",
              "MergeStmt": "merge"}
MERGE_ACTIONS = {"CMD_INSERT": "insert", "CMD_UPDATE": "update", "CMD_DELETE": "delete"}


def read_as_postgres(sql: str) -> PostgresReading:
    statements = orjson.loads(pg_parser.parse_sql_json(sql))["stmts"]
    assert len(statements) == 1, f"allowed, yet PostgreSQL reads {len(statements)} statements"
    statement = statements[0]
    ((root, _),) = statement["stmt"].items()
    reading = PostgresReading(ROOT_KINDS.get(root, root))
    _walk(statement["stmt"], reading)
    return reading


def _walk(root: Any, reading: PostgresReading) -> None:
    """Every node, with the CTE names in scope where it stands. A loop, not recursion: an
    allowed statement may nest deeper than Python's recursion limit."""
    stack: list[tuple[Any, frozenset[str]]] = [(root, frozenset())]
    while stack:
        node, ctes = stack.pop()
        if isinstance(node, list):
            stack.extend((item, ctes) for item in node)
            continue
        if not isinstance(node, dict):
            continue
        if "withClause" in node:
            ctes = _push_ctes(node["withClause"], ctes, stack)
        for key, value in node.items():
            if key == "withClause":
                continue
            if key == "lockingClause":
                reading.locks = True
                reading.locked |= _from_relations(node.get("fromClause", []), ctes)
                continue  # FOR UPDATE OF names FROM items, not relations
            if key == "RangeVar":
                _add_relation(value, ctes, reading)
            elif key == "FuncCall":
                reading.functions.add(".".join(part["String"]["sval"] for part in value["funcname"]))
            elif key in ROOT_KINDS and key != "SelectStmt":
                _add_write(key, value, reading)
            stack.append((value, ctes))


def _push_ctes(with_clause: dict, outer: frozenset[str], stack: list[tuple[Any, frozenset[str]]]) -> frozenset[str]:
    """A CTE sees the CTEs before it (all of them under RECURSIVE); the statement sees all."""
    entries = [cte["CommonTableExpr"] for cte in with_clause["ctes"]]
    names = [entry["ctename"] for entry in entries]
    for index, entry in enumerate(entries):
        visible = names if with_clause.get("recursive") else names[:index]
        stack.append((entry["ctequery"], outer | frozenset(visible)))
    return outer | frozenset(names)


def _from_relations(items: list, ctes: frozenset[str]) -> set[TableName]:
    """Relations named directly in a FROM list, joins included: the least a locking clause
    locks (PostgreSQL also reaches into sub-selects there)."""
    found: set[TableName] = set()
    for item in items:
        if "RangeVar" in item:
            name = _table(item["RangeVar"])
            if name.schema is not None or name.name not in ctes:
                found.add(name)
        elif "JoinExpr" in item:
            found |= _from_relations([item["JoinExpr"]["larg"], item["JoinExpr"]["rarg"]], ctes)
    return found


def _table(range_var: dict) -> TableName:
    # A catalog part would make a three-part name: kept visible so it can never compare equal.
    schema = ".".join(part for part in (range_var.get("catalogname"), range_var.get("schemaname")) if part)
    return TableName(schema or None, range_var["relname"])


def _add_relation(range_var: dict, ctes: frozenset[str], reading: PostgresReading) -> None:
    name = _table(range_var)
    if name.schema is None and name.name in ctes:
        return
    reading.relations.add(name)


def _add_write(node_name: str, body: dict, reading: PostgresReading) -> None:
    """A write's target is always a relation, never a CTE, whatever is in scope."""
    target = _table(body["relation"])
    reading.relations.add(target)
    kind = ROOT_KINDS[node_name]
    reading.writes.add((kind, target))
    if kind == "insert" and (body.get("onConflictClause") or {}).get("action") == "ONCONFLICT_UPDATE":
        reading.writes.add(("update", target))
    for clause in body.get("mergeWhenClauses", []):
        action = MERGE_ACTIONS.get(clause["MergeWhenClause"]["commandType"])
        if action:
            reading.writes.add((action, target))


def must_be_judged(name: TableName, schemas: tuple[str, ...]) -> set[str]:
    """The relations a name certainly reaches on the pinned search path `pg_catalog, <schemas>`,
    with no catalog snapshot to look in: every relation in pg_catalog is named `pg_…`, so a
    `pg_` name reaches the catalog's; any other unqualified name may be in any schema."""
    if name.schema is not None:
        return {f"{name.schema}.{name.name}"}
    if name.name.startswith("pg_"):
        return {f"pg_catalog.{name.name}"}
    return {f"{schema}.{name.name}" for schema in schemas}


def may_be_judged(name: TableName, schemas: tuple[str, ...]) -> set[str]:
    """Every relation a name could reach on that path: what a decision may report for it."""
    if name.schema is not None:
        return {f"{name.schema}.{name.name}"}
    return {f"{schema}.{name.name}" for schema in ("pg_catalog", *schemas)}


# ---------------------------------------------------------------------------- the properties


def timed(call: Callable[[], Any]) -> Any:
    started = time.perf_counter()
    result = call()
    elapsed = time.perf_counter() - started
    assert elapsed < CALL_CAP_SECONDS, f"took {elapsed:.2f}s"
    return result


def judge(sql: str) -> tuple[StatementFacts, Decision]:
    """Analysis and decision, each timed; neither may raise, and a denial always says why."""
    facts = timed(lambda: analyze(sql, MAX_BYTES))
    assert facts.denial is not None or facts.kind is not None
    if facts.denial is not None:
        # Failing closed on a crash is right, but a crash is a bug all the same.
        assert facts.denial.category != "internal", facts.denial.message
    engine_facts, decision = timed(lambda: ENGINE.decide(PROBER, sql))
    assert engine_facts == facts
    if not decision.allowed:
        assert decision.reason and decision.category
    return facts, decision


def assert_postgres_agrees(sql: str, facts: StatementFacts, decision: Decision) -> None:
    """An allowed statement means to PostgreSQL exactly what the decision says it means."""
    reading = read_as_postgres(sql)
    assert reading.kind == decision.kind
    assert reading.relations == set(facts.tables)
    reported = set(decision.tables)
    for name in reading.relations:
        assert must_be_judged(name, PROBER.schemas) <= reported
    assert reported <= set().union(*(may_be_judged(name, PROBER.schemas) for name in reading.relations))
    assert reading.functions <= set(decision.functions)
    accesses = {(access.kind, access.table) for access in facts.accesses}
    assert reading.writes <= accesses
    analysed_writes = {kind for kind, _ in accesses} - {"select"}
    assert {("update", name) for name in reading.locked} <= accesses  # locking needs update
    if reading.locks:  # and may lock more than the analyser can be sure of: over-marking denies more
        assert reading.write_kinds <= analysed_writes <= reading.write_kinds | {"update"}
    else:
        assert analysed_writes == reading.write_kinds


def check(sql: str) -> Decision:
    facts, decision = judge(sql)
    if decision.allowed:
        assert_postgres_agrees(sql, facts, decision)
    return decision


def test_generated_statements_are_judged_as_postgres_reads_them() -> None:
    allowed_kinds: set[str | None] = set()

    @settings(PROPERTY_SETTINGS, max_examples=250)
    @given(statements())
    def judged_as_postgres_reads_them(sql: str) -> None:
        decision = check(sql)
        if decision.allowed:
            allowed_kinds.add(decision.kind)

    judged_as_postgres_reads_them()
    # The agreement checks are only as good as the allowed statements they met.
    assert {"select", "insert", "update", "delete", "merge"} <= allowed_kinds


@settings(PROPERTY_SETTINGS, max_examples=150)
@given(mangled_statements())
def test_mangled_statements_never_raise_and_never_pass_misread(sql: str) -> None:
    check(sql)


@settings(PROPERTY_SETTINGS, max_examples=250)
@given(st.text(max_size=200))
def test_arbitrary_text_never_raises(sql: str) -> None:
    check(sql)


@settings(PROPERTY_SETTINGS, max_examples=25)
@given(deep_statements())
@example(NESTED_SUBQUERIES_ALLOWED)
def test_deep_or_long_statements_finish_within_the_cap(sql: str) -> None:
    check(sql)


# ---------------------------------------------------------------------------- what the generator found


def test_qualified_and_unqualified_names_in_one_statement_are_judged() -> None:
    """Once raised TypeError in `decide` (an unqualified name's None schema cannot be ordered
    against a qualified one's): the gateway answered 500."""
    _, decision = ENGINE.decide(PROBER, "select * from orders o join public.customers c on c.id = o.customer_id")
    assert decision.allowed, decision.reason
    assert decision.tables == ("public.customers", "public.orders")


def test_non_ascii_text_before_a_parameter_is_analysed() -> None:
    """Once failed with ValueError: pglast's token offsets are characters, and were read as
    UTF-8 byte offsets, so everyday statements like this one were denied."""
    facts, decision = ENGINE.decide(PROBER, "select id from customers where name = 'Zoë' and country = $1")
    assert decision.allowed, decision.reason
    assert facts.params_used == {1}

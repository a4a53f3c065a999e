"""A small grammar of SQL over the oracle schema, for the differential test against
PostgreSQL (`test_policy_oracle.py`).

It writes statements a caller could send — reads and writes, joins, subqueries at every
position, CTEs, derived tables with aliases and column aliases, casts (also to type names
that are column names), set operations, ORDER BY and GROUP BY by name and by position,
window clauses, RETURNING, ON CONFLICT and MERGE — typed, so that most are valid and reach
PostgreSQL's privilege checks rather than failing in parse analysis. Every column of every
table is used, visible and hidden ones alike: which are hidden depends on the identity
judging the statement, not on the grammar. Deterministic for a given seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

SCHEMA = "oracle"
# table -> column -> type; every type has literals, functions and casts below.
TABLES: dict[str, dict[str, str]] = {
    "customers": {"id": "int", "tenant": "text", "name": "text", "email": "text", "ssn": "text", "country": "text"},
    "orders": {"id": "int", "customer_id": "int", "status": "text", "total": "numeric", "note": "text",
               "date": "date"},
    "payments": {"id": "int", "order_id": "int", "amount": "numeric", "secret": "text", "name": "text"},
}  # fmt: skip
SETUP_SQL = f"""
DROP SCHEMA IF EXISTS {SCHEMA} CASCADE;
CREATE SCHEMA {SCHEMA};
CREATE TABLE {SCHEMA}.customers (id int PRIMARY KEY, tenant text NOT NULL, name text, email text UNIQUE,
                                 ssn text, country text);
CREATE TABLE {SCHEMA}.orders (id int PRIMARY KEY, customer_id int, status text, total numeric, note text,
                              date date);
CREATE TABLE {SCHEMA}.payments (id int PRIMARY KEY, order_id int, amount numeric, secret text, name text);
INSERT INTO {SCHEMA}.customers VALUES (1, 'acme', 'Ada', 'ada@example.com', '123-45-6789', 'GB'),
                                      (2, 'globex', 'Grace', 'grace@example.com', '987-65-4321', 'US');
INSERT INTO {SCHEMA}.orders VALUES (1, 1, 'new', 12.50, 'first', '2026-01-02'),
                                   (2, 2, 'shipped', 3.00, NULL, '2026-02-03');
INSERT INTO {SCHEMA}.payments VALUES (1, 1, 12.50, 'tok_1', 'card'), (2, 2, 3.00, 'tok_2', 'wire');
"""

LITERALS = {
    "int": ["1", "2", "0", "42"],
    "text": ["'new'", "'Ada'", "'x'", "'GB'", "''"],
    "numeric": ["1.5", "3.00", "0"],
    "date": ["date '2026-01-02'", "'2026-03-04'::date"],
}
# Names an expression may be given, or a bare name may look for: every column name, type
# names that are column names too, and what PostgreSQL names expressions.
PROBE_NAMES = sorted({*(c for cols in TABLES.values() for c in cols), "nullif", "coalesce", "lower", "text",
                      "case", "row", "array", "exists", "greatest", "int4", "x"})  # fmt: skip
# Expressions with a name of their own or none, for the name-capture pattern: a derived
# table's column named one way by PostgreSQL and maybe another by a careless analyser.
NAMED_EXPRESSIONS = [
    "nullif('a', 'b')", "coalesce('a', 'b')", "greatest('a', 'b')", "least('a', 'b')", "lower('A')",
    "'a'", "1", "(1 + 1)", "array['a']", "row('a')", "exists (select 1)", "current_user", "current_date",
    "(select 'a' as {name})", "(select 'a')", "case when true then 'a' end", "case when true then 'a' else 'b' end",
    "'a' collate \"C\"", "(select {name} from {schema}.customers limit 1)",
]  # fmt: skip
# The same for dates: a cast to `date` names the column after the type only when the
# argument has no name of its own.
NAMED_DATES = ["nullif(current_date, date '2026-01-01')", "coalesce(current_date, current_date)",
               "greatest(current_date, current_date)", "'2026-01-01'", "current_date",
               "(select max(date) from {schema}.orders)"]  # fmt: skip
CAST_TYPES = ["name", "text", "varchar", "int", "date", "numeric"]
RESERVED = frozenset({"case", "array", "row", "exists", "greatest"})  # quoted where used as names
# Casts PostgreSQL has (a value that does not fit fails when the statement runs, after the
# privilege checks): to text from anything, from text to anything, between the numbers.
CASTABLE_FROM = {"text": ["int", "text", "numeric", "date"], "int": ["text", "int", "numeric"],
                 "numeric": ["text", "int", "numeric"], "date": ["text", "date"]}  # fmt: skip
TEXT_CASTS = ["text", "name::text", "varchar"]


@dataclass
class Source:
    """Something in FROM: its name for qualifying, and its columns with their types."""

    alias: str
    columns: dict[str, str]


@dataclass
class Scope:
    sources: list[Source] = field(default_factory=list)
    parent: Scope | None = None

    def visible(self) -> list[tuple[Scope, Source]]:
        level: Scope | None = self
        found = []
        while level is not None:
            found += [(level, source) for source in level.sources]
            level = level.parent
        return found


class Grammar:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)
        self._aliases = 0

    # ------------------------------------------------------------------ helpers

    def chance(self, p: float) -> bool:
        return self.random.random() < p

    def pick(self, items: list) -> object:
        return self.random.choice(items)

    def alias(self, stem: str) -> str:
        self._aliases += 1
        return f"{stem}{self._aliases}"

    def table_ref(self) -> tuple[str, str]:
        table = str(self.pick(list(TABLES)))
        return table, (f"{SCHEMA}.{table}" if self.chance(0.3) else table)

    # ------------------------------------------------------------------ expressions

    def column(self, scope: Scope, type_: str | None) -> str | None:
        """A reference to a visible column of the type, bare where the name is unique at its
        innermost level and in the whole scope, qualified otherwise."""
        candidates = [
            (level, source, name)
            for level, source in scope.visible()
            for name, column_type in source.columns.items()
            if type_ is None or column_type == type_
        ]
        if not candidates:
            return None
        _, source, name = self.random.choice(candidates)
        same_name = [s for _, s in scope.visible() if name in s.columns]
        if len(same_name) == 1 and self.chance(0.5):
            return name
        return f"{source.alias}.{name}"

    def literal(self, type_: str) -> str:
        return str(self.pick(LITERALS[type_]))

    def expression(self, scope: Scope, type_: str, depth: int) -> str:
        if depth <= 0 or self.chance(0.35):
            return self.column(scope, type_) or self.literal(type_)
        shape = self.pick(["column", "function", "cast", "scalar", "case", "capture", "capture", "literal"])
        if shape == "function":
            return self.function(scope, type_, depth)
        if shape == "cast":
            source_type = str(self.pick(CASTABLE_FROM[type_]))
            target = {"int": "int", "numeric": "numeric", "date": "date"}.get(type_) or self.pick(TEXT_CASTS)
            return f"({self.expression(scope, source_type, depth - 1)})::{target}"
        if shape == "scalar":
            return self.scalar_subquery(scope, type_, depth)
        if shape == "case":
            return (
                f"case when {self.condition(scope, depth - 1)} then {self.expression(scope, type_, depth - 1)} "
                f"else {self.expression(scope, type_, depth - 1)} end"
            )
        if shape == "capture" and type_ == "text":
            return self.capture(scope, depth)
        if shape == "literal":
            return self.literal(type_)
        return self.column(scope, type_) or self.literal(type_)

    def function(self, scope: Scope, type_: str, depth: int) -> str:
        inner = self.expression(scope, type_, depth - 1)
        text = self.expression(scope, "text", depth - 1)
        if type_ == "text":
            return str(self.pick([f"lower({inner})", f"upper({inner})", f"coalesce({inner}, 'x')",
                                  f"nullif({inner}, 'y')", f"concat({inner}, {text})", f"({inner} || 'z')",
                                  f"greatest({inner}, 'a')"]))  # fmt: skip
        if type_ == "int":
            return str(self.pick([f"abs({inner})", f"({inner} + 1)", f"length({text})", f"coalesce({inner}, 0)"]))
        if type_ == "numeric":
            return str(self.pick([f"round({inner})", f"({inner} * 2)", f"coalesce({inner}, 0)"]))
        return str(self.pick([f"({inner} + 1)", f"coalesce({inner}, current_date)"]))

    def scalar_subquery(self, scope: Scope, type_: str, depth: int) -> str:
        table, ref = self.table_ref()
        inner = Scope([Source(self.alias("s"), TABLES[table])], scope)
        ref_alias = inner.sources[0].alias
        column = self.column(inner, type_) or self.literal(type_)
        where = f" where {self.condition(inner, depth - 1)}" if self.chance(0.5) else ""
        return f"(select {column} from {ref} {ref_alias}{where} limit 1)"

    def capture(self, scope: Scope, depth: int) -> str:
        """`(select <name> from (select <expression> [as name]) x)`: the bare name means the
        derived column if PostgreSQL named it so, else a column of an enclosing level, maybe
        one the identity may not read. The name is often what a careless analyser would call
        the expression (its cast's type), or a column in scope."""
        in_scope = [name for _, source in scope.visible() for name in source.columns]
        name = str(self.pick(in_scope if in_scope and self.chance(0.6) else PROBE_NAMES))
        cast = None
        if self.chance(0.3):
            cast = str(self.pick(["date", "text"]))
            expression = f"{str(self.pick(NAMED_DATES)).format(schema=SCHEMA)}::{cast}"
        else:
            expression = str(self.pick(NAMED_EXPRESSIONS)).format(name=self.pick(PROBE_NAMES), schema=SCHEMA)
            if self.chance(0.5):
                cast = str(self.pick(CAST_TYPES[:3]))
                expression = f"{expression}::{cast}"
        if cast is not None and self.chance(0.5):
            name = cast
        named = f" as {quoted(str(self.pick(PROBE_NAMES)))}" if self.chance(0.2) else ""
        name = quoted(name)
        alias = self.alias("x")
        return f"(select ({name})::text from (select {expression}{named}) {alias} limit 1)"

    def condition(self, scope: Scope, depth: int) -> str:
        shape = self.pick(["compare", "compare", "like", "null", "exists", "in", "and"] if depth > 0 else ["compare"])
        if shape == "like":
            return f"{self.expression(scope, 'text', depth - 1)} like 'a%'"
        if shape == "null":
            return f"{self.expression(scope, str(self.pick(list(LITERALS))), depth - 1)} is not null"
        if shape == "exists":
            return f"exists ({self.select(scope, max(depth - 1, 0), columns=1)[0]})"
        if shape == "in":
            sql, types = self.select(scope, max(depth - 1, 0), columns=1)
            return f"{self.expression(scope, types[0], depth - 1)} in ({sql})"
        if shape == "and":
            return f"({self.condition(scope, depth - 1)} {self.pick(['and', 'or'])} {self.condition(scope, depth - 1)})"
        type_ = str(self.pick(list(LITERALS)))
        left, right = self.expression(scope, type_, depth), self.expression(scope, type_, depth)
        return f"{left} {self.pick(['=', '<>', '<', '>='])} {right}"

    # ------------------------------------------------------------------ FROM

    def from_items(self, scope: Scope, parent: Scope | None, depth: int, ctes: dict[str, dict[str, str]]) -> str:
        """Fill `scope` with one or two FROM items; returns the FROM clause's text."""
        items = [self.from_item(scope, parent, depth, ctes)]
        if self.chance(0.3):
            items.append(self.from_item(scope, parent, depth, ctes))
        return ", ".join(items)

    def from_item(self, scope: Scope, parent: Scope | None, depth: int, ctes: dict[str, dict[str, str]]) -> str:
        shape = self.pick(["table", "table", "table", "join", "derived", "cte", "lateral"]) if depth > 0 else "table"
        if shape == "join":
            left, right = self.table_item(scope, ctes), self.table_item(scope, ctes)
            kind = self.pick(["join", "left join", "join"])
            # ON sees the join's two sides only.
            return f"{left} {kind} {right} on {self.condition(Scope(scope.sources[-2:], parent), 0)}"
        if shape == "derived":
            sql, types = self.select(parent, depth - 1, columns=self.random.randint(1, 3), named=True)
            alias = self.alias("d")
            if self.chance(0.3):  # column aliases rename the outputs by position
                names = [f"c{i}" for i in range(len(types))]
                scope.sources.append(Source(alias, dict(zip(names, types, strict=True))))
                return f"({sql}) {alias}({', '.join(names)})"
            scope.sources.append(Source(alias, dict(types_with_names(sql, types))))
            return f"({sql}) {alias}"
        if shape == "lateral" and scope.sources:
            # A LATERAL subquery sees the FROM items before it.
            sql, types = self.select(Scope(list(scope.sources), parent), depth - 1, columns=1, named=True)
            alias = self.alias("l")
            scope.sources.append(Source(alias, dict(types_with_names(sql, types))))
            return f"lateral ({sql}) {alias}"
        return self.table_item(scope, ctes)

    def table_item(self, scope: Scope, ctes: dict[str, dict[str, str]]) -> str:
        """A table, or a CTE in scope, with an alias."""
        if ctes and self.chance(0.4):
            name = str(self.pick(list(ctes)))
            alias = self.alias("k")
            scope.sources.append(Source(alias, ctes[name]))
            return f"{name} {alias}"
        table, ref = self.table_ref()
        alias = self.alias(table[0])
        scope.sources.append(Source(alias, TABLES[table]))
        return f"{ref} {alias}"

    # ------------------------------------------------------------------ SELECT

    def select(
        self,
        outer: Scope | None,
        depth: int,
        *,
        columns: int | None = None,
        named: bool = False,
        ctes: dict[str, dict[str, str]] | None = None,
    ) -> tuple[str, list[str]]:
        """A SELECT and the types of its output columns. `named`: every output has a name of
        its own (an alias), as a derived table's columns must for the grammar to use them."""
        ctes = ctes or {}
        scope = Scope([], outer)
        from_clause = self.from_items(scope, outer, depth, ctes)
        count = columns or self.random.randint(1, 3)
        types = [str(self.pick(list(LITERALS))) for _ in range(count)]
        grouped = self.chance(0.15) and count == 1
        if grouped:
            key = self.expression(scope, types[0], 0)
            items = [f"{key} as g", "count(*) as n"]
            types = [types[0], "int"][:count]
            items = items[:count]
            sql = f"select {', '.join(items)} from {from_clause} group by {self.pick(['1', key, 'g'])}"
            return sql, types
        items = []
        for index, type_ in enumerate(types):
            expression = self.expression(scope, type_, depth)
            if type_ == "int" and self.chance(0.1):
                partition, order = self.column(scope, None) or "1", self.column(scope, None) or "1"
                expression = f"row_number() over (partition by {partition} order by {order})"
            alias = f" as o{index}" if named or self.chance(0.3) else ""
            items.append(expression + alias)
        sql = f"select {', '.join(items)} from {from_clause}"
        if self.chance(0.5):
            sql += f" where {self.condition(scope, depth)}"
        if self.chance(0.3):
            order = self.pick([str(self.random.randint(1, count)), self.column(scope, None) or "1",
                               *(f"o{i}" for i in range(count) if f" as o{i}" in sql)])  # fmt: skip
            sql += f" order by {order}"
        if self.chance(0.2):
            sql += " limit 5"
        return sql, types

    def query(self, depth: int) -> str:
        """A whole statement."""
        shape = self.pick(["select", "select", "select", "setop", "with", "update", "delete", "insert", "merge"])
        if shape == "setop":
            left, types = self.select(None, depth)
            right = self.typed_select(types, depth)
            return f"({left}) {self.pick(['union', 'union all', 'except', 'intersect'])} ({right})"
        if shape == "with":
            body, types = self.select(None, depth - 1, named=True)
            name = self.alias("cte")
            columns = dict(types_with_names(body, types))
            main, _ = self.select(None, depth, ctes={name: columns})
            return f"with {name} as ({body}) {main}"
        if shape in ("update", "delete", "insert", "merge"):
            return getattr(self, shape)(depth)
        return self.select(None, depth)[0]

    # ------------------------------------------------------------------ writes

    def returning(self, scope: Scope, depth: int) -> str:
        if not self.chance(0.4):
            return ""
        items = [
            self.expression(scope, str(self.pick(list(LITERALS))), depth) for _ in range(self.random.randint(1, 2))
        ]
        return " returning " + ", ".join(items)

    def target(self) -> tuple[str, str, Scope, str]:
        table, ref = self.table_ref()
        alias = self.alias(table[0])
        return table, ref, Scope([Source(alias, TABLES[table])]), alias

    def assignments(self, table: str, scope: Scope, depth: int) -> str:
        columns = self.random.sample([c for c in TABLES[table] if c != "id"], self.random.randint(1, 2))
        return ", ".join(f"{c} = {self.expression(scope, TABLES[table][c], depth)}" for c in columns)

    def update(self, depth: int) -> str:
        table, ref, scope, alias = self.target()
        from_clause = ""
        if self.chance(0.3):
            from_clause = " from " + self.table_item(scope, {})
        sql = f"update {ref} {alias} set {self.assignments(table, scope, depth)}{from_clause}"
        if self.chance(0.7):
            sql += f" where {self.condition(scope, depth)}"
        return sql + self.returning(scope, depth)

    def delete(self, depth: int) -> str:
        _, ref, scope, alias = self.target()
        using = " using " + self.table_item(scope, {}) if self.chance(0.3) else ""
        sql = f"delete from {ref} {alias}{using}"
        if self.chance(0.7):
            sql += f" where {self.condition(scope, depth)}"
        return sql + self.returning(scope, depth)

    def insert(self, depth: int) -> str:
        table, ref = self.table_ref()
        columns = ["id", *self.random.sample([c for c in TABLES[table] if c != "id"], self.random.randint(0, 2))]
        if table == "customers" and "tenant" not in columns:
            columns.append("tenant")
        types = [TABLES[table][c] for c in columns]
        if self.chance(0.7):
            values = [
                self.literal("int") if c == "id" else self.expression(Scope(), t, 1)
                for c, t in zip(columns, types, strict=True)
            ]
            source = f"values ({', '.join(values)})"
        else:
            source = self.typed_select(types, depth)
        sql = f"insert into {ref} as t ({', '.join(columns)}) {source}"
        conflict = self.pick(["", "", " on conflict do nothing", " on conflict (id) do nothing", "update"])
        scope = Scope([Source("t", TABLES[table]), Source("excluded", TABLES[table])])
        if conflict == "update":
            set_column = str(self.pick([c for c in TABLES[table] if c != "id"]))
            value = self.pick([f"excluded.{set_column}", self.expression(scope, TABLES[table][set_column], depth - 1)])
            conflict = f" on conflict (id) do update set {set_column} = {value}"
            if self.chance(0.3):
                conflict += f" where {self.condition(scope, 0)}"
        return sql + conflict + self.returning(Scope([Source("t", TABLES[table])]), depth)

    def typed_select(self, types: list[str], depth: int) -> str:
        """A SELECT from a table whose outputs have the given types."""
        table, ref = self.table_ref()
        scope = Scope([Source(self.alias("s"), TABLES[table])])
        items = [self.expression(scope, t, max(depth - 1, 0)) for t in types]
        return f"select {', '.join(items)} from {ref} {scope.sources[0].alias}"

    def merge(self, depth: int) -> str:
        table, ref, scope, alias = self.target()
        source = self.table_item(scope, {})
        actions = []
        if self.chance(0.7):
            actions.append(f"when matched then update set {self.assignments(table, scope, 0)}")
        if self.chance(0.4):
            actions.append("when matched then delete")
        if self.chance(0.5) or not actions:
            source_scope = Scope(scope.sources[1:])
            actions.append(f"when not matched then insert (id) values ({self.expression(source_scope, 'int', 0)})")
        return f"merge into {ref} {alias} using {source} on {self.condition(scope, 0)} {' '.join(actions)}"


def quoted(name: str) -> str:
    return f'"{name}"' if name in RESERVED else name


def types_with_names(sql: str, types: list[str]) -> list[tuple[str, str]]:
    """The output names of a SELECT the grammar made with `named=True` (o0, o1, ...), or of a
    grouped one (g, n)."""
    if sql.startswith("select ") and " as g" in sql:
        return list(zip(["g", "n"], types, strict=False))
    return [(f"o{i}", type_) for i, type_ in enumerate(types)]

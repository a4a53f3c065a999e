"""Column references in PostgreSQL's own parse tree, with the query levels that resolve them.

Owns the identity-independent half of column rules: every source of every query level (FROM
items, write targets, `excluded`, RETURNING's `old`/`new`), every column reference as
written, every written column, and the uses of whole rows no name shows (NATURAL JOIN,
column aliases on a relation). Visibility follows PostgreSQL's parser: a subquery in FROM
sees the enclosing levels but not its siblings unless LATERAL; a JOIN's ON sees only the
join's two sides; a CTE body sees the levels around its WITH. Which relation a name reaches
depends on the identity's search path and the catalog, so `gateway.policy.resolution`
finishes the job per identity.
"""

from __future__ import annotations

from gateway.policy.facts import (
    ColumnFacts,
    ColumnRef,
    ColumnWrite,
    Denial,
    Scope,
    Source,
    TableName,
    WholeRow,
)
from gateway.policy.naming import figure_name
from gateway.policy.pgtree import LEAF_NODES, entries, names
from gateway.policy.wording import node_title

# Output column names of a query, in order; None for one whose name cannot be told (and a
# None output for a query whose width cannot be told, e.g. `SELECT *`).
Output = tuple[str | None, ...] | None
Ctes = dict[str, Output]

QUERY_NODES = frozenset({"SelectStmt", "InsertStmt", "UpdateStmt", "DeleteStmt", "MergeStmt"})
FROM_NODES = frozenset({"RangeVar", "RangeSubselect", "RangeFunction", "JoinExpr", "RangeTableSample"})
RETURNING_ALIASES = ("old", "new")  # PostgreSQL 18: RETURNING old.x, new.x
# The fields `_ColumnWalker.expression` acts on, and those it does not enter: sub-links are
# left to the query walk, and leaf nodes hold none of them.
EXPRESSION_FIELDS = frozenset({"ColumnRef", "SubLink"}) | QUERY_NODES | FROM_NODES
EXPRESSION_STOP = frozenset({"SubLink"}) | LEAF_NODES


def column_facts(root_name: str, root: dict) -> ColumnFacts:
    """The column facts of one statement (PostgreSQL's root node and its body)."""
    walker = _ColumnWalker()
    if root_name in QUERY_NODES:
        walker.query({root_name: root}, None, {})
    elif root_name in ("CreateTableAsStmt", "ViewStmt"):
        walker.query(root["query"], None, {})
    return walker.facts()


def _fields(column_ref: dict) -> tuple[str, ...]:
    return tuple(["*" if "A_Star" in field else field["String"]["sval"] for field in column_ref.get("fields", [])])


def _is_star(node: dict | None) -> bool:
    return bool(node) and "ColumnRef" in node and _fields(node["ColumnRef"])[-1] == "*"


def _bare_name(node: dict | None) -> str | None:
    """`name` when the node is a one-part column reference."""
    fields = _fields(node["ColumnRef"]) if node and "ColumnRef" in node else ()
    return fields[0] if len(fields) == 1 and fields[0] != "*" else None


def _known(output: Output) -> frozenset[str]:
    """The output names that are certain."""
    return frozenset(name for name in output or () if name)


def _renamed(output: Output, aliases: tuple[str, ...]) -> Output:
    """Column aliases rename a query's outputs by position."""
    if not aliases:
        return output
    if output is None:
        return (*aliases, None)  # the columns past the aliases keep names not known here
    return (*aliases, *output[len(aliases) :])


class _ColumnWalker:
    def __init__(self) -> None:
        self.sources: list[Source] = []
        self.scopes: list[Scope] = []
        self.references: list[ColumnRef] = []
        self.writes: list[ColumnWrite] = []
        self.whole_rows: list[WholeRow] = []
        # The output names of every subquery walked, by the id of its parse node: a scalar
        # subquery names the select-list entry it stands in.
        self._outputs: dict[int, Output] = {}

    def facts(self) -> ColumnFacts:
        return ColumnFacts(
            tuple(self.sources), tuple(self.scopes), tuple(self.references), tuple(self.writes), tuple(self.whole_rows)
        )

    def _source(self, source: Source) -> int:
        self.sources.append(source)
        return len(self.sources) - 1

    def _scope(self, sources: tuple[int, ...] | list[int], parent: int | None) -> int:
        self.scopes.append(Scope(tuple(sources), parent))
        return len(self.scopes) - 1

    # ------------------------------------------------------------------ queries

    def query(self, node: dict, parent: int | None, ctes: Ctes, *, exists: bool = False) -> Output:
        """Walk one query (a SELECT, or a data-modifying statement in a CTE) whose enclosing
        level is `parent`; return its output column names."""
        ((kind, body),) = node.items()
        if kind == "SelectStmt":
            output = self._outputs[id(node)] = self.select(body, parent, ctes, exists=exists)
            return output
        handlers = {
            "InsertStmt": self.insert,
            "UpdateStmt": self.update,
            "DeleteStmt": self.delete,
            "MergeStmt": self.merge,
        }
        if kind not in handlers:
            raise Denial("syntax", f"unsupported query: {node_title(kind)}")
        return handlers[kind](body, parent, self.with_(body.get("withClause"), parent, ctes))

    def with_(self, clause: dict | None, parent: int | None, ctes: Ctes) -> Ctes:
        """CTE names visible to the query and, in order (all at once when RECURSIVE), to the
        bodies; a body sees the levels around its WITH, not the query's own FROM."""
        if not clause:
            return ctes
        definitions = [item["CommonTableExpr"] for item in clause.get("ctes", [])]
        visible = dict(ctes)
        if clause.get("recursive"):
            for definition in definitions:
                visible[definition["ctename"]] = None
        for entry in definitions:
            output = self.query(entry["ctequery"], parent, visible)
            visible[entry["ctename"]] = _renamed(output, names(entry.get("aliascolnames")))
        return visible

    def select(self, body: dict, parent: int | None, ctes: Ctes, *, exists: bool = False) -> Output:
        ctes = self.with_(body.get("withClause"), parent, ctes)
        if body.get("op", "SETOP_NONE") != "SETOP_NONE":
            output = self.select(body["larg"], parent, ctes)
            self.select(body["rarg"], parent, ctes)
            return self._tail(body, self._scope((), parent), output, ctes)
        if "valuesLists" in body:
            scope = self._scope((), parent)
            self.expression(body["valuesLists"], scope, ctes)
            width = len(body["valuesLists"][0]["List"]["items"])
            return self._tail(body, scope, tuple(f"column{n}" for n in range(1, width + 1)), ctes)
        scope = self._scope(self.from_clause(body.get("fromClause"), parent, ctes), parent)
        output = self.targets(body.get("targetList"), scope, ctes, reads_stars=not exists)
        self.expression([body.get("whereClause"), body.get("havingClause"), body.get("windowClause")], scope, ctes)
        # GROUP BY prefers a column of this level's FROM to an output column of the same name.
        self.expression(body.get("groupClause"), scope, ctes, _known(output))
        self._output_or_input(body.get("distinctClause"), scope, output, ctes)
        return self._tail(body, scope, output, ctes)

    def _tail(self, body: dict, scope: int, output: Output, ctes: Ctes) -> Output:
        """ORDER BY, LIMIT and OFFSET."""
        sort_keys = [item["SortBy"]["node"] for item in body.get("sortClause") or []]
        self._output_or_input(sort_keys, scope, output, ctes)
        self.expression([body.get("limitCount"), body.get("limitOffset")], scope, ctes)
        return output

    def _output_or_input(self, items: list | None, scope: int, output: Output, ctes: Ctes) -> None:
        """ORDER BY and DISTINCT ON keys: a bare name that is an output column means that column
        (SQL92), whose expression was walked with the select list; anything else is an
        expression over the level's inputs. A name matching no known output is judged as an
        input column even if an output whose name is not known might match it: over-reading
        only denies more."""
        outputs = _known(output)
        for node in items or []:
            if _bare_name(node) not in outputs:
                self.expression(node, scope, ctes)

    def targets(self, items: list[dict] | None, scope: int, ctes: Ctes, *, reads_stars: bool = True) -> Output:
        """A select list or RETURNING list. The `*` of an EXISTS subquery reads nothing:
        EXISTS looks only at whether a row comes back."""
        output: list[str | None] = []
        star = False
        for item in items or []:
            target = item["ResTarget"]
            value = target.get("val")
            if _is_star(value):
                star = True
                if not reads_stars:
                    continue
            self.expression(value, scope, ctes)
            output.append(target.get("name") or figure_name(value, self._subquery_output))
        return None if star else tuple(output)

    def _subquery_output(self, subselect: dict) -> Output:
        return self._outputs.get(id(subselect))

    # ------------------------------------------------------------------ data-modifying statements

    def _target(self, relation: dict) -> int:
        """The relation a statement writes (never a CTE, whatever the name)."""
        alias = relation.get("alias") or {}
        table = TableName.from_range_var(relation)
        return self._source(Source(alias.get("aliasname") or table.name, table, "aliasname" in alias))

    def insert(self, body: dict, parent: int | None, ctes: Ctes) -> Output:
        conflict = body.get("onConflictClause") or {}
        target = self._target(body["relation"])
        columns = [item["ResTarget"]["name"] for item in body.get("cols", [])]
        self.writes.extend(ColumnWrite(target, column, "insert") for column in columns)
        if "selectStmt" in body:
            if not columns:
                self.writes.append(ColumnWrite(target, None, "insert"))
            # The target is not visible to the VALUES or SELECT that feeds it.
            self.query(body["selectStmt"], parent, ctes)
        if conflict:
            self._on_conflict(conflict, target, parent, ctes)
        return self.returning(body.get("returningClause"), (target,), parent, ctes)

    def _on_conflict(self, conflict: dict, target: int, parent: int | None, ctes: Ctes) -> None:
        infer = conflict.get("infer") or {}
        target_only = self._scope((target,), parent)
        for element in infer.get("indexElems", []):
            index = element["IndexElem"]
            if index.get("name"):
                self.references.append(ColumnRef(target_only, (index["name"],)))
            self.expression(index.get("expr"), target_only, ctes)
        self.expression(infer.get("whereClause"), target_only, ctes)
        source = self.sources[target]
        excluded = self._source(Source("excluded", source.table, True))
        scope = self._scope((target, excluded), parent)
        self._assignments(conflict.get("targetList"), target, scope, ctes)
        self.expression(conflict.get("whereClause"), scope, ctes)

    def _assignments(self, items: list[dict] | None, target: int, scope: int, ctes: Ctes) -> None:
        """`SET column = value, ...`: each column written, each value read."""
        for item in items or []:
            assignment = item["ResTarget"]
            self.writes.append(ColumnWrite(target, assignment["name"], "update"))
            self.expression([assignment.get("val"), assignment.get("indirection")], scope, ctes)

    def update(self, body: dict, parent: int | None, ctes: Ctes) -> Output:
        target = self._target(body["relation"])
        sources = (target, *self.from_clause(body.get("fromClause"), parent, ctes))
        scope = self._scope(sources, parent)
        self._assignments(body.get("targetList"), target, scope, ctes)
        self.expression(body.get("whereClause"), scope, ctes)
        return self.returning(body.get("returningClause"), sources, parent, ctes)

    def delete(self, body: dict, parent: int | None, ctes: Ctes) -> Output:
        target = self._target(body["relation"])
        sources = (target, *self.from_clause(body.get("usingClause"), parent, ctes))
        self.expression(body.get("whereClause"), self._scope(sources, parent), ctes)
        return self.returning(body.get("returningClause"), sources, parent, ctes)

    def merge(self, body: dict, parent: int | None, ctes: Ctes) -> Output:
        clauses = [item["MergeWhenClause"] for item in body.get("mergeWhenClauses", [])]
        target = self._target(body["relation"])
        sources = (target, *self.from_item(body["sourceRelation"], [], parent, ctes))
        # Every action sees both sides here; where PostgreSQL shows only the source (INSERT
        # values), a name found in the target as well is only judged more strictly.
        scope = self._scope(sources, parent)
        self.expression(body.get("joinCondition"), scope, ctes)
        for clause in clauses:
            self.expression(clause.get("condition"), scope, ctes)
            if clause["commandType"] == "CMD_UPDATE":
                self._assignments(clause.get("targetList"), target, scope, ctes)
            elif clause["commandType"] == "CMD_INSERT":
                columns = [item["ResTarget"]["name"] for item in clause.get("targetList", [])]
                self.writes.extend(ColumnWrite(target, column, "insert") for column in columns)
                if clause.get("values") and not columns:
                    self.writes.append(ColumnWrite(target, None, "insert"))
                self.expression(clause.get("values"), scope, ctes)
        return self.returning(body.get("returningClause"), sources, parent, ctes)

    def returning(self, clause: dict | None, sources: tuple[int, ...], parent: int | None, ctes: Ctes) -> Output:
        if not clause:
            return ()
        target = self.sources[sources[0]]
        aliases = [*RETURNING_ALIASES, *(item["ReturningOption"]["value"] for item in clause.get("options", []))]
        pseudo = [self._source(Source(alias, target.table, True)) for alias in aliases]
        return self.targets(clause.get("exprs"), self._scope((*sources, *pseudo), parent), ctes)

    # ------------------------------------------------------------------ FROM

    def from_clause(self, items: list[dict] | None, parent: int | None, ctes: Ctes) -> list[int]:
        """The sources of one level's FROM list; a LATERAL item (and any function) sees the
        items before it."""
        level: list[int] = []
        for item in items or []:
            level.extend(self.from_item(item, level, parent, ctes))
        return level

    def from_item(self, item: dict, preceding: list[int], parent: int | None, ctes: Ctes) -> list[int]:
        """The sources one FROM item makes visible to its level."""
        ((kind, node),) = item.items()
        if kind == "RangeVar":
            return [self._relation(node, ctes)]
        if kind == "RangeSubselect":
            scope = self._scope(preceding, parent) if node.get("lateral") else parent
            return [self._derived(node.get("alias"), self.query(node["subquery"], scope, ctes))]
        if kind == "RangeFunction":
            self.expression([node.get("functions"), node.get("coldeflist")], self._scope(preceding, parent), ctes)
            return [self._derived(node.get("alias"), None)]
        if kind == "RangeTableSample":
            self.expression([node.get("args"), node.get("repeatable")], self._scope(preceding, parent), ctes)
            return self.from_item(node["relation"], preceding, parent, ctes)
        if kind == "JoinExpr":
            return self._join(node, preceding, parent, ctes)
        raise Denial("syntax", f"unsupported FROM item: {node_title(kind)}")

    def _relation(self, node: dict, ctes: Ctes) -> int:
        table = TableName.from_range_var(node)
        alias = node.get("alias") or {}
        if table.schema is None and table.name in ctes:
            return self._derived(alias or {"aliasname": table.name}, ctes[table.name])
        source = self._source(Source(alias.get("aliasname") or table.name, table, "aliasname" in alias))
        if alias.get("colnames"):
            self.whole_rows.append(WholeRow(source, f"the column alias list on {table}"))
        return source

    def _derived(self, alias: dict | None, output: Output) -> int:
        alias = alias or {}
        output = _renamed(output, names(alias.get("colnames")))
        return self._source(
            Source(
                alias.get("aliasname", ""),
                columns=frozenset(name for name in output or () if name),
                open=output is None or None in output,
            )
        )

    def _join(self, node: dict, preceding: list[int], parent: int | None, ctes: Ctes) -> list[int]:
        left = self.from_item(node["larg"], preceding, parent, ctes)
        right = self.from_item(node["rarg"], [*preceding, *left], parent, ctes)
        if node.get("isNatural"):
            self.whole_rows.extend(WholeRow(source, "the NATURAL JOIN") for source in left + right)
        for column in names(node.get("usingClause")):
            self.references.append(ColumnRef(self._scope(left, None), (column,)))
            self.references.append(ColumnRef(self._scope(right, None), (column,)))
        self.expression(node.get("quals"), self._scope(left + right, parent), ctes)
        visible = left + right
        using_alias = node.get("join_using_alias")
        if using_alias:  # names the USING columns; the two sides stay visible
            visible.append(self._source(Source(using_alias["aliasname"], members=(*left, *right))))
        alias = node.get("alias")
        if not alias:
            return visible
        # An alias hides the joined items' own names; their columns stay visible through it.
        joined = self._source(Source(alias["aliasname"], members=(*left, *right)))
        if alias.get("colnames"):
            self.whole_rows.append(WholeRow(joined, "the column alias list on a JOIN"))
        return [joined, *visible[len(left + right) :]]

    # ------------------------------------------------------------------ expressions

    def expression(self, node: object, scope: int, ctes: Ctes, output_names: frozenset[str] = frozenset()) -> None:
        """Every column reference in an expression tree, at `scope`; sub-queries are levels
        of their own below it."""
        if node is None:
            return
        if type(node) is dict and len(node) == 1 and "ColumnRef" in node:
            # Most expressions handed here are a bare column reference (a select-list entry,
            # a sort key): no tree to walk.
            self.references.append(ColumnRef(scope, _fields(node["ColumnRef"]), output_names))
            return
        for _, key, value in entries(node, EXPRESSION_FIELDS, EXPRESSION_STOP):
            if key == "ColumnRef":
                self.references.append(ColumnRef(scope, _fields(value), output_names))
            elif key == "SubLink":
                self.expression(value.get("testexpr"), scope, ctes, output_names)
                self.query(value["subselect"], scope, ctes, exists=value.get("subLinkType") == "EXISTS_SUBLINK")
            elif key in QUERY_NODES or key in FROM_NODES:
                # Queries appear in expressions only as sub-links, FROM items only in FROM.
                raise Denial("syntax", f"unsupported syntax: {node_title(key)} inside an expression")

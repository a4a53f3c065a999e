"""Statement text -> `StatementFacts`, failing closed.

Two parsers read every statement. sqlglot gives the structure the rules are judged on
(statement kind, every table access with its kind, resolved through CTE scopes); PostgreSQL's
own parser (pglast) gives the statement count and root kind, which must agree with
sqlglot's, and the names of functions, casts and operators exactly as PostgreSQL will
resolve them (sqlglot renames functions: `lcase(x)` becomes `LOWER(x)`).
Anything either parser cannot read, or any node outside the allowlists below, is a denial.
"""

from __future__ import annotations

import orjson
import sqlglot
from pglast import parser as pg_parser
from sqlglot import exp
from sqlglot.errors import SqlglotError

from gateway.policy.facts import Denial, StatementFacts, TableAccess, TableName
from gateway.policy.lexical import scan

# PostgreSQL's root statement node -> statement kind. Every other statement is refused.
PG_STATEMENT_KINDS = {
    "SelectStmt": "select",
    "InsertStmt": "insert",
    "UpdateStmt": "update",
    "DeleteStmt": "delete",
    "MergeStmt": "merge",
    "CreateStmt": "ddl",
    "CreateTableAsStmt": "ddl",
    "IndexStmt": "ddl",
    "ViewStmt": "ddl",
    "AlterTableStmt": "ddl",
    "DropStmt": "ddl",
    "TruncateStmt": "ddl",
    "CommentStmt": "ddl",
    "GrantStmt": "ddl",
}

# sqlglot's root class -> statement kind.
ROOT_KINDS: dict[type[exp.Expression], str] = {
    exp.Select: "select",
    exp.Union: "select",
    exp.Intersect: "select",
    exp.Except: "select",
    exp.Insert: "insert",
    exp.Update: "update",
    exp.Delete: "delete",
    exp.Merge: "merge",
    exp.Create: "ddl",
    exp.Drop: "ddl",
    exp.Alter: "ddl",
    exp.TruncateTable: "ddl",
    exp.Comment: "ddl",
    exp.Grant: "ddl",
    exp.Revoke: "ddl",
}
DDL_OBJECT_KINDS = frozenset({"TABLE", "INDEX", "VIEW"})

# Every node class a statement may contain (function calls are judged separately, by name).
ALLOWED_NODES: frozenset[type[exp.Expression]] = frozenset(
    {
        *ROOT_KINDS,
        exp.With,
        exp.CTE,
        exp.Subquery,
        exp.From,
        exp.Join,
        exp.Where,
        exp.Group,
        exp.Having,
        exp.Order,
        exp.Ordered,
        exp.Limit,
        exp.Offset,
        exp.Fetch,
        exp.Distinct,
        exp.Window,
        exp.WindowSpec,
        exp.Values,
        exp.Tuple,
        exp.Table,
        exp.TableAlias,
        exp.Alias,
        exp.Column,
        exp.Identifier,
        exp.Star,
        exp.Dot,
        exp.Literal,
        exp.Null,
        exp.Boolean,
        exp.Parameter,
        exp.Paren,
        exp.Returning,
        exp.OnConflict,
        exp.Schema,
        exp.Lateral,
        exp.Unnest,
        exp.Exists,
        exp.In,
        exp.Between,
        exp.Like,
        exp.ILike,
        exp.SimilarTo,
        exp.Is,
        exp.Not,
        exp.And,
        exp.Or,
        exp.Neg,
        exp.Add,
        exp.Sub,
        exp.Mul,
        exp.Div,
        exp.Mod,
        exp.Pow,
        exp.IntDiv,
        exp.DPipe,
        exp.EQ,
        exp.NEQ,
        exp.GT,
        exp.GTE,
        exp.LT,
        exp.LTE,
        exp.NullSafeEQ,
        exp.NullSafeNEQ,
        exp.Any,
        exp.All,
        exp.Array,
        exp.Bracket,
        exp.Slice,
        exp.Interval,
        exp.DataType,
        exp.DataTypeParam,
        exp.Var,
        exp.Case,
        exp.If,
        exp.Cast,
        exp.Collate,
        exp.AtTimeZone,
        exp.Filter,
        exp.WithinGroup,
        exp.Whens,
        exp.When,
        exp.Lock,
        exp.BitwiseAnd,
        exp.BitwiseOr,
        exp.BitwiseXor,
        exp.BitwiseNot,
        exp.BitwiseLeftShift,
        exp.BitwiseRightShift,
        exp.JSONExtract,
        exp.JSONExtractScalar,
        exp.JSONBExtract,
        exp.JSONBExtractScalar,
        exp.JSONBContains,
        exp.JSONPath,
        exp.JSONPathRoot,
        exp.JSONPathKey,
        exp.JSONPathSubscript,
        exp.ArrayContainsAll,
        exp.ArrayOverlaps,
        exp.RegexpLike,
        exp.RegexpILike,
        exp.ColumnDef,
        exp.ColumnConstraint,
        exp.PrimaryKeyColumnConstraint,
        exp.NotNullColumnConstraint,
        exp.DefaultColumnConstraint,
        exp.UniqueColumnConstraint,
        exp.CheckColumnConstraint,
        exp.PrimaryKey,
        exp.Reference,
        exp.ForeignKey,
        exp.Index,
        exp.IndexParameters,
        exp.GrantPrivilege,
        exp.GrantPrincipal,
        exp.Constraint,
        exp.AlterColumn,
        exp.RenameColumn,
        exp.Drop,
        exp.PseudoType,
        exp.CurrentDate,
        exp.CurrentTimestamp,
        exp.CurrentTime,
        exp.CurrentUser,
        exp.TableSample,
        exp.Escape,
        exp.Kwarg,
        exp.PropertyEQ,
        exp.Properties,
    }
)

# Casts only to these types (names as PostgreSQL's parser reports them, without pg_catalog).
SAFE_CAST_TYPES = frozenset(
    {
        "bool",
        "int2",
        "int4",
        "int8",
        "float4",
        "float8",
        "numeric",
        "money",
        "text",
        "varchar",
        "bpchar",
        "char",
        "name",
        "uuid",
        "json",
        "jsonb",
        "bytea",
        "date",
        "time",
        "timetz",
        "timestamp",
        "timestamptz",
        "interval",
        "inet",
        "cidr",
        "macaddr",
        "macaddr8",
        "bit",
        "varbit",
        "xml",
        "tsvector",
        "tsquery",
        "oid",
    }
)


def analyze(sql: str, max_bytes: int) -> StatementFacts:
    """Facts about one statement text; never raises (a failure is a fact with a denial)."""
    try:
        return _analyze(sql, max_bytes)
    except Denial as denial:
        return StatementFacts(denial=denial)
    except RecursionError:
        return StatementFacts(denial=Denial("too_complex", "the statement is nested too deeply to analyse"))
    except Exception as error:
        return StatementFacts(
            denial=Denial("internal", f"the statement could not be analysed ({type(error).__name__})")
        )


def _analyze(sql: str, max_bytes: int) -> StatementFacts:
    scanned = scan(sql, max_bytes)
    pg_kind, functions, casts = _postgres_view(sql)
    tree = _sqlglot_tree(scanned.analysis_text)
    root_kind = _root_kind(tree)
    if root_kind != pg_kind:
        raise Denial(
            "parser_disagreement",
            f"the two parsers disagree on the statement kind ({root_kind} vs {pg_kind})",
        )
    accesses = _TableWalker().accesses(tree)
    return StatementFacts(
        kind=root_kind,
        accesses=frozenset(accesses),
        functions=frozenset(functions),
        casts=frozenset(casts),
        params_used=scanned.params_used,
        fingerprint=pg_parser.fingerprint(sql),
    )


# ---------------------------------------------------------------------------- PostgreSQL's view


def _postgres_view(sql: str) -> tuple[str, set[str], set[str]]:
    """Root kind, function names and cast types as PostgreSQL's own parser reads them."""
    try:
        parsed = orjson.loads(pg_parser.parse_sql_json(sql))
    except pg_parser.ParseError as error:
        raise Denial("parse", f"PostgreSQL cannot parse the statement: {error}") from None
    statements = parsed.get("stmts", [])
    if len(statements) != 1:
        raise Denial("multiple_statements", f"exactly one statement is allowed, found {len(statements)}")
    ((root_name, root),) = statements[0]["stmt"].items()
    kind = PG_STATEMENT_KINDS.get(root_name)
    if kind is None:
        raise Denial("statement_class", f"{_statement_title(root_name)} statements are never run")
    if root_name == "SelectStmt" and root.get("intoClause"):
        raise Denial("select_into", "SELECT ... INTO is not allowed")
    functions: set[str] = set()
    casts: set[str] = set()
    _collect_names(root, functions, casts)
    return kind, functions, casts


def _statement_title(node_name: str) -> str:
    name = node_name.removesuffix("Stmt")
    return "".join(" " + c if c.isupper() and i else c for i, c in enumerate(name)).upper()


def _qualified(names: list[dict]) -> str:
    return ".".join(item["String"]["sval"] for item in names if "String" in item)


def _collect_names(node: object, functions: set[str], casts: set[str]) -> None:
    stack = [node]
    while stack:
        current = stack.pop()
        if isinstance(current, list):
            stack.extend(current)
            continue
        if not isinstance(current, dict):
            continue
        for key, value in current.items():
            if key == "FuncCall":
                functions.add(_qualified(value["funcname"]))
            elif key == "TypeCast":
                casts.add(_qualified(value["typeName"]["names"]))
            elif key == "A_Expr" and len(value.get("name", [])) > 1:
                raise Denial("operator", f"explicit operator {_qualified(value['name'])} is not allowed")
            if isinstance(value, dict | list):
                stack.append(value)


# ---------------------------------------------------------------------------- sqlglot's view


def _sqlglot_tree(text: str) -> exp.Expression:
    try:
        trees = sqlglot.parse(text, read="postgres")
    except SqlglotError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Denial("parse", f"the statement could not be parsed: {first_line}") from None
    trees = [tree for tree in trees if tree is not None]
    if len(trees) != 1:
        raise Denial("multiple_statements", f"exactly one statement is allowed, found {len(trees)}")
    tree = trees[0]
    for node in tree.walk():
        if type(node) not in ALLOWED_NODES and not _is_function(node):
            raise Denial("syntax", f"unsupported syntax: {type(node).__name__}")
    return tree


def _is_function(node: exp.Expression) -> bool:
    return isinstance(node, exp.Func) and not isinstance(node, exp.Command)


def _root_kind(tree: exp.Expression) -> str:
    kind = ROOT_KINDS.get(type(tree))
    if kind is None:
        raise Denial("statement_class", f"{type(tree).__name__} statements are never run")
    if isinstance(tree, exp.Create | exp.Drop | exp.Alter):
        object_kind = str(tree.args.get("kind") or "").upper()
        if object_kind not in DDL_OBJECT_KINDS:
            raise Denial("statement_class", f"{tree.key.upper()} {object_kind} is not supported")
    return kind


def identifier_name(identifier: exp.Expression | None) -> str | None:
    """A name folded as PostgreSQL folds it: unquoted to lower case, quoted kept exact."""
    if identifier is None:
        return None
    if isinstance(identifier, exp.Identifier):
        return identifier.this if identifier.quoted else identifier.this.lower()
    return identifier.name.lower()


def table_name(table: exp.Table) -> TableName:
    if table.args.get("catalog") is not None:
        raise Denial("syntax", f"three-part name {table.sql('postgres')} is not allowed")
    return TableName(identifier_name(table.args.get("db")), identifier_name(table.this) or "")


class _TableWalker:
    """Every table a statement reads or writes, with the kind of access, resolving CTE names
    by lexical scope: a CTE shadows a table only inside the WITH that defines it."""

    def __init__(self) -> None:
        self._targets: dict[int, set[str]] = {}
        self._found: set[TableAccess] = set()

    def accesses(self, tree: exp.Expression) -> set[TableAccess]:
        self._visit(tree, frozenset())
        return self._found

    def _mark(self, node: exp.Expression | None, *kinds: str) -> None:
        if isinstance(node, exp.Schema):
            node = node.this
        if isinstance(node, exp.Table):
            self._targets.setdefault(id(node), set()).update(kinds)

    def _mark_statement_targets(self, node: exp.Expression) -> None:
        if isinstance(node, exp.Insert):
            self._mark(node.this, "insert")
            conflict = node.args.get("conflict")
            if conflict is not None and "UPDATE" in str(conflict.args.get("action") or "").upper():
                self._mark(node.this, "update")
        elif isinstance(node, exp.Update):
            self._mark(node.this, "update")
        elif isinstance(node, exp.Delete):
            self._mark(node.this, "delete")
        elif isinstance(node, exp.Merge):
            self._mark(node.this, *self._merge_kinds(node))
        elif isinstance(node, exp.Create):
            target = node.this.args.get("table") if isinstance(node.this, exp.Index) else node.this
            self._mark(target, "ddl")
        elif isinstance(node, exp.Drop):
            for table in node.args.get("tables") or [node.this]:
                self._mark(table, "ddl")
        elif isinstance(node, exp.TruncateTable):
            for table in node.expressions:
                self._mark(table, "ddl")
        elif isinstance(node, exp.Alter | exp.Comment):
            self._mark(node.this, "ddl")
        elif isinstance(node, exp.Grant | exp.Revoke):
            self._mark(node.args.get("securable"), "ddl")
        elif isinstance(node, exp.Select):
            self._mark_locked_tables(node)

    @staticmethod
    def _merge_kinds(node: exp.Merge) -> set[str]:
        kinds: set[str] = set()
        whens = node.args.get("whens")
        for when in whens.expressions if whens else []:
            then = when.args.get("then")
            if isinstance(then, exp.Insert):
                kinds.add("insert")
            elif isinstance(then, exp.Update):
                kinds.add("update")
            elif isinstance(then, exp.Var) and then.name.upper() == "DELETE":
                kinds.add("delete")
            elif isinstance(then, exp.Var) and then.name.upper() == "DO NOTHING":
                continue
            else:
                raise Denial("syntax", f"unsupported MERGE action: {then.sql('postgres') if then else None}")
        return kinds

    def _mark_locked_tables(self, select: exp.Select) -> None:
        if not select.args.get("locks"):
            return
        sources = [select.args.get("from_"), *(select.args.get("joins") or [])]
        for source in sources:
            if source is not None and isinstance(source.this, exp.Table):
                self._mark(source.this, "select", "update")

    def _visit(self, node: exp.Expression, ctes: frozenset[str]) -> None:
        self._mark_statement_targets(node)
        if isinstance(node, exp.Table) and isinstance(node.this, exp.Identifier):
            self._record_table(node, ctes)
        with_ = node.args.get("with_")
        if isinstance(with_, exp.With):
            ctes = self._visit_with(with_, ctes)
        for key, value in node.args.items():
            if key == "with_" or (isinstance(node, exp.Lock) and key == "expressions"):
                continue  # CTEs are visited above; FOR UPDATE OF names refer to FROM items
            for child in value if isinstance(value, list) else [value]:
                if isinstance(child, exp.Expression):
                    self._visit(child, ctes)

    def _visit_with(self, with_: exp.With, outer: frozenset[str]) -> frozenset[str]:
        names = [identifier_name(cte.args["alias"].this) or "" for cte in with_.expressions]
        recursive = bool(with_.args.get("recursive"))
        for index, cte in enumerate(with_.expressions):
            visible = names if recursive else names[:index]
            self._visit(cte.this, outer | frozenset(visible))
        return outer | frozenset(names)

    def _record_table(self, node: exp.Table, ctes: frozenset[str]) -> None:
        name = table_name(node)
        kinds = self._targets.get(id(node), {"select"})
        if name.schema is None and name.name in ctes and kinds == {"select"}:
            return  # a reference to a CTE in scope, not a table
        for kind in kinds:
            self._found.add(TableAccess(kind, name))

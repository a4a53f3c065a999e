"""Statement text -> `StatementFacts`, failing closed.

Two parsers read every statement. sqlglot gives the structure the rules are judged on
(statement kind, every table access with its kind, resolved through CTE scopes); PostgreSQL's
own parser (pglast) gives the statement count, the root kind, every data-modifying statement
and every relation name, which must all agree with sqlglot's (a text the two read
differently is how a statement hides from the analyser), and the names of functions, casts
and operators exactly as PostgreSQL will resolve them (sqlglot renames functions: `lcase(x)`
becomes `LOWER(x)`), and the column references with their query levels
(`gateway.policy.columns`). Anything either parser cannot read, or any node outside the
allowlists below, is a denial.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, field

import orjson
from pglast import parser as pg_parser
from sqlglot import exp
from sqlglot.dialects.postgres import Postgres
from sqlglot.errors import SqlglotError

from gateway.policy.columns import column_facts
from gateway.policy.facts import ColumnFacts, Denial, StatementFacts, TableAccess, TableName
from gateway.policy.functions import check_set_config_call
from gateway.policy.lexical import check_text, scan
from gateway.policy.naming import sql_value_function_name
from gateway.policy.pgtree import LEAF_NODES, entries, names
from gateway.policy.wording import enum_title, statement_title, syntax_title

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
    # What schema-migration tools emit besides tables and indexes.
    "CreateEnumStmt": "ddl",
    "CreateSchemaStmt": "ddl",
}

# DDL changes relations only (tables, views, indexes), never schemas, functions, sequences,
# databases or roles, whose names no table rule can cover (CREATE TYPE ... AS ENUM and CREATE
# SCHEMA, which only create, are judged as `schema.type` and `schema.*`): the field holding
# the object type of each DDL statement, and the types accepted.
RELATION_OBJECT_TYPES = frozenset({"OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_INDEX"})
PG_DDL_OBJECT_TYPES: dict[str, tuple[str, frozenset[str]]] = {
    "CreateTableAsStmt": ("objtype", frozenset({"OBJECT_TABLE"})),
    "AlterTableStmt": ("objtype", RELATION_OBJECT_TYPES),
    "DropStmt": ("removeType", RELATION_OBJECT_TYPES),
    "CommentStmt": ("objtype", RELATION_OBJECT_TYPES | {"OBJECT_COLUMN"}),
    "GrantStmt": ("objtype", frozenset({"OBJECT_TABLE"})),
}
# ALTER TABLE actions that change a table's shape. Ownership, row-level security, triggers,
# rules, inheritance and storage are the database owner's business, never a caller's.
PG_ALTER_TABLE_ACTIONS = frozenset(
    {
        "AT_AddColumn",
        "AT_DropColumn",
        "AT_ColumnDefault",
        "AT_AlterColumnType",
        "AT_SetNotNull",
        "AT_DropNotNull",
        "AT_AddConstraint",
        "AT_DropConstraint",
        "AT_ValidateConstraint",
    }
)
# Data-modifying statements, wherever they are nested (the cross-check of §3).
PG_WRITE_STATEMENTS = {"InsertStmt": "insert", "UpdateStmt": "update", "DeleteStmt": "delete", "MergeStmt": "merge"}
PG_MERGE_COMMANDS = {"CMD_INSERT": "insert", "CMD_UPDATE": "update", "CMD_DELETE": "delete", "CMD_NOTHING": None}
# The options an identity column's sequence may take (`GENERATED ... AS IDENTITY (...)`).
# `sequence_name` names a relation, judged as one; the others only shape the sequence.
PG_IDENTITY_OPTIONS = frozenset({"sequence_name", "as", "start", "increment", "minvalue", "maxvalue", "cache", "cycle"})

# sqlglot's reading of PostgreSQL, made once: a dialect holds only its settings, and making
# one per text is a measurable part of a parse.
POSTGRES = Postgres()

# sqlglot's root class -> statement kind.
ROOT_KINDS: dict[type[exp.Expression], str] = {
    exp.Select: "select",
    exp.Values: "select",
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
DDL_OBJECT_KINDS = frozenset({"TABLE", "INDEX", "VIEW", "TYPE", "SCHEMA"})

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
        exp.Rollup,
        exp.Cube,
        exp.GroupingSets,
        exp.Having,
        exp.Order,
        exp.Ordered,
        exp.Limit,
        exp.Offset,
        exp.Fetch,
        exp.LimitOptions,
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
        exp.RawString,  # $$dollar-quoted$$ text; the cross-check catches a misread tag
        exp.ByteString,  # E'...' (sqlglot's name for escape strings)
        exp.BitString,
        exp.HexString,
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
        exp.Overlaps,
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
        # sqlglot reads `data -> 'k'` inside a call's arguments as a lambda; PostgreSQL has no
        # lambdas, it is JSON access. Its operands are walked like any other node.
        exp.Lambda,
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
        exp.GeneratedAsIdentityColumnConstraint,  # its options are PostgreSQL's to read (lexical)
        exp.PrimaryKey,
        exp.Reference,
        exp.ForeignKey,
        exp.Index,
        exp.IndexParameters,
        exp.GrantPrivilege,
        exp.GrantPrincipal,
        exp.Constraint,
        exp.AddConstraint,
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
    check_text(sql, max_bytes)
    postgres = _postgres_view(sql)
    scanned = scan(sql, postgres.param_locations)
    sqlglot_view = _SqlglotView(_sqlglot_tree(scanned.analysis_text))
    root_kind = _root_kind(sqlglot_view.tree)
    if root_kind != postgres.kind:
        raise Denial(
            "parser_disagreement",
            f"the two parsers disagree on the statement kind ({root_kind} vs {postgres.kind})",
        )
    # A sequence an identity column names is a relation only PostgreSQL's reading shows.
    accesses = sqlglot_view.accesses | {TableAccess("ddl", sequence, creates=True) for sequence in postgres.sequences}
    _cross_check(postgres, sqlglot_view.names, sqlglot_view.writes)
    if root_kind != "select" and not any(access.kind == root_kind for access in accesses):
        # Every write and every DDL changes a table the rules must be asked about.
        raise Denial("syntax", f"cannot tell which table this {root_kind.upper()} statement changes")
    return StatementFacts(
        kind=root_kind,
        accesses=frozenset(accesses),
        columns=postgres.columns,
        functions=frozenset(postgres.functions),
        casts=frozenset(postgres.casts),
        params_used=scanned.params_used,
        cascade=postgres.cascade,
        positions=tuple(sorted(postgres.positions.items())),
        fingerprint=pg_parser.fingerprint(sql),
    )


def _cross_check(postgres: _PostgresView, tables: set[TableName], writes: list[str]) -> None:
    """PostgreSQL's reading and sqlglot's must name the same relations and the same
    data-modifying statements; anything else means one of them misread the text."""
    if tables != postgres.tables:
        only_pg = ", ".join(sorted(map(str, postgres.tables - tables))) or "none"
        only_sqlglot = ", ".join(sorted(map(str, tables - postgres.tables))) or "none"
        raise Denial(
            "parser_disagreement",
            f"the two parsers disagree on the tables (only PostgreSQL sees: {only_pg}; "
            f"only sqlglot sees: {only_sqlglot})",
        )
    if sorted(writes) != sorted(postgres.writes):
        raise Denial(
            "parser_disagreement",
            f"the two parsers disagree on the data-modifying statements ({', '.join(sorted(writes)) or 'none'} "
            f"vs {', '.join(sorted(postgres.writes)) or 'none'})",
        )


def _write_signature(
    kind: str, target: TableName | None, *, upsert: bool = False, merge_actions: set[str] | None = None
) -> str:
    """One data-modifying statement as both views describe it, with its target table:
    `insert orders`, `insert+update orders` (ON CONFLICT DO UPDATE), `merge(delete,insert) orders`."""
    if kind == "merge":
        kind = f"merge({','.join(sorted(merge_actions or ()))})"
    elif upsert:
        kind = "insert+update"
    return f"{kind} {target if target is not None else '?'}"


# ---------------------------------------------------------------------------- PostgreSQL's view


@dataclass
class _PostgresView:
    """What PostgreSQL's own parser reads in the text."""

    kind: str
    functions: set[str] = field(default_factory=set)
    casts: set[str] = field(default_factory=set)
    tables: set[TableName] = field(default_factory=set)  # every relation name, CTE references included
    writes: list[str] = field(default_factory=list)  # data-modifying statements, nested ones included
    columns: ColumnFacts = field(default_factory=ColumnFacts)
    cascade: bool = False  # some part of the statement acts ... CASCADE
    positions: dict[TableName, int] = field(default_factory=dict)  # first mention of each relation, 1-based
    param_locations: list[int] = field(default_factory=list)  # byte offset of each parameter
    sequences: list[TableName] = field(default_factory=list)  # named by identity columns, schema-qualified


def _postgres_view(sql: str) -> _PostgresView:
    """Root kind, relations, data-modifying statements, function names and cast types as
    PostgreSQL's own parser reads them."""
    try:
        parsed = orjson.loads(pg_parser.parse_sql_json(sql))
    except pg_parser.ParseError as error:
        raise Denial.syntax_error(error, sql) from None
    except orjson.JSONDecodeError:
        # pglast's JSON is always well formed; orjson refuses it only past its nesting limit.
        raise Denial("too_complex", "the statement is nested too deeply to analyse") from None
    statements = parsed.get("stmts", [])
    if len(statements) != 1:
        raise Denial("multiple_statements", f"exactly one statement is allowed, found {len(statements)}")
    statement = statements[0]["stmt"]
    ((root_name, root),) = statement.items()
    kind = PG_STATEMENT_KINDS.get(root_name)
    if kind is None:
        raise Denial("statement_class", f"{statement_title(root_name)} statements are never run")
    if root_name == "SelectStmt" and root.get("intoClause"):
        raise Denial("select_into", "SELECT ... INTO is not allowed")
    view = _PostgresView(kind)
    if kind == "ddl":
        _check_ddl_object(root_name, root)
        view.tables.update(_ddl_object_names(root_name, root))
        view.sequences = _identity_sequences(root)
    _collect_names(statement, view)
    view.columns = column_facts(root_name, root)
    return view


def _check_ddl_object(root_name: str, root: dict) -> None:
    if root_name == "GrantStmt" and root.get("targtype") != "ACL_TARGET_OBJECT":
        raise Denial("statement_class", "GRANT and REVOKE on all tables in a schema are never run")
    if root_name in PG_DDL_OBJECT_TYPES:
        key, accepted = PG_DDL_OBJECT_TYPES[root_name]
        object_type = str(root.get(key, ""))
        if object_type not in accepted:
            title = statement_title(root_name)
            raise Denial("statement_class", f"{title} on {enum_title(object_type, 'OBJECT_')} is never run")
    if root_name == "CreateSchemaStmt" and (root.get("authrole") or root.get("schemaElts")):
        # AUTHORIZATION gives the schema to another role; elements are statements of their own.
        raise Denial("statement_class", "CREATE SCHEMA is run only as CREATE SCHEMA [IF NOT EXISTS] name")
    if root_name == "AlterTableStmt":
        for command in root.get("cmds", []):
            action = command.get("AlterTableCmd", {}).get("subtype")
            if action not in PG_ALTER_TABLE_ACTIONS:
                raise Denial("statement_class", f"ALTER TABLE action {enum_title(str(action), 'AT_')} is never run")


def _ddl_object_names(root_name: str, root: dict) -> list[TableName]:
    """Objects DROP, COMMENT and CREATE TYPE name as plain lists of strings (the others use
    RangeVars); a schema CREATE SCHEMA makes, as `schema.*` (what a rule covering it says)."""
    if root_name == "CreateSchemaStmt":
        return [TableName(root["schemaname"], "*")]
    if root_name == "CreateEnumStmt":
        return [_table_from_parts(list(names(root.get("typeName"))))]
    if root_name == "DropStmt":
        return [_table_from_parts(_name_parts(item)) for item in root.get("objects", [])]
    if root_name == "CommentStmt":
        parts = _name_parts(root.get("object", {}))
        if root.get("objtype") == "OBJECT_COLUMN":
            parts = parts[:-1]  # table.column: the table is what changes
        return [_table_from_parts(parts)]
    return []


def _identity_sequences(root: dict) -> list[TableName]:
    """The sequences identity columns name in a schema of their choosing. A sequence named
    without a schema goes to its table's schema, belongs to its column and goes with it, like
    the one a `serial` column or an unnamed identity makes: the table's rule covers it."""
    named = []
    for _, _, constraint in entries(root, frozenset({"Constraint"})):
        if constraint.get("contype") != "CONSTR_IDENTITY":
            continue
        for option in constraint.get("options", []):
            definition = option.get("DefElem", {})
            if definition.get("defname") not in PG_IDENTITY_OPTIONS:
                option_name = str(definition.get("defname")).replace("_", " ").upper()
                raise Denial("syntax", f"identity column option {option_name} is not supported")
            if definition["defname"] == "sequence_name":
                parts = _name_parts(definition.get("arg", {}))
                if len(parts) > 1:
                    named.append(_table_from_parts(parts))
    return named


def _name_parts(node: dict) -> list[str]:
    return list(names(node.get("List", {}).get("items")))


def _table_from_parts(parts: list[str]) -> TableName:
    if len(parts) == 1:
        return TableName(None, parts[0])
    if len(parts) == 2:
        return TableName(parts[0], parts[1])
    raise Denial("syntax", f"name {'.'.join(parts) or '?'} is not a schema.table name")


def _qualified(items: list[dict]) -> str:
    return ".".join(names(items))


# The fields `_collect_names` acts on; FOR UPDATE OF names (`lockedRels`) refer to FROM
# items, not to relations, and leaf nodes hold none of them.
NAME_FIELDS = frozenset(
    {"relname", "FuncCall", "SQLValueFunction", "behavior", "TypeCast", "A_Expr", "ParamRef", *PG_WRITE_STATEMENTS}
)
NAME_STOP = frozenset({"lockedRels"}) | LEAF_NODES


def _collect_names(node: object, view: _PostgresView) -> None:
    for current, key, value in entries(node, NAME_FIELDS, NAME_STOP):
        if key == "relname":  # a RangeVar, wrapped or not: a relation name as written
            table = TableName.from_range_var(current)
            view.tables.add(table)
            location = current.get("location", -1)
            if location >= 0:
                view.positions[table] = min(view.positions.get(table, location + 1), location + 1)
        elif key == "FuncCall":
            view.functions.add(_qualified(value["funcname"]))
            check_set_config_call(names(value["funcname"])[-1], value.get("args", []))
        elif key == "SQLValueFunction":
            # CURRENT_USER, SESSION_USER, CURRENT_DATE...: syntax, not calls, but functions all
            # the same, always the built-in whatever the search path.
            view.functions.add(f"pg_catalog.{sql_value_function_name(value)}")
        elif key == "behavior" and value == "DROP_CASCADE":
            view.cascade = True
        elif key == "TypeCast":
            view.casts.add(_qualified(value["typeName"]["names"]))
        elif key == "A_Expr" and len(value.get("name", [])) > 1:
            raise Denial("operator", f"explicit operator {_qualified(value['name'])} is not allowed")
        elif key in PG_WRITE_STATEMENTS:
            view.writes.append(_postgres_write(key, value))
        elif key == "ParamRef":
            view.param_locations.append(value.get("location", -1))


def _postgres_write(node_name: str, node: dict) -> str:
    kind = PG_WRITE_STATEMENTS[node_name]
    target = TableName.from_range_var(node["relation"]) if "relname" in node.get("relation", {}) else None
    if kind == "merge":
        clauses = [clause["MergeWhenClause"] for clause in node.get("mergeWhenClauses", [])]
        # An unknown command stays in the signature as "?", so it can never match sqlglot's.
        actions = {PG_MERGE_COMMANDS.get(clause.get("commandType"), "?") for clause in clauses}
        return _write_signature(kind, target, merge_actions={action for action in actions if action})
    upsert = (node.get("onConflictClause") or {}).get("action") == "ONCONFLICT_UPDATE"
    return _write_signature(kind, target, upsert=upsert)


# ---------------------------------------------------------------------------- sqlglot's view


def _sqlglot_tree(text: str) -> exp.Expression:
    try:
        trees = POSTGRES.parse(text)
    except SqlglotError as error:
        first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise Denial("parse", f"the statement could not be parsed: {first_line}") from None
    trees = [tree for tree in trees if tree is not None]
    if len(trees) != 1:
        raise Denial("multiple_statements", f"exactly one statement is allowed, found {len(trees)}")
    return trees[0]


def _cte_names(with_: exp.With) -> list[str]:
    return [identifier_name(cte.args["alias"].this) or "" for cte in with_.expressions]


def _root_kind(tree: exp.Expression) -> str:
    kind = ROOT_KINDS.get(type(tree))
    if kind is None:
        raise Denial("statement_class", f"this statement ({syntax_title(type(tree).__name__)}) is never run")
    if isinstance(tree, exp.Create | exp.Drop | exp.Alter):
        object_kind = str(tree.args.get("kind") or "").upper()
        if object_kind not in DDL_OBJECT_KINDS:
            raise Denial("statement_class", f"{tree.key.upper()} {object_kind} is not supported")
    return kind


def _write_statement(node: exp.Expression) -> str | None:
    """A data-modifying statement described as `_write_signature` does; None for any other
    node, and for a MERGE action (counted with its MERGE)."""
    if isinstance(node.parent, exp.When):
        return None
    if isinstance(node, exp.Insert):
        return _write_signature("insert", _write_target(node), upsert=_is_upsert(node.args.get("conflict")))
    if isinstance(node, exp.Update | exp.Delete):
        return _write_signature(node.key, _write_target(node))
    if isinstance(node, exp.Merge):
        return _write_signature("merge", _write_target(node), merge_actions=_merge_actions(node))
    return None


def _write_target(node: exp.Expression) -> TableName | None:
    target = node.this.this if isinstance(node.this, exp.Schema) else node.this
    return table_name(target) if isinstance(target, exp.Table) and isinstance(target.this, exp.Identifier) else None


def _is_upsert(conflict: exp.Expression | None) -> bool:
    return conflict is not None and "UPDATE" in str(conflict.args.get("action") or "").upper()


def _merge_actions(node: exp.Merge) -> set[str]:
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


# PostgreSQL folds unquoted names to lower case in ASCII only (`ÖRDERS` is `Örders`), while
# str.lower() folds every alphabet.
_ASCII_LOWER = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)


def identifier_name(identifier: exp.Expression | None) -> str | None:
    """A name folded as PostgreSQL folds it: unquoted to lower case, quoted kept exact."""
    if identifier is None:
        return None
    if isinstance(identifier, exp.Identifier):
        return identifier.this if identifier.quoted else identifier.this.translate(_ASCII_LOWER)
    return identifier.name.translate(_ASCII_LOWER)


def table_name(table: exp.Table) -> TableName:
    if table.args.get("catalog") is not None:
        raise Denial("syntax", f"three-part name {table.sql('postgres')} is not allowed")
    return TableName(identifier_name(table.args.get("db")), identifier_name(table.this) or "")


# The node classes whose statement marks tables as targets of a write, DDL or lock, for
# `_SqlglotView._mark_statement_targets`.
STATEMENT_NODES = (
    exp.Insert,
    exp.Update,
    exp.Delete,
    exp.Merge,
    exp.Create,
    exp.Drop,
    exp.TruncateTable,
    exp.Comment,
    exp.Alter,
    exp.Grant,
    exp.Revoke,
    exp.Select,
)
WRITE_NODES = (exp.Insert, exp.Update, exp.Delete, exp.Merge)


@dataclass(frozen=True, slots=True)
class _NodeRole:
    """What a node class is to `_SqlglotView`, worked out once per class: the walk meets
    hundreds of nodes per statement, of a few dozen classes."""

    allowed: bool
    statement: bool
    write: bool
    table: bool
    with_: bool
    lock: bool
    scoping: bool  # its arguments are walked each in its own way (CTE names, FOR UPDATE OF)


# Each class's role, learnt the first time the walk meets the class. A plain dict: its `get`
# costs the walk a fraction of what a call through `functools.cache` does, once per node.
_ROLES: dict[type[exp.Expression], _NodeRole] = {}


def _node_role(cls: type[exp.Expression]) -> _NodeRole:
    """Work out a class's role, and remember it."""
    role = _ROLES[cls] = _NodeRole(
        allowed=cls in ALLOWED_NODES or (issubclass(cls, exp.Func) and not issubclass(cls, exp.Command)),
        statement=issubclass(cls, STATEMENT_NODES),
        write=issubclass(cls, WRITE_NODES),
        table=issubclass(cls, exp.Table),
        with_=issubclass(cls, exp.With),
        lock=issubclass(cls, exp.Lock),
        scoping=issubclass(cls, exp.With | exp.Lock),
    )
    return role


class _SqlglotView:
    """What sqlglot reads in the text, in one walk of its tree: every node checked against
    the allowlist; every table the statement reads or writes, with the kind of access,
    resolving CTE names by lexical scope (a CTE shadows a table only inside the WITH that
    defines it); every relation name as written (`names`) and every data-modifying statement
    (`writes`), for the cross-check with PostgreSQL's parser."""

    def __init__(self, tree: exp.Expression) -> None:
        self.tree = tree
        self._targets: dict[int, set[str]] = {}
        self._locked: set[int] = set()
        self._created: set[int] = set()  # the relation a CREATE makes
        self._constraint_names: set[int] = set()  # tables that are not: see `_mark_statement_targets`
        self.accesses: set[TableAccess] = set()
        self.names: set[TableName] = set()
        self.writes: list[str] = []
        self._visit(tree, frozenset(), True)

    def _mark(self, node: exp.Expression | None, *kinds: str) -> None:
        if isinstance(node, exp.Schema):
            node = node.this
        if isinstance(node, exp.Table):
            self._targets.setdefault(id(node), set()).update(kinds)

    def _mark_statement_targets(self, node: exp.Expression) -> None:
        if isinstance(node, exp.Insert):
            self._mark(node.this, "insert")
            if _is_upsert(node.args.get("conflict")):
                self._mark(node.this, "update")
        elif isinstance(node, exp.Update):
            self._mark(node.this, "update")
        elif isinstance(node, exp.Delete):
            self._mark(node.this, "delete")
        elif isinstance(node, exp.Merge):
            # The statement's own kind, and each action's: MERGE ... THEN DELETE is a delete.
            self._mark(node.this, "merge", *_merge_actions(node))
        elif isinstance(node, exp.Create) and str(node.args.get("kind")).upper() == "SCHEMA":
            self._record_created_schema(node.this)
        elif isinstance(node, exp.Create) and isinstance(node.this, exp.Index):
            self._mark(node.this.args.get("table"), "ddl")  # the index goes to its table's schema
        elif isinstance(node, exp.Create):
            self._mark(node.this, "ddl")
            self._created.add(id(node.this.this if isinstance(node.this, exp.Schema) else node.this))
        elif isinstance(node, exp.Drop) and str(node.args.get("kind")).upper() == "CONSTRAINT":
            # ALTER TABLE ... DROP CONSTRAINT c: sqlglot holds the constraint's name as a table.
            self._constraint_names.update(id(name) for name in node.args.get("tables") or [])
        elif isinstance(node, exp.Drop):
            for table in node.args.get("tables") or [node.this]:
                self._mark(table, "ddl")
        elif isinstance(node, exp.TruncateTable):
            for table in node.expressions:
                self._mark(table, "ddl")
        elif isinstance(node, exp.Comment) and isinstance(node.this, exp.Column):
            self._record_column_comment(node.this)
        elif isinstance(node, exp.Alter | exp.Comment):
            self._mark(node.this, "ddl")
        elif isinstance(node, exp.Grant | exp.Revoke):
            self._mark(node.args.get("securable"), "ddl")
        elif isinstance(node, exp.Select):
            self._mark_locked_tables(node)

    def _record_column_comment(self, column: exp.Column) -> None:
        """COMMENT ON COLUMN t.c changes table t."""
        if column.args.get("catalog") is not None:
            raise Denial("syntax", f"four-part name {column.sql('postgres')} is not allowed")
        name = TableName(identifier_name(column.args.get("db")), identifier_name(column.args.get("table")) or "")
        self.names.add(name)
        self.accesses.add(TableAccess("ddl", name))

    def _record_created_schema(self, target: exp.Expression) -> None:
        """CREATE SCHEMA s is DDL on all of s: `s.*`, which only a rule covering the whole
        schema allows."""
        if not isinstance(target, exp.Table) or target.this or target.args.get("catalog") is not None:
            raise Denial("syntax", f"schema name {target.sql('postgres')} is not a plain name")
        name = TableName(identifier_name(target.args.get("db")), "*")
        self.names.add(name)
        self.accesses.add(TableAccess("ddl", name))

    def _mark_locked_tables(self, select: exp.Select) -> None:
        """FOR UPDATE / FOR SHARE lock the rows of every table in FROM, including those inside
        sub-queries there (PostgreSQL propagates the lock into them; not into CTEs, whose
        references are told apart when recorded). `OF` lists are ignored: over-marking only
        ever denies more."""
        if not select.args.get("locks"):
            return
        for source in [select.args.get("from_"), *(select.args.get("joins") or [])]:
            if source is None:
                continue
            for table in source.this.find_all(exp.Table):
                self._locked.add(id(table))

    def _visit(self, node: exp.Expression, ctes: frozenset[str], record: bool) -> None:
        """`ctes`: the CTE names in scope. `record`: whether the tables below are accessed
        (not so the names FOR UPDATE OF lists, which refer to FROM items); every node is
        checked all the same."""
        role = _ROLES.get(type(node)) or _node_role(type(node))
        if not role.allowed:
            raise Denial("syntax", f"unsupported syntax: {syntax_title(type(node).__name__)}")
        if role.statement:
            self._mark_statement_targets(node)
            if role.write and (write := _write_statement(node)) is not None:
                self.writes.append(write)
        if role.table and record and isinstance(node.this, exp.Identifier) and id(node) not in self._constraint_names:
            self._record_table(node, ctes)
        with_ = node.args.get("with_")
        if with_ is None and not role.scoping:
            # Every node below, as `Expression.walk` finds them.
            for child in node.iter_expressions():
                self._visit(child, ctes, record)
            return
        # A WITH's names are in scope for the rest of its query, not for the WITH itself.
        inner = ctes | frozenset(_cte_names(with_)) if isinstance(with_, exp.With) else ctes
        for key, value in node.args.items():
            if role.with_ and key == "expressions":
                continue  # each CTE sees its own part of the WITH's names: `_visit_ctes`
            child_ctes = ctes if key == "with_" else inner
            child_record = record and not (role.lock and key == "expressions")
            for child in value if isinstance(value, list) else (value,):
                if isinstance(child, exp.Expr):  # the base of every node class
                    self._visit(child, child_ctes, child_record)
        if role.with_:
            self._visit_ctes(node, ctes, record)

    def _visit_ctes(self, with_: exp.With, outer: frozenset[str], record: bool) -> None:
        """A CTE body sees the CTEs before it; all of them when RECURSIVE."""
        names = _cte_names(with_)
        recursive = bool(with_.args.get("recursive"))
        for index, cte in enumerate(with_.expressions):
            self._visit(cte, outer | frozenset(names if recursive else names[:index]), record)

    def _record_table(self, node: exp.Table, ctes: frozenset[str]) -> None:
        name = table_name(node)
        self.names.add(name)
        kinds = self._targets.get(id(node))
        if kinds is None:
            # The target of a write is always a table; anything else may name a CTE in scope.
            if name.schema is None and name.name in ctes:
                return
            kinds = {"select", "update"} if id(node) in self._locked else {"select"}
        for kind in kinds:
            self.accesses.add(TableAccess(kind, name, creates=id(node) in self._created))

"""The statement policy: a corpus of statements, each with the identity that sends
it, whether it must be allowed and, when not, the category of the denial.

Everyday driver SQL must pass; attacks must fail closed with a reason a developer can act on.
No database is needed: decisions are made from the statement text and the identity's rules.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.config import PolicyConfig, parse_config
from gateway.identity import Identity
from gateway.policy import PolicyEngine
from gateway.policy.analysis import analyze
from gateway.policy.facts import TableAccess, TableName

CONFIG: dict[str, Any] = {
    "name": "policy-tests",
    "database": {"url": "postgresql://gateway@localhost/app"},
    "issuers": [{"name": "dev", "issuer": "dev", "audience": "gateway", "hs256_secret": "DEV_SECRET"}],
    "identities": [
        {
            # The dev.toml orders worker: reads orders and customers, writes orders.
            "name": "writer",
            "issuer": "dev",
            "role": "app_writer",
            "rules": [
                {"allow": ["select"], "tables": ["public.orders", "public.customers"]},
                {"allow": ["insert", "update"], "tables": ["public.orders"]},
            ],
        },
        {
            "name": "reader",
            "issuer": "dev",
            "role": "app_reader",
            "read_only": True,
            "rules": [{"allow": ["select"], "tables": ["public.*"]}],
        },
        {
            "name": "owner",
            "issuer": "dev",
            "role": "app_owner",
            "rules": [{"allow": ["select", "insert", "update", "delete", "merge"], "tables": ["public.*"]}],
        },
        {
            # May write orders with INSERT/UPDATE but was never given MERGE or DELETE.
            "name": "upserter",
            "issuer": "dev",
            "role": "app_writer",
            "rules": [
                {"allow": ["select"], "tables": ["public.orders", "public.customers"]},
                {"allow": ["insert", "update"], "tables": ["public.orders"]},
                {"allow": ["merge"], "tables": ["public.customers"]},
            ],
        },
        {
            "name": "clerk",
            "issuer": "dev",
            "role": "app_reader",
            "rules": [{"allow": ["select"], "tables": ["public.customers"]}],
        },
        {
            "name": "migrator",
            "issuer": "dev",
            "role": "app_owner",
            "rules": [
                {"allow": ["select"], "tables": ["public.*"]},
                {"allow": ["ddl"], "tables": ["public.orders", "public.scratch"]},
            ],
        },
        {
            "name": "auditor",
            "issuer": "dev",
            "role": "app_reader",
            "rules": [
                {"allow": ["select"], "tables": ["public.*", "pg_catalog.pg_class", "information_schema.tables"]},
            ],
        },
        {
            "name": "sleeper",
            "issuer": "dev",
            "role": "app_reader",
            "functions": ["pg_sleep", "my_schema.safe_fn"],
            "rules": [{"allow": ["select"], "tables": ["public.*"]}],
        },
        {
            "name": "app",
            "issuer": "dev",
            "role": "app_reader",
            "schemas": ["app", "public"],
            "rules": [{"allow": ["select"], "tables": ["app.orders", "app.customers", "public.customers"]}],
        },
        {
            "name": "quoted",
            "issuer": "dev",
            "role": "app_reader",
            "rules": [{"allow": ["select"], "tables": ["public.Orders", "public.örders"]}],
        },
        {
            "name": "narrowed",
            "issuer": "dev",
            "role": "app_reader",
            "rules": [
                {
                    "allow": ["select"],
                    "tables": ["public.orders", "public.customers"],
                    "columns": {"public.customers": ["id", "name"]},
                }
            ],
        },
    ],
}

GATEWAY_CONFIG = parse_config(CONFIG)
IDENTITIES = {config.name: Identity.from_config(config) for config in GATEWAY_CONFIG.identities}
DEEP_PARENS = "select " + "(" * 5000 + "1" + ")" * 5000


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(PolicyConfig())


def case(case_id: str, sql: str, identity: str, allowed: bool, category: str | tuple[str, ...] | None = None) -> Any:
    return pytest.param(sql, identity, allowed, category, id=case_id)


# ---------------------------------------------------------------------------- the corpus

EVERYDAY = [
    case("values-params-without-spaces", "insert into orders (id, status) VALUES ($1,$2)", "writer", True),
    case("params-in-select-list", "select $1,$2", "writer", True),
    case("many-params-without-spaces", "select $1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11", "writer", True),
    case("in-list-of-params", "select * from orders where id in ($1,$2,$3)", "writer", True),
    case("param-casts", "select $1::int, $2::text[]", "writer", True),
    case(
        "many-builtin-casts",
        "select $1::uuid, $2::numeric(10,2), $3::varchar(20), $4::timestamp with time zone, "
        "$5::double precision, $6::boolean, $7::bigint, $8::smallint, $9::real, $10::jsonb",
        "writer",
        True,
    ),
    case("cast-function-syntax", "select cast(id as bigint) from orders", "writer", True),
    case("array-literal-cast", "select '{1,2}'::int[]", "writer", True),
    case("qualified-builtin-type", "select $1::pg_catalog.text", "writer", True),
    case("json-arrow-operators", "select data->>'k', data->'a'->0, data #>> '{a,b}' from orders", "writer", True),
    case("jsonb-containment", "select * from orders where data @> $1::jsonb", "writer", True),
    case(
        "jsonb-key-operators", "select data ? 'a', data ?| array['a'], data ?& array['a'] from orders", "writer", True
    ),
    case("json-arrow-inside-function-call", "select jsonb_array_elements(data->'tags') from orders", "writer", True),
    case(
        "lateral-json-expansion",
        "select e from orders cross join lateral jsonb_array_elements(data->'tags') as e",
        "writer",
        True,
    ),
    case("equals-any-param", "select * from orders where id = ANY($1)", "writer", True),
    case("any-of-text-array", "select count(*) from orders where status = any($1::text[])", "writer", True),
    case("array-overlap", "select * from orders where tags && $1::text[]", "writer", True),
    case("inner-join", "select o.id, c.name from orders o join customers c on c.id = o.customer_id", "writer", True),
    case(
        "left-join-lateral",
        "select * from orders o left join lateral "
        "(select * from customers c where c.id = o.customer_id limit 1) c on true",
        "writer",
        True,
    ),
    case("join-using", "select * from orders full outer join customers using (id)", "writer", True),
    case(
        "subquery-in-where",
        "select * from orders where customer_id in (select id from customers where country = $1)",
        "writer",
        True,
    ),
    case(
        "not-exists",
        "select id from orders where not exists (select 1 from customers where customers.id = orders.customer_id)",
        "writer",
        True,
    ),
    case("scalar-subquery", "select (select count(*) from customers), id from orders", "writer", True),
    case(
        "cte",
        "with recent as (select * from orders where created_at > now() - interval '1 day') select count(*) from recent",
        "writer",
        True,
    ),
    case(
        "recursive-cte",
        "with recursive t(n) as (select 1 union all select n + 1 from t where n < 10) select n from t",
        "writer",
        True,
    ),
    case(
        "window-function",
        "select id, row_number() over (partition by customer_id order by created_at desc) from orders",
        "writer",
        True,
    ),
    case(
        "named-window-with-frame",
        "select sum(id) over w from orders window w as (order by id rows between unbounded preceding and current row)",
        "writer",
        True,
    ),
    case("lag-and-empty-window", "select lag(id, 1) over (order by id), count(*) over () from orders", "writer", True),
    case("aggregate-filter", "select count(*) filter (where status = 'new') from orders", "writer", True),
    case(
        "ordered-aggregates",
        "select array_agg(id order by id), string_agg(distinct status, ',') from orders",
        "writer",
        True,
    ),
    case("within-group", "select percentile_cont(0.5) within group (order by id) from orders", "writer", True),
    case(
        "group-by-having",
        "select date_trunc('day', created_at), count(*) from orders group by 1 having count(*) > 1",
        "writer",
        True,
    ),
    case("group-by-rollup", "select status, count(*) from orders group by rollup (status)", "writer", True),
    case("grouping-sets", "select status, count(*) from orders group by grouping sets ((status), ())", "writer", True),
    case("order-limit-offset", "select * from orders order by id desc nulls last limit 10 offset 20", "writer", True),
    case("param-limit-offset", "select id from orders limit $1 offset $2", "writer", True),
    case("fetch-first", "select id from orders order by id fetch first 5 rows only", "writer", True),
    case(
        "distinct-on",
        "select distinct on (customer_id) * from orders order by customer_id, created_at desc",
        "writer",
        True,
    ),
    case("insert-returning", "insert into orders (status) values ('new') returning id", "writer", True),
    case("insert-default-values", "insert into orders default values", "writer", True),
    case("insert-select", "insert into orders (status) select status from orders where id = $1", "writer", True),
    case(
        "on-conflict-do-nothing",
        "insert into orders (id, status) values (1, 'x') on conflict do nothing",
        "writer",
        True,
    ),
    case(
        "on-conflict-do-update-with-update-rule",
        "insert into orders (id, status) values ($1,$2) on conflict (id) do update set status = excluded.status",
        "writer",
        True,
    ),
    case("update-returning", "update orders set status = $1 where id = $2 returning id, status", "writer", True),
    case("update-row-assignment", "update orders set (status, note) = ($1, $2) where id = $3", "writer", True),
    case(
        "update-from",
        "update orders set status = c.name from customers c where c.id = orders.customer_id",
        "writer",
        True,
    ),
    case("delete-using", "delete from orders using customers where customers.id = orders.customer_id", "owner", True),
    case("delete-returning-star", "delete from orders where id = $1 returning *", "owner", True),
    case(
        "merge-with-merge-rule",
        "merge into orders o using customers c on o.customer_id = c.id "
        "when matched then update set status = 'x' when not matched then insert (status) values ('y')",
        "owner",
        True,
    ),
    case(
        "lateral-subquery",
        "select c.id, o.* from customers c, lateral (select * from orders where customer_id = c.id limit 1) o",
        "writer",
        True,
    ),
    case("unnest-param", "select * from unnest($1::int[]) as t(x)", "writer", True),
    case("unnest-with-ordinality", "select x from unnest(array[1,2]) with ordinality as u(x, n)", "writer", True),
    case("generate-series", "select * from generate_series(1, 10) g", "writer", True),
    case("jsonb-to-recordset", "select * from jsonb_to_recordset($1::jsonb) as x(a int, b text)", "writer", True),
    case("union", "select id from orders union select id from customers", "writer", True),
    case("intersect", "select id from orders intersect select id from customers", "writer", True),
    case("except-all", "select id from orders except all select id from customers", "writer", True),
    case("dollar-quoted-string", "select $$x$$", "writer", True),
    case("tagged-dollar-quote", "select $tag$it's $1, not a param$tag$ from orders", "writer", True),
    case("escape-string", "select e'a\\nb'", "writer", True),
    case("values-statement", "values (1, 2), (3, 4)", "writer", True),
    case("values-in-from", "select * from (values (1, 'a'), (2, 'b')) as t(id, name)", "writer", True),
    case("table-statement", "table orders", "writer", True),
    case("trailing-semicolon", "select 1;", "writer", True),
    case("case-expression", "select case when id > 1 then 'a' else 'b' end from orders", "writer", True),
    case(
        "coalesce-greatest-nullif",
        "select coalesce(note, ''), greatest(1, 2), nullif(status, '') from orders",
        "writer",
        True,
    ),
    case(
        "string-functions",
        "select lower(status), upper(status), length(note), left(note, 3), format('%s-%s', id, status) from orders",
        "writer",
        True,
    ),
    case(
        "sql-standard-string-functions",
        "select substring(note from 1 for 3), position('a' in note), trim(both ' ' from note) from orders",
        "writer",
        True,
    ),
    case(
        "like-ilike-regex",
        "select id from orders where note like $1 or note ilike $2 or note ~ '^a' or note ~* '^a'",
        "writer",
        True,
    ),
    case("similar-to", "select id from orders where note similar to 'a%'", "writer", True),
    case("ilike-any", "select id from orders where note ilike any (array['a%', 'b%'])", "writer", True),
    case(
        "date-time",
        "select extract(epoch from created_at), now()::date, current_date, current_timestamp, "
        "to_char(created_at, 'YYYY') from orders",
        "writer",
        True,
    ),
    case("at-time-zone", "select created_at at time zone 'UTC' from orders", "writer", True),
    case("interval-arithmetic", "select id from orders where created_at > now() - $1::interval", "writer", True),
    case("typed-literals", "select date '2020-01-01', timestamp '2020-01-01 00:00', interval '1' day", "writer", True),
    case(
        "json-builders",
        "select jsonb_build_object('id', o.id, 'customer', c.name), row_to_json(o) "
        "from orders o join customers c on c.id = o.customer_id",
        "writer",
        True,
    ),
    case("json-agg-of-rows", "select json_agg(o) from orders o", "writer", True),
    case("array-constructors", "select array[1,2], (array[1,2])[1], array(select id from orders)", "writer", True),
    case("row-comparison", "select * from orders where (status, id) = ($1, $2)", "writer", True),
    case("is-distinct-from", "select id from orders where id is distinct from $1", "writer", True),
    case(
        "between-and-is-true", "select id from orders o where o.id between $1 and $2 and flag is true", "writer", True
    ),
    case("exists-param", "select exists (select 1 from orders where id = $1)", "writer", True),
    case("gen-random-uuid", "select gen_random_uuid()", "writer", True),
    case(
        "full-text-search",
        "select id from orders where to_tsvector('english', note) @@ plainto_tsquery('english', $1)",
        "writer",
        True,
    ),
    case("range-constructor", "select int4range(1, 10) @> 5", "writer", True),
    case("named-argument", "select make_interval(days => 1)", "writer", True),
    case("collate", 'select id from orders where status = $1::text collate "C"', "writer", True),
    case(
        "arithmetic-and-bitwise",
        "select 5 % 3, 2 ^ 3, 7 / 2, -id, ~1, 1 << 2, 1 & 3, 1 | 2, 1 # 2 from orders",
        "writer",
        True,
    ),
    case("pg-catalog-qualified-builtin", "select pg_catalog.lower(status) from orders", "writer", True),
    case("quoted-lowercase-function-name", 'select "lower"(status) from orders', "writer", True),
    case("uppercase-keywords-and-names", "SELECT ID FROM ORDERS WHERE STATUS = $1", "writer", True),
    case("for-update-with-update-rule", "select * from orders where id = $1 for update skip locked", "writer", True),
    case("comment-hides-nothing", "select 1 /* ; delete from orders */", "writer", True),
    case("line-comment-hides-nothing", "select 1 -- ; delete from orders", "writer", True),
    case("string-holding-params-text", "select '$1,$2' from orders", "writer", True),
    case("dollar-quote-after-param", "select $1,$$ from payments $$", "writer", True),
    case("quoted-identifier-with-dollars", 'select "$1,$2" from orders', "writer", True),
]

MULTIPLE_AND_HIDDEN_STATEMENTS = [
    case("two-statements", "select 1; delete from orders", "owner", False, "multiple_statements"),
    case("two-selects", "select 1; select 2", "writer", False, "multiple_statements"),
    case("params-then-second-statement", "select $1,$2; delete from orders", "owner", False, "multiple_statements"),
    case("params-then-hidden-select", "select $1,$2; select 1 from payments", "owner", False, "multiple_statements"),
    case(
        "params-where-then-second-statement",
        "select $1,$2 from orders where note = $3; delete from payments",
        "owner",
        False,
        "multiple_statements",
    ),
    case("param-followed-by-dollar-tag", "select $1,$2$ from payments $2$", "owner", False, "parse"),
    case(
        "param-dollar-tag-hiding-subquery",
        "select $1,$2$ ' $2$, (select 1 from payments) -- '",
        "clerk",
        False,
        "parse",
    ),
    case("dollar-quote-hiding-subquery", "select $a$ ' $a$, (select 1 from payments) -- '", "clerk", False, "table"),
    case("line-comment-ends-before-subquery", "select 1 -- $1,$2\n, (select 1 from payments)", "clerk", False, "table"),
    case("param-zero", "select $0", "writer", False, "lexical"),
    case("empty-statement", "   ", "writer", False, "parse"),
    case("unterminated-string", "select 'abc", "writer", False, "parse"),
    case("postgres-syntax-error", "select from where", "writer", False, "parse"),
]

DATA_MODIFYING_NESTED = [
    case(
        "delete-in-cte-without-delete-rule",
        "with d as (delete from orders returning *) select * from d",
        "writer",
        False,
        "table",
    ),
    case(
        "delete-in-cte-of-other-table",
        "with d as (delete from payments returning *) select 1",
        "writer",
        False,
        "table",
    ),
    case("delete-in-cte-with-delete-rule", "with d as (delete from orders returning *) select * from d", "owner", True),
    case(
        "update-in-cte-of-read-only-table",
        "with u as (update customers set name = 'x' returning *) select * from u",
        "writer",
        False,
        "table",
    ),
    case(
        "insert-in-cte-of-read-only-table",
        "with i as (insert into customers (name) values ('x') returning *) select * from i",
        "writer",
        False,
        "table",
    ),
    case(
        "delete-in-cte-of-insert",
        "with d as (delete from customers returning *) insert into orders (customer_id) select id from d",
        "writer",
        False,
        "table",
    ),
    case(
        "on-conflict-do-update-needs-update",
        "insert into customers (id, name) values (1, 'x') on conflict (id) do update set name = excluded.name",
        "clerk",
        False,
        "table",
    ),
    case(
        "merge-needs-merge-rule",
        "merge into orders o using customers c on o.customer_id = c.id when matched then update set status = 'x'",
        "upserter",
        False,
        "table",
    ),
    case(
        "merge-delete-action-needs-delete",
        "merge into customers t using orders o on t.id = o.customer_id when matched then delete",
        "upserter",
        False,
        "table",
    ),
    case(
        "merge-do-nothing-still-needs-merge",
        "merge into payments p using orders o on p.order_id = o.id when matched then do nothing",
        "writer",
        False,
        "table",
    ),
    case(
        "merge-source-must-be-readable",
        "merge into orders o using payments p on o.id = p.order_id when matched then delete",
        "clerk",
        False,
        "table",
    ),
    case(
        "insert-select-from-unlisted-table",
        "insert into orders (note) select secret from payments",
        "writer",
        False,
        "table",
    ),
    case(
        "update-from-unlisted-table",
        "update orders set note = p.secret from payments p where p.order_id = orders.id",
        "writer",
        False,
        "table",
    ),
    case(
        "returning-subquery-of-unlisted-table",
        "insert into orders (status) values ('x') returning (select secret from payments limit 1)",
        "writer",
        False,
        "table",
    ),
    case(
        "delete-using-unlisted-table",
        "delete from orders using payments where payments.order_id = orders.id",
        "writer",
        False,
        "table",
    ),
    case("select-into", "select * into newtable from orders", "owner", False, "select_into"),
    case("select-into-temp", "select * into temp t from orders", "owner", False, "select_into"),
    case("create-table-as-without-ddl", "create table t as select * from orders", "owner", False, "table"),
]

LOCKING = [
    case("for-update-needs-update", "select * from customers for update", "writer", False, "table"),
    case("for-share-needs-update", "select * from customers for share", "writer", False, "table"),
    case("for-no-key-update-needs-update", "select * from customers for no key update", "writer", False, "table"),
    case("for-key-share-needs-update", "select * from customers for key share", "writer", False, "table"),
    case(
        "for-update-of-alias",
        "select * from orders o join customers c on c.id = o.customer_id for update of o",
        "writer",
        False,
        "table",
    ),
    case(
        "for-update-reaches-into-subquery",
        "select * from (select * from customers) c for update",
        "writer",
        False,
        "table",
    ),
    case(
        "for-update-reaches-into-parenthesized-join",
        "select * from (orders join customers on true) for update",
        "writer",
        False,
        "table",
    ),
    case(
        "for-update-does-not-reach-ctes",
        "with c as (select * from customers) "
        "select * from orders join c on c.id = orders.customer_id for update of orders",
        "writer",
        True,
    ),
    case("for-update-by-read-only-identity", "select * from orders for update", "reader", False, "read_only"),
]

CTE_SCOPES = [
    # SEARCH and CYCLE are sqlglot nodes of the WITH itself, outside the allowlist.
    case(
        "recursive-cte-search-clause",
        "with recursive t(n) as (select 1 union all select n + 1 from t where n < 3) search depth first by n set o "
        "select n from t",
        "clerk",
        False,
        "syntax",
    ),
    case("cte-named-like-table-reads-no-table", "with orders as (select 1) select * from orders", "clerk", True),
    case(
        "inner-cte-does-not-shadow-outer-reference",
        "select * from orders, (with orders as (select 1) select * from orders) x",
        "clerk",
        False,
        "table",
    ),
    case(
        "outer-reference-after-inner-cte",
        "select * from (with orders as (select 1) select * from orders) x, orders",
        "clerk",
        False,
        "table",
    ),
    case(
        "cte-body-reads-the-real-table",
        "with orders as (select * from orders) select * from orders",
        "clerk",
        False,
        "table",
    ),
    case(
        "recursive-cte-reference-is-the-cte",
        "with recursive orders as (select 1 union all select 1 from orders) select * from orders",
        "clerk",
        True,
    ),
    case(
        "cte-visible-in-nested-subquery",
        "with orders as (select 1) select * from (select * from orders) y",
        "clerk",
        True,
    ),
    case(
        "earlier-cte-visible-to-later-cte",
        "with orders as (select 1), o2 as (select * from orders) select * from o2",
        "clerk",
        True,
    ),
    case(
        "later-cte-not-visible-to-earlier-cte",
        "with o2 as (select * from orders), orders as (select 1) select * from o2",
        "clerk",
        False,
        "table",
    ),
    case("write-target-is-never-a-cte", "with orders as (select 1) delete from orders", "clerk", False, "table"),
    case(
        "schema-qualified-name-is-never-a-cte",
        "with orders as (select 1) select * from public.orders",
        "clerk",
        False,
        "table",
    ),
    case("cte-reading-unlisted-table", "with a as (select * from payments) select * from a", "writer", False, "table"),
]

NAMES = [
    case("quoted-mixed-case-is-another-table", 'select * from "Orders"', "writer", False, "table"),
    case("quoted-lower-case-is-the-table", 'select * from "orders"', "writer", True),
    case("unquoted-upper-case-folds", "select * from ORDERS", "writer", True),
    case("schema-qualified", "select * from public.orders", "writer", True),
    case("quoted-schema-qualified", 'select * from "public"."orders"', "writer", True),
    case("unquoted-upper-schema-folds", "select * from PUBLIC.ORDERS", "writer", True),
    case("quoted-upper-schema-is-another-schema", 'select * from "PUBLIC".orders', "writer", False, "table"),
    case("other-schema", "select * from other.orders", "writer", False, "table"),
    case("three-part-name", "select * from app.public.orders", "writer", False, "syntax"),
    case("rule-naming-quoted-table-allows-it", 'select * from "Orders"', "quoted", True),
    case("rule-naming-quoted-table-not-lower-case", "select * from orders", "quoted", False, "table"),
    case("unqualified-name-must-be-allowed-in-every-schema", "select * from orders", "app", False, "table"),
    case("qualified-name-in-second-schema", "select * from app.orders", "app", True),
    case("unqualified-name-allowed-in-all-schemas", "select * from customers", "app", True),
    case("identifier-longer-than-postgres-keeps", "select * from " + "a" * 70, "owner", False, "parser_disagreement"),
    case("non-ascii-lower-case-name", "select * from örders", "quoted", True),
    case("non-ascii-upper-case-is-not-folded", "select * from ÖRDERS", "quoted", False, "table"),
]

CATALOG = [
    case("pg-class-unqualified", "select * from pg_class", "reader", False, "table"),
    case("pg-class-qualified", "select * from pg_catalog.pg_class", "reader", False, "table"),
    case("pg-authid", "select rolpassword from pg_authid", "owner", False, "table"),
    case("information-schema", "select * from information_schema.tables", "reader", False, "table"),
    case("catalog-in-subquery", "select * from orders where exists (select 1 from pg_roles)", "reader", False, "table"),
    case("exact-catalog-rule-unqualified", "select * from pg_class", "auditor", True),
    case("exact-catalog-rule-qualified", "select * from pg_catalog.pg_class", "auditor", True),
    case("exact-information-schema-rule", "select * from information_schema.tables", "auditor", True),
    case("exact-rule-covers-only-that-table", "select * from pg_catalog.pg_authid", "auditor", False, "table"),
    case("exact-rule-covers-only-that-view", "select * from information_schema.columns", "auditor", False, "table"),
    case("table-function-in-from", "select * from pg_read_file('/etc/passwd')", "reader", False, "function"),
    case("table-function-in-lateral", "select * from orders o, lateral pg_ls_dir('.') f", "reader", False, "function"),
    case("table-function-aliased", "select x from pg_sleep(1) as x", "reader", False, "function"),
]

FUNCTIONS = [
    case("mysql-alias-lcase", "select lcase(status) from orders", "writer", False, "function"),
    case("quoted-capitalised-lower", 'select "Lower"(status) from orders', "writer", False, "function"),
    case("schema-qualified-lookalike", "select public.lower(status) from orders", "writer", False, "function"),
    case("pg-sleep", "select pg_sleep(10)", "reader", False, "function"),
    case("pg-sleep-qualified", "select pg_catalog.pg_sleep(10)", "reader", False, "function"),
    case("pg-sleep-for", "select pg_sleep_for('1 minute')", "reader", False, "function"),
    case("set-config", "select set_config('role', 'postgres', true)", "reader", False, "function"),
    case("current-setting", "select current_setting('server_version')", "reader", False, "function"),
    case("advisory-lock", "select pg_advisory_lock(1)", "reader", False, "function"),
    case("try-advisory-lock", "select pg_try_advisory_xact_lock(1)", "reader", False, "function"),
    case("lo-import", "select lo_import('/etc/passwd')", "reader", False, "function"),
    case("dblink", "select * from dblink('host=x', 'select 1') as t(x int)", "reader", False, "function"),
    case("dblink-exec", "select dblink_exec('host=x', 'drop table orders')", "reader", False, "function"),
    case("nextval", "select nextval('orders_id_seq')", "writer", False, "function"),
    case("setval", "select setval('orders_id_seq', 1)", "writer", False, "function"),
    case("terminate-backend", "select pg_terminate_backend(1)", "reader", False, "function"),
    case("reload-conf", "select pg_reload_conf()", "reader", False, "function"),
    case("txid", "select txid_current()", "reader", False, "function"),
    case("query-to-xml", "select query_to_xml('select * from payments', true, true, '')", "reader", False, "function"),
    case("unknown-function", "select my_func(1)", "reader", False, "function"),
    case("function-in-where", "select * from orders where pg_sleep(1) is not null", "reader", False, "function"),
    case(
        "function-in-insert-values",
        "insert into orders (note) values (current_setting('is_superuser'))",
        "writer",
        False,
        "function",
    ),
    case("function-in-order-by", "select * from orders order by pg_sleep(1)", "reader", False, "function"),
    case("identity-function-list-allows-denied-function", "select pg_sleep(0)", "sleeper", True),
    # The entry names the function PostgreSQL resolves, however the call spells it.
    case("identity-function-list-matches-resolved-name", "select pg_catalog.pg_sleep(0)", "sleeper", True),
    case("identity-function-list-allows-qualified-function", "select my_schema.safe_fn(1)", "sleeper", True),
    case("identity-function-list-qualified-name-only", "select safe_fn(1)", "sleeper", False, "function"),
    case("explicit-operator-of-user-schema", "select 1 OPERATOR(public.+) 2", "reader", False, "operator"),
    case("explicit-operator-of-catalog", "select 1 OPERATOR(pg_catalog.+) 2", "reader", False, "operator"),
    case("cast-to-user-type", "select $1::myschema.mytype", "reader", False, "cast"),
    case("cast-to-extension-type", "select 'x'::citext", "reader", False, "cast"),
    case("cast-function-syntax-to-user-type", "select cast($1 as public.text)", "reader", False, "cast"),
    case("cast-to-row-type", "select null::orders", "reader", False, "cast"),
    case("cast-to-regclass", "select 'pg_authid'::regclass", "reader", False, ("syntax", "cast")),
]

UTILITY = [
    case(sql.lower().replace(" ", "-"), sql, "owner", False, "statement_class")
    for sql in [
        "LISTEN x",
        "NOTIFY x",
        "NOTIFY x, 'payload'",
        "UNLISTEN *",
        "DISCARD ALL",
        "CHECKPOINT",
        "SAVEPOINT s",
        "RELEASE SAVEPOINT s",
        "ROLLBACK TO SAVEPOINT s",
        "BEGIN",
        "START TRANSACTION",
        "COMMIT",
        "ROLLBACK",
        "SET search_path = public",
        "SET LOCAL statement_timeout = 0",
        "RESET ALL",
        "RESET role",
        "SET ROLE postgres",
        "SET SESSION AUTHORIZATION postgres",
        "SHOW search_path",
        "COPY orders TO PROGRAM 'id'",
        "COPY orders FROM STDIN",
        "COPY (select 1) TO '/tmp/x'",
        "DO $$ begin perform 1; end $$",
        "CALL p()",
        "PREPARE p AS select 1",
        "EXECUTE p",
        "DEALLOCATE p",
        "DEALLOCATE ALL",
        "VACUUM orders",
        "ANALYZE orders",
        "LOCK orders",
        "LOCK TABLE orders IN ACCESS EXCLUSIVE MODE",
        "EXPLAIN select 1",
        "EXPLAIN ANALYZE delete from orders",
        "CLOSE c",
        "FETCH c",
        "MOVE c",
        "DECLARE c CURSOR FOR select 1",
        "LOAD 'x'",
        "ALTER SYSTEM SET x = 1",
        "REFRESH MATERIALIZED VIEW v",
        "CLUSTER orders",
        "REINDEX TABLE orders",
    ]
]

LEXICAL = [
    case("nul-byte", "select 1\x00; delete from orders", "owner", False, "lexical"),
    case("no-break-space", "select\u00a01", "writer", False, "lexical"),
    case("no-break-space-in-name", "select * from orders\u00a0x", "writer", False, "lexical"),
    case("ideographic-space", "select\u30001", "writer", False, "lexical"),
    case("unicode-escaped-identifier", 'select * from U&"\\006fRDERS"', "writer", False, "lexical"),
    case("unicode-escaped-string", "select U&'\\0061'", "writer", False, "lexical"),
    case("over-the-size-cap", "select 1 -- " + "x" * 40_000, "writer", False, "too_large"),
    case("deeply-nested-parentheses", DEEP_PARENS, "writer", False, "too_complex"),
    case("deeply-nested-not", "select " + "not " * 2000 + "true", "writer", False, "too_complex"),
    case("long-operator-chain", "select " + "1+" * 3000 + "1", "writer", False, "too_complex"),
]

READ_ONLY = [
    case("read-only-select", "select * from orders", "reader", True),
    case("read-only-insert", "insert into orders (status) values ('x')", "reader", False, "read_only"),
    case("read-only-update", "update orders set status = 'x'", "reader", False, "read_only"),
    case("read-only-delete", "delete from orders", "reader", False, "read_only"),
    case(
        "read-only-merge",
        "merge into orders o using customers c on o.customer_id = c.id when matched then delete",
        "reader",
        False,
        "read_only",
    ),
    case(
        "read-only-delete-in-cte",
        "with d as (delete from orders returning *) select * from d",
        "reader",
        False,
        "read_only",
    ),
    case("read-only-ddl", "create table scratch (id int)", "reader", False, "read_only"),
]

DDL = [
    case("create-table-needs-ddl", "create table scratch (id int)", "writer", False, "table"),
    case(
        "create-table-with-ddl-rule", "create table scratch (id int primary key, note text not null)", "migrator", True
    ),
    case("create-table-elsewhere", "create table other (id int)", "migrator", False, "table"),
    case("create-table-as", "create table scratch as select * from orders", "migrator", True),
    case("create-index", "create index on orders (id)", "migrator", True),
    # A temporary table outlives the statement in the session's pg_temp: outside sqlglot's allowlist.
    case("create-temp-table", "create temp table scratch (id int)", "migrator", False, "syntax"),
    case("create-index-on-unlisted-table", "create index on customers (id)", "migrator", False, "table"),
    case("create-view-not-listed", "create view v as select * from orders", "migrator", False, "table"),
    case("drop-table", "drop table orders", "migrator", True),
    case("drop-unlisted-table", "drop table customers", "migrator", False, "table"),
    case("drop-two-tables-one-unlisted", "drop table scratch, customers", "migrator", False, "table"),
    case("alter-table-add-column", "alter table orders add column note2 text", "migrator", True),
    case("alter-table-add-constraint", "alter table orders add constraint u unique (id)", "migrator", True),
    case("alter-unlisted-table", "alter table customers add column x int", "migrator", False, "table"),
    case("truncate", "truncate orders", "migrator", True),
    case("truncate-unlisted-table", "truncate customers", "migrator", False, "table"),
    case("comment-on-table", "comment on table orders is 'x'", "migrator", True),
    case("comment-on-column-of-unlisted-table", "comment on column customers.name is 'x'", "migrator", False, "table"),
    case("comment-on-column-needs-ddl", "comment on column orders.note is 'x'", "writer", False, "table"),
    case("grant-on-table", "grant select on orders to someone", "migrator", True),
    case("grant-needs-ddl", "grant select on orders to someone", "writer", False, "table"),
    case("revoke-on-unlisted-table", "revoke select on customers from public", "migrator", False, "table"),
    case("grant-on-function", "grant execute on function f() to public", "migrator", False, "statement_class"),
    case("grant-on-schema", "grant usage on schema public to x", "migrator", False, "statement_class"),
    case(
        "grant-on-all-tables-in-schema",
        "grant select on all tables in schema public to x",
        "migrator",
        False,
        "statement_class",
    ),
    case("revoke-on-database", "revoke all on database app from public", "migrator", False, "statement_class"),
    case("grant-role", "grant postgres to app_writer", "migrator", False, "statement_class"),
    case("alter-table-owner", "alter table orders owner to postgres", "migrator", False, "statement_class"),
    case(
        "alter-table-disable-rls", "alter table orders disable row level security", "migrator", False, "statement_class"
    ),
    case("alter-table-rename", "alter table orders rename to orders2", "migrator", False, "statement_class"),
    case(
        "create-function",
        "create function f() returns int as 'select 1' language sql",
        "migrator",
        False,
        "statement_class",
    ),
    case(
        "create-or-replace-function",
        "create or replace function f() returns int as $$ select 1 $$ language sql",
        "migrator",
        False,
        "statement_class",
    ),
    case("drop-function", "drop function f", "migrator", False, "statement_class"),
    case("create-schema-no-rule-covers", "create schema s", "migrator", False, "table"),
    case("create-schema-for-another-role", "create schema s authorization postgres", "migrator", False,
         "statement_class"),
    case("create-role", "create role r superuser", "migrator", False, "statement_class"),
    case("create-extension", "create extension dblink", "migrator", False, "statement_class"),
    case(
        "create-trigger",
        "create trigger t before insert on orders for each row execute function f()",
        "migrator",
        False,
        "statement_class",
    ),
    case(
        "create-materialized-view", "create materialized view scratch as select 1", "migrator", False, "statement_class"
    ),
    case("create-sequence", "create sequence s", "migrator", False, "statement_class"),
    case("create-policy", "create policy p on orders using (true)", "migrator", False, "statement_class"),
    case(
        "default-calling-denied-function",
        "create table scratch (id int default nextval('s'))",
        "migrator",
        False,
        "function",
    ),
]

COLUMNS = [
    case("star-on-narrowed-table", "select * from customers", "narrowed", False, "columns"),
    case("star-on-table-without-column-rules", "select * from orders", "narrowed", True),
    case("listed-columns-of-narrowed-table", "select id, name from customers where id = $1", "narrowed", True),
    case("unlisted-column-in-where", "select id from customers where country = $1", "narrowed", False, "columns"),
    case("qualified-star-on-narrowed-table", "select c.* from customers c", "narrowed", False, "columns"),
    case("whole-row-reference", "select c from customers c", "narrowed", False, "columns"),
    case("whole-row-in-function", "select row_to_json(c) from customers c", "narrowed", False, "columns"),
    case("composite-field-access", "select (c).name from customers c", "narrowed", False, "columns"),
]

# The attack classes of issue 3, beyond the corpus above.
PARSER_DIFFERENTIALS = [
    case("mysql-alias-ifnull", "select ifnull(note, '') from orders", "writer", False, "function"),
    case("quoted-deny-listed-name", 'select "set_config"(\'role\', \'x\', false)', "owner", False, "function"),
    case("copy-query-to-program", "copy (select 1) to program 'id'", "owner", False, "statement_class"),
    case("show-all", "SHOW ALL", "owner", False, "statement_class"),
    case("reset-session-authorization", "RESET SESSION AUTHORIZATION", "owner", False, "statement_class"),
    case("abort", "ABORT", "owner", False, "statement_class"),
    case("security-label", "SECURITY LABEL ON TABLE orders IS 'x'", "owner", False, "statement_class"),
    case("xmltable-in-from", "select * from xmltable('/a' passing '<a/>' columns x int path 'x')", "owner", False,
         "syntax"),
    case("values-params-without-spaces-alone", "values ($1,$2)", "writer", True),
    case("param-glued-to-dollar-quote", "select $1,$2$$x$$", "owner", False, "parse"),
]

SCOPE_TRICKS = [
    case("set-operation-reads-unlisted-table", "select id from orders union all select secret from payments",
         "writer", False, "table"),
    case("intersect-reads-unlisted-table", "select id from orders intersect select id from payments", "writer",
         False, "table"),
    case("catalog-table-inside-cte", "with x as (select * from pg_catalog.pg_authid) select 1", "reader", False,
         "table"),
    case("cte-named-like-catalog-table", "with pg_class as (select 1) select * from pg_class", "reader", True),
    case("quoted-catalog-schema", 'select * from "pg_catalog"."pg_class"', "reader", False, "table"),
    case("table-statement-of-catalog", "TABLE pg_authid", "owner", False, "table"),
    case("catalog-view-unqualified", "select * from pg_stat_activity", "owner", False, "table"),
    case("lateral-subquery-reads-unlisted-table",
         "select * from orders o, lateral (select * from payments p where p.order_id = o.id) x", "writer", False,
         "table"),
]

FUNCTIONS_IN_DISGUISE = [
    case("qualified-table-function", "select * from pg_catalog.pg_read_file('x')", "owner", False, "function"),
    case("rows-from-table-function", "select * from rows from (pg_ls_dir('.')) as t", "owner", False, "function"),
    case("set-config-as-table-function", "select * from set_config('role', 'postgres', false)", "owner", False,
         "function"),
    case("lateral-file-read", "select * from orders, lateral pg_read_file('/etc/passwd') f", "owner", False,
         "function"),
    case("parenthesised-qualified-sleep", "select (pg_catalog.pg_sleep(1))", "owner", False, "function"),
    case("large-object-read", "select lo_get(1)", "owner", False, "function"),
    case("cast-to-enum", "select mood::mood from orders", "owner", False, "cast"),
    case("cast-to-lookalike-builtin-type", "select 'a'::public.text", "owner", False, "cast"),
    case("domain-with-function-in-check", "CREATE DOMAIN d AS int CHECK (pg_sleep(1) is null)", "migrator", False,
         "statement_class"),
    case("explicit-equals-operator", "select 1 OPERATOR(pg_catalog.=) 1", "owner", False, "operator"),
]

SESSION_POISONING = [
    case("standard-conforming-strings-off", "select set_config('standard_conforming_strings', 'off', false)",
         "owner", False, "function"),
    case("session-role-switch", "select set_config('role', 'postgres', false)", "owner", False, "function"),
    case("qualified-set-config", "select pg_catalog.set_config('search_path', 'public', false)", "owner", False,
         "function"),
    case("set-statement", "SET standard_conforming_strings = off", "owner", False, "statement_class"),
    case("sequence-state", "select nextval('orders_id_seq')", "owner", False, "function"),
]


def assert_decision(engine: PolicyEngine, sql: str, identity: str, allowed: bool, category: Any) -> None:
    _, decision = engine.decide(IDENTITIES[identity], sql)
    assert decision.allowed is allowed, f"{decision.reason} (category {decision.category})"
    if allowed:
        assert decision.category is None and decision.reason is None
    else:
        expected = category if isinstance(category, tuple) else (category,)
        assert decision.category in expected, decision.reason
        assert decision.reason


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), EVERYDAY)
def test_everyday_driver_sql_is_allowed(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), MULTIPLE_AND_HIDDEN_STATEMENTS)
def test_exactly_one_fully_parsed_statement_runs(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), DATA_MODIFYING_NESTED)
def test_every_nested_data_modifying_statement_counts(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), LOCKING)
def test_locking_clauses_need_update(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), CTE_SCOPES)
def test_cte_names_resolve_by_lexical_scope(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), NAMES)
def test_names_compare_as_postgres_folds_them(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), CATALOG)
def test_system_catalogs_need_an_exact_rule(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), FUNCTIONS)
def test_functions_operators_and_casts_are_judged_by_postgres_names(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), UTILITY)
def test_utility_statements_never_run(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), LEXICAL)
def test_lexical_guards_refuse_text_before_parsing(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), READ_ONLY)
def test_read_only_identity_only_selects(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), DDL)
def test_ddl_needs_a_ddl_rule_for_the_relation(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), COLUMNS)
def test_column_narrowing_denies_whole_rows(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), PARSER_DIFFERENTIALS)
def test_text_the_parsers_could_read_differently_fails_closed(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), SCOPE_TRICKS)
def test_scope_tricks_do_not_hide_a_table(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), FUNCTIONS_IN_DISGUISE)
def test_functions_in_disguise_are_judged_by_their_name(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


@pytest.mark.parametrize(("sql", "identity", "allowed", "category"), SESSION_POISONING)
def test_statements_that_would_change_the_session_are_denied(engine, sql, identity, allowed, category):
    assert_decision(engine, sql, identity, allowed, category)


def test_corpus_holds_at_least_a_hundred_statements():
    corpus = [
        EVERYDAY,
        MULTIPLE_AND_HIDDEN_STATEMENTS,
        DATA_MODIFYING_NESTED,
        LOCKING,
        CTE_SCOPES,
        NAMES,
        CATALOG,
        FUNCTIONS,
        UTILITY,
        LEXICAL,
        READ_ONLY,
        DDL,
        COLUMNS,
        PARSER_DIFFERENTIALS,
        SCOPE_TRICKS,
        FUNCTIONS_IN_DISGUISE,
        SESSION_POISONING,
    ]
    assert sum(len(table) for table in corpus) >= 100


# ---------------------------------------------------------------------------- facts


def accesses(sql: str) -> set[tuple[str, str]]:
    facts = analyze(sql, max_bytes=32 * 1024)
    assert facts.denial is None, facts.denial.message
    return {(access.kind, str(access.table)) for access in facts.accesses}


def test_delete_inside_cte_is_a_delete():
    assert ("delete", "orders") in accesses("with d as (delete from orders returning id) select * from d")


def test_statement_with_delete_inside_cte_is_still_a_select():
    assert analyze("with d as (delete from orders returning id) select * from d", 32768).kind == "select"


def test_on_conflict_do_update_is_also_an_update():
    found = accesses("insert into orders (id) values (1) on conflict (id) do update set id = excluded.id")
    assert {("insert", "orders"), ("update", "orders")} <= found


def test_on_conflict_do_nothing_is_only_an_insert():
    found = accesses("insert into orders (id) values (1) on conflict do nothing")
    assert ("update", "orders") not in found


def test_merge_counts_the_merge_and_each_action():
    found = accesses(
        "merge into orders o using customers c on o.customer_id = c.id "
        "when matched and c.name = 'x' then delete "
        "when matched then update set status = 'x' "
        "when not matched then insert (status) values ('y')"
    )
    assert {("merge", "orders"), ("delete", "orders"), ("update", "orders"), ("insert", "orders")} <= found
    assert ("select", "customers") in found


def test_locking_clause_is_an_update_of_each_table_in_from():
    found = accesses("select * from orders o join customers c on c.id = o.customer_id for share")
    assert {("update", "orders"), ("update", "customers")} <= found


def test_inner_cte_shadows_table_only_inside_its_scope():
    found = accesses("select * from orders, (with orders as (select 1) select * from orders) x")
    assert found == {("select", "orders")}


def test_cte_reference_is_not_a_table_access():
    assert accesses("with orders as (select 1) select * from orders") == set()


def test_table_names_keep_schema_and_case_as_postgres_reads_them():
    facts = analyze('select * from Public.ORDERS, "Mixed"."Case"', 32768)
    assert facts.tables == [TableName("Mixed", "Case"), TableName("public", "orders")]


def test_comment_on_column_is_ddl_on_its_table():
    assert accesses("comment on column public.orders.note is 'x'") == {("ddl", "public.orders")}


def test_params_used_are_the_numbers_written():
    facts = analyze("select $1,$2 from orders where id = $3 or id = $1", 32768)
    assert facts.params_used == frozenset({1, 2, 3})
    assert facts.param_count == 3


def test_params_inside_strings_comments_and_identifiers_are_not_params():
    facts = analyze("select '$4', \"$5\", $$ $6 $$ /* $7 */ from orders where id = $1 -- $8", 32768)
    assert facts.params_used == frozenset({1})


def test_skipped_param_numbers_show_in_params_used():
    facts = analyze("select $2", 32768)
    assert facts.params_used == frozenset({2})
    assert facts.param_count == 2


def test_statement_without_params_uses_none():
    assert analyze("select 1", 32768).params_used == frozenset()


def test_functions_are_reported_with_the_callers_spelling_and_schema():
    facts = analyze('select lcase(a), "Lower"(b), pg_catalog.upper(c), Now() from orders', 32768)
    assert facts.functions == frozenset({"lcase", "Lower", "pg_catalog.upper", "now"})


def test_casts_are_reported_by_postgres_type_name():
    facts = analyze("select $1::int, $2::double precision, $3::text[]", 32768)
    assert {"pg_catalog.int4", "pg_catalog.float8", "text"} <= facts.casts


def test_deep_nesting_is_a_denial_not_an_exception():
    facts = analyze(DEEP_PARENS, 1_000_000)
    assert facts.denial is not None
    assert facts.denial.category == "too_complex"


def test_analysis_never_raises_on_garbage():
    for text in ["", ";", ";;;", "\\", "'", '"', "$$", "$1$", "(((", "select )", "\ufffd", "--", "/*"]:
        facts = analyze(text, 32768)
        assert facts.denial is not None


def test_fingerprint_ignores_constants():
    first = analyze("select * from orders where id = 1", 32768)
    second = analyze("select * from orders where id = 2", 32768)
    assert first.fingerprint and first.fingerprint == second.fingerprint


def test_size_cap_comes_from_policy_config():
    engine = PolicyEngine(PolicyConfig(max_statement_bytes=16))
    _, decision = engine.decide(IDENTITIES["writer"], "select * from orders")
    assert decision.category == "too_large"
    assert "16" in decision.reason


def test_size_cap_counts_utf8_bytes():
    engine = PolicyEngine(PolicyConfig(max_statement_bytes=20))
    _, decision = engine.decide(IDENTITIES["writer"], "select 'ééééééé'")  # 17 characters, 24 bytes
    assert decision.category == "too_large"


# ---------------------------------------------------------------------------- cache


def test_same_text_returns_the_same_facts_object(engine):
    first, _ = engine.decide(IDENTITIES["writer"], "select id from orders where id = $1")
    second, _ = engine.decide(IDENTITIES["reader"], "select id from orders where id = $1")
    assert first is second


def test_different_text_is_analysed_afresh(engine):
    first, _ = engine.decide(IDENTITIES["writer"], "select id from orders where id = $1")
    second, _ = engine.decide(IDENTITIES["writer"], "select id from orders where id = $1 ")
    assert first is not second


def test_cached_facts_are_judged_per_identity(engine):
    sql = "update orders set status = 'x'"
    _, for_writer = engine.decide(IDENTITIES["writer"], sql)
    _, for_reader = engine.decide(IDENTITIES["reader"], sql)
    assert for_writer.allowed and not for_reader.allowed


def test_cache_is_bounded_by_config():
    engine = PolicyEngine(PolicyConfig(analysis_cache_size=2))
    first, _ = engine.decide(IDENTITIES["writer"], "select 1")
    engine.decide(IDENTITIES["writer"], "select 2")
    engine.decide(IDENTITIES["writer"], "select 3")
    again, _ = engine.decide(IDENTITIES["writer"], "select 1")
    assert again is not first
    assert again == first


# ---------------------------------------------------------------------------- decisions and reasons


def test_decision_as_json_has_the_explain_shape(engine):
    _, decision = engine.decide(IDENTITIES["writer"], "select id, lower(status) from orders")
    body = decision.as_json()
    assert set(body) == {"allowed", "identity", "kind", "tables", "columns", "functions", "reason", "approval"}
    assert body["allowed"] is True
    assert body["identity"] == "writer"
    assert body["kind"] == "select"
    assert body["tables"] == ["public.orders"]
    assert body["functions"] == ["lower"]
    assert body["reason"] is None
    assert isinstance(body["columns"], list)


def test_denied_decision_as_json_carries_the_reason(engine):
    _, decision = engine.decide(IDENTITIES["writer"], "delete from orders")
    body = decision.as_json()
    assert body["allowed"] is False
    assert body["kind"] == "delete"
    assert body["reason"] == decision.reason


def test_decision_resolves_unqualified_tables_through_the_search_path(engine):
    _, decision = engine.decide(IDENTITIES["app"], "select * from customers")
    assert decision.tables == ("app.customers", "public.customers")


def test_table_reason_names_kind_table_identity_and_the_rule_that_would_allow_it(engine):
    _, decision = engine.decide(IDENTITIES["writer"], "delete from orders where id = 1")
    assert decision.reason.startswith('DELETE on public.orders is not allowed for identity "writer"')
    assert 'allow = ["delete"]' in decision.reason
    assert 'tables = ["public.orders"]' in decision.reason


def test_read_only_reason_says_the_identity_is_read_only(engine):
    _, decision = engine.decide(IDENTITIES["reader"], "update orders set status = 'x'")
    assert 'UPDATE on public.orders is not allowed for identity "reader"' in decision.reason
    assert "read-only" in decision.reason


def test_function_reason_says_how_to_allow_it(engine):
    _, decision = engine.decide(IDENTITIES["writer"], "select my_func(1)")
    assert "my_func" in decision.reason
    assert '"writer"' in decision.reason
    assert "functions" in decision.reason


def test_deny_list_reason_says_only_an_exact_name_allows_it(engine):
    _, decision = engine.decide(IDENTITIES["writer"], "select pg_sleep(1)")
    assert "deny list" in decision.reason
    assert "exactly" in decision.reason


def test_statement_class_reason_names_the_statement(engine):
    _, decision = engine.decide(IDENTITIES["owner"], "listen x")
    assert "LISTEN" in decision.reason


def test_multiple_statements_reason_counts_them(engine):
    _, decision = engine.decide(IDENTITIES["owner"], "select 1; select 2; select 3")
    assert "found 3" in decision.reason


def test_column_reason_says_column_rules_apply(engine):
    _, decision = engine.decide(IDENTITIES["narrowed"], "select * from customers")
    assert "public.customers" in decision.reason
    assert "column" in decision.reason


def test_denied_decision_still_reports_what_was_understood(engine):
    _, decision = engine.decide(IDENTITIES["writer"], "select pg_sleep(1) from orders")
    assert decision.kind == "select"
    assert decision.tables == ("public.orders",)
    assert decision.functions == ("pg_sleep",)


def test_unparsable_statement_has_no_kind(engine):
    _, decision = engine.decide(IDENTITIES["writer"], "select 1; select 2")
    assert decision.kind is None
    assert decision.tables == ()


def test_table_access_is_ordered_and_hashable():
    first = TableAccess("select", TableName(None, "orders"))
    assert len({first, TableAccess("select", TableName(None, "orders"))}) == 1

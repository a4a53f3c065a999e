// @neondatabase/serverless in HTTP mode against the gateway: tagged templates, sql.query,
// transactions with their options, fullResults, arrayMode, and the errors it raises.
import { randomUUID } from "node:crypto";
import { failure, gatewaySql, print } from "./gateway-env.mjs";

const sql = gatewaySql();
const name = `driver-${randomUUID()}`;
const settings = (txn) => txn`select current_setting('transaction_isolation') as isolation,
  current_setting('transaction_read_only') as read_only, current_setting('transaction_deferrable') as deferrable`;
const full = await sql.query("select 1::int2 as a, 'x'::text as b", [], { fullResults: true, arrayMode: true });

print({
  template: await sql`select ${1}::int as one, ${"x"}::text as letter, ${10n}::int8 as big, ${true}::bool as yes`,
  composed: await sql`select id from moods where ${sql`mood = ${"happy"}`} and id > ${0}`,
  query: await sql.query("select $1::int + 1 as answer", [41]),
  arrayMode: await sql.query("select 1 as a, 'b' as b", [], { arrayMode: true }),
  fullResults: { fields: full.fields, rows: full.rows, command: full.command, rowCount: full.rowCount },
  insert: await sql.query("insert into neon_authors (name) values ($1) returning name", [name], { fullResults: true })
    .then(({ command, rowCount, rows }) => ({ command, rowCount, rows })),
  transaction: await sql.transaction([sql`select ${1}::int as a`, sql.query("select $1::text as b", ["z"])]),
  serializable: await sql.transaction((txn) => [settings(txn)],
    { isolationLevel: "Serializable", readOnly: true, deferrable: true }),
  repeatableRead: await sql.transaction((txn) => [settings(txn)], { isolationLevel: "RepeatableRead" }),
  readOnlyWrite: await failure(sql.transaction([sql`insert into neon_authors (name) values (${"never"})`],
    { readOnly: true })),
  rollback: await failure(sql.transaction([sql`insert into neon_authors (name) values (${`${name}-rolled-back`})`,
    sql`select 1 / 0`])),
  afterRollback: await sql`select count(*)::int as n from neon_authors where name = ${`${name}-rolled-back`}`,
  sqlError: await failure(sql`select nope from moods`),
  policyDenial: await failure(sql`select * from secrets`),
  badParameter: await failure(sql.query("select $1::int as n", ["abc"])),
  badToken: await failure(gatewaySql({ authToken: "not-a-token" })`select 1`),
});

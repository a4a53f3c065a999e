// The type matrix: every query runs through the gateway (Neon driver, /sql) and through
// node-postgres connected straight to the same database, the oracle. Rows (as the driver
// parses them) and fields must deep-equal.
import { inspect, isDeepStrictEqual } from "node:util";
import { directClient, gatewaySql, print } from "./gateway-env.mjs";

const SCALARS = [
  ["bool", "select true as t, false as f"],
  ["int2", "select 32767::int2 as max, (-32768)::int2 as min"],
  ["int4", "select 2147483647::int4 as max, (-2147483648)::int4 as min"],
  ["int8", "select 9223372036854775807::int8 as max, (-9223372036854775808)::int8 as min"],
  ["float4", "select 1.5::float4 as a, 3.4028235e38::float4 as big, 'NaN'::float4 as nan, '-Infinity'::float4 as ninf"],
  ["float8", "select 0.1::float8 as a, 1e-300::float8 as tiny, 'NaN'::float8 as nan, 'Infinity'::float8 as inf, " +
    "'-Infinity'::float8 as ninf, '-0'::float8 as negzero"],
  ["numeric", "select 123456789012345678901234567890.123456789::numeric as big, 'NaN'::numeric as nan, " +
    "0.000000000001::numeric as small, 12.50::numeric(12, 2) as money, 'Infinity'::numeric as inf"],
  ["text", "select ''::text as empty, 'héllo wörld ☃ 𝄞'::text as unicode, " +
    "E'line\\nbreak\\ttab \"q\" \\\\ b'::text as escapes, 'a'::varchar(5) as v, 'b'::char(3) as c"],
  ["uuid", "select 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as id"],
  ["json", "select '{\"a\": [1, 2.5, null, \"x\"], \"b\": {\"c\": true}}'::json as j, '[]'::json as empty, " +
    "'\"s\"'::json as s, '12345678901234567890'::json as big"],
  ["jsonb", "select '{\"b\": {\"c\": [true, {\"d\": null}]}, \"a\": [1, 2.5]}'::jsonb as j, 'null'::jsonb as n, " +
    "'\"☃\"'::jsonb as s"],
  ["bytea", "select '\\x00ff10'::bytea as b, ''::bytea as empty"],
  ["date", "select '2024-02-29'::date as d, 'infinity'::date as inf, '0044-03-15 BC'::date as bc"],
  ["time", "select '13:45:06.5'::time as t, '00:00'::time as midnight, '24:00'::time as end_of_day"],
  ["timetz", "select '13:45:06+02'::timetz as a, '23:00:00-03:30'::timetz as b"],
  ["timestamp", "select '2024-01-02 03:04:05.678'::timestamp as ts, 'infinity'::timestamp as inf, " +
    "'1999-12-31 23:59:59.999999'::timestamp as last"],
  ["timestamptz", "select '2024-01-01 12:00:00+05:30'::timestamptz as kolkata, " +
    "'2024-07-01 00:00:00 America/New_York'::timestamptz as new_york, " +
    "'2024-12-31 23:59:59.123456 Asia/Tokyo'::timestamptz as tokyo, " +
    "'2024-03-31 02:30:00 Europe/Berlin'::timestamptz as dst_gap, '-infinity'::timestamptz as ninf"],
  ["interval", "select '1 year 2 months 3 days 04:05:06.5'::interval as a, '-90 minutes'::interval as neg, " +
    "'P1Y2M3DT4H5M6S'::interval as iso, '0'::interval as zero"],
  ["inet", "select '192.168.0.1/24'::inet as v4, '::1'::inet as v6, '10.0.0.0/8'::cidr as net"],
  ["enum", "select mood from moods order by id"],
  ["null", "select null as untyped, null::int as int, null::text as text"],
];

const ARRAYS = [
  ["bool[]", "select array[true, false, null] as a"],
  ["int2[]", "select array[1, null, -3]::int2[] as a"],
  ["int4[]", "select array[1, null, 3]::int4[] as a, array[array[1, 2], array[3, 4]] as two_d"],
  ["int8[]", "select array[9223372036854775807, null]::int8[] as a"],
  ["float4[]", "select array[1.5, 'NaN', '-Infinity']::float4[] as a"],
  ["float8[]", "select array[0.1, 'NaN', 'Infinity', null]::float8[] as a"],
  ["numeric[]", "select array[12.50, 'NaN', 123456789012345678901234567890]::numeric[] as a"],
  ["text[]", "select array['a b', '', 'NULL', null, 'x\"y', 'back\\slash', '{braces}', 'com,ma', '☃']::text[] as a, " +
    "array[]::text[] as empty, array[array['1', null], array['', 'two words']] as two_d"],
  ["varchar[]", "select array['v', 'w x']::varchar[] as a"],
  ["uuid[]", "select array['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid, null] as a"],
  ["json[]", "select array['{\"a\": \"b c\"}'::json, '[1, \"x\"]', 'null'] as a"],
  ["jsonb[]", "select array['{\"k\": [1, {\"n\": null}]}'::jsonb, '\"s\"'] as a"],
  ["bytea[]", "select array['\\x00ff'::bytea, '', null] as a"],
  ["date[]", "select array['2024-02-29'::date, 'infinity', null] as a"],
  ["time[]", "select array['13:45:06.5'::time, null] as a"],
  ["timetz[]", "select array['13:45:06+02'::timetz, '23:00:00-03:30'] as a"],
  ["timestamp[]", "select array['2024-01-02 03:04:05.678'::timestamp, 'infinity'] as a"],
  ["timestamptz[]", "select array['2024-01-01 12:00:00+05:30'::timestamptz, '2024-07-01 00:00:00 America/New_York', " +
    "null] as a"],
  ["interval[]", "select array['1 day'::interval, '-01:30', 'P1Y'] as a"],
  ["inet[]", "select array['192.168.0.1/24'::inet, '::1'] as a, array['10.0.0.0/8'::cidr] as nets"],
  ["enum[]", "select array_agg(mood order by id) as moods from moods"],
  ["null[]", "select array[null]::int[] as a"],
];

// Values whose text the gateway must pass on untouched: records (no parser in pg-types: the
// driver hands over PostgreSQL's text), arrays with lower bounds other than 1, arrays of
// records, empty and many-dimensional arrays, ranges.
const TEXT_VALUES = [
  ["record", "select row(1, 'x') as r, row(1, row(2, 'a b'), null, 'q\"uote', '') as nested"],
  ["record[]", "select array[row(1, 'a'), row(2, null), null] as a"],
  ["table row", "select m from moods m order by id"],
  ["lower bounds", "select '[0:2]={1,2,3}'::int4[] as a, '[-2:-1][1:2]={{1,2},{3,4}}'::int4[] as b, " +
    "'[5:6]={\"a b\",NULL}'::text[] as t"],
  ["3-d array", "select '{{{1},{2}},{{3},{4}}}'::int4[] as a"],
  ["empty arrays", "select array[]::int4[] as a, '{}'::text[] as t, array[]::jsonb[] as j"],
  ["range", "select int4range(1, 3) as r, array[int4range(1, 3), 'empty'] as rs"],
];

// Parameters as the driver sends them (prepareValue): numbers, bigints, booleans, Dates,
// Buffers, objects and arrays.
const PARAMETERS = [
  ["parameters", "select $1::int as i, $2::int8 as big, $3::float8 as f, $4::bool as b, $5::text as t, " +
    "$6::numeric as n, $7::text as nothing",
  [42, 9007199254740993n, 0.1, false, "héllo \"q\" \\", "12345678901234567890.5", null]],
  ["date parameters", "select $1::timestamptz as tz, $2::timestamp as ts, $3::date as d",
    [new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 678)), new Date(2024, 5, 30, 12), "2024-02-29"]],
  ["bytea parameter", "select $1::bytea as b", [Buffer.from([0, 255, 16, 92])]],
  ["json parameters", "select $1::jsonb as j, $2::json as k", [{ a: [1, null, "☃"] }, JSON.stringify([1, { b: 2 }])]],
  ["array parameters", "select $1::int[] as i, $2::text[] as t, $3::float8[] as f",
    [[1, null, 3], ["a b", "", null, "q\"", "back\\slash", "NULL"], [0.5, -1e10]]],
];

const CASES = [...SCALARS, ...ARRAYS, ...TEXT_VALUES, ...PARAMETERS];

const fieldOf = ({ name, tableID, columnID, dataTypeID, dataTypeSize, dataTypeModifier, format }) =>
  ({ name, tableID, columnID, dataTypeID, dataTypeSize, dataTypeModifier, format });
const kindOf = (value) => (value === null ? "null" : value.constructor.name);

// The driver bundles its own copy of the pg-types parsers, so an interval from it is an
// instance of another PostgresInterval class than node-postgres's: compare such values by
// class name and contents.
function canonical(value) {
  if (Array.isArray(value)) return value.map(canonical);
  if (value === null || typeof value !== "object" || value instanceof Date || Buffer.isBuffer(value)) return value;
  const entries = Object.fromEntries(Object.entries(value).map(([key, item]) => [key, canonical(item)]));
  return value.constructor === Object ? entries : { [value.constructor.name]: entries };
}

const sql = gatewaySql({ arrayMode: true, fullResults: true });
const client = await directClient();
const mismatches = [];
const errors = [];
const kinds = {};
for (const [name, text, params = []] of CASES) {
  let viaGateway;
  try {
    viaGateway = await sql.query(text, params);
  } catch (error) {
    errors.push({ name, message: error.message, code: error.code });
    continue;
  }
  const direct = await client.query({ text, values: params, rowMode: "array" });
  const gateway = { rows: canonical(viaGateway.rows), fields: viaGateway.fields.map(fieldOf) };
  const oracle = { rows: canonical(direct.rows), fields: direct.fields.map(fieldOf) };
  if (!isDeepStrictEqual(gateway, oracle) || !direct.rows.length) {
    mismatches.push({ name, gateway: inspect(gateway, { depth: 6 }), oracle: inspect(oracle, { depth: 6 }) });
  }
  kinds[name] = viaGateway.rows[0].map(kindOf);
}
await client.end();
print({ cases: CASES.length, mismatches, errors, kinds });

"""The native API's type mapping, both ways: results as JSON per column type, and
JSON parameters converted to the types PostgreSQL infers, a string being accepted for any
type and parsed by PostgreSQL's own rules."""

from __future__ import annotations

import base64
import re
from datetime import UTC, datetime

import pytest

ISO_TIMESTAMPTZ = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d(:\d\d)?$")


def one_row(api, sql, *params):
    response = api.query(sql, *params)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["rowCount"] == 1, body
    return body["rows"][0], {column["name"]: column["type"] for column in body["columns"]}


def value_of(api, sql, *params):
    row, _ = one_row(api, sql, *params)
    (value,) = row.values()
    return value


# ---------------------------------------------------------------------------- results


def test_bool_is_a_json_boolean(writer):
    row, types = one_row(writer, "select true as yes, false as no")
    assert row == {"yes": True, "no": False}
    assert types == {"yes": "bool", "no": "bool"}


def test_int2_and_int4_are_numbers_and_int8_is_an_exact_string(writer):
    row, types = one_row(writer, "select 32767::int2 as small, '-2147483648'::int4 as regular, "
                                 "9007199254740993::int8 as big")
    assert row == {"small": 32767, "regular": -2147483648, "big": "9007199254740993"}
    assert types == {"small": "int2", "regular": "int4", "big": "int8"}


def test_floats_are_numbers(writer):
    row, types = one_row(writer, "select 1.5::float4 as single, 0.1::float8 as double, -2.5e-300::float8 as tiny")
    assert row == {"single": 1.5, "double": 0.1, "tiny": -2.5e-300}
    assert types == {"single": "float4", "double": "float8", "tiny": "float8"}


def test_float_nan_and_infinities_are_strings(writer):
    row, _ = one_row(writer, "select 'NaN'::float8 as nan, 'Infinity'::float8 as inf, '-Infinity'::float4 as ninf")
    assert row == {"nan": "NaN", "inf": "Infinity", "ninf": "-Infinity"}


def test_numeric_is_an_exact_string(writer):
    row, types = one_row(writer, "select 12345678901234567890.123456789::numeric as big, 3.00::numeric(5, 2) as money, "
                                 "'NaN'::numeric as nan")
    assert row == {"big": "12345678901234567890.123456789", "money": "3.00", "nan": "NaN"}
    assert types["big"] == "numeric"


def test_text_is_a_string(writer):
    text = 'héllo "quoted" \\ back\nslash \u2603'
    assert value_of(writer, "select $1::text as t", text) == text


def test_uuid_is_a_string(writer):
    row, types = one_row(writer, "select 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid as id")
    assert row == {"id": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"}
    assert types == {"id": "uuid"}


def test_json_and_jsonb_are_embedded(writer):
    row, types = one_row(writer, """select '{"a": [1, 2.5, null, "x"]}'::json as j, '{"b": {"c": true}}'::jsonb as jb,
                                   '"just a string"'::jsonb as s, '7'::json as n""")
    assert row == {"j": {"a": [1, 2.5, None, "x"]}, "jb": {"b": {"c": True}}, "s": "just a string", "n": 7}
    assert types == {"j": "json", "jb": "jsonb", "s": "jsonb", "n": "json"}


def test_bytea_is_base64(writer):
    row, types = one_row(writer, "select '\\x00ff10'::bytea as b, ''::bytea as empty")
    assert row == {"b": base64.b64encode(b"\x00\xff\x10").decode(), "empty": ""}
    assert types["b"] == "bytea"


def test_bytea_parameter_in_postgres_hex_text(writer):
    row, _ = one_row(writer, "select $1::bytea as b, length($1::bytea) as n", "\\xdeadbeef")
    assert row == {"b": base64.b64encode(bytes.fromhex("deadbeef")).decode(), "n": 4}


def test_date_and_time_are_iso_8601(writer):
    row, types = one_row(writer, "select '2024-02-29'::date as d, '13:45:06.5'::time as t, "
                                 "'13:45:06+02'::timetz as tz, '23:00:00-03:30'::timetz as tz2")
    assert row == {"d": "2024-02-29", "t": "13:45:06.5", "tz": "13:45:06+02:00", "tz2": "23:00:00-03:30"}
    assert types == {"d": "date", "t": "time", "tz": "timetz", "tz2": "timetz"}


def test_timestamp_is_iso_8601_with_a_t(writer):
    row, types = one_row(writer, "select '2024-01-02 03:04:05.678'::timestamp as ts")
    assert row == {"ts": "2024-01-02T03:04:05.678"}
    assert types == {"ts": "timestamp"}


def test_timestamptz_is_iso_8601_with_a_t_and_a_full_offset(writer):
    value = value_of(writer, "select '2024-01-02 03:04:05.25+00'::timestamptz as ts")
    assert ISO_TIMESTAMPTZ.match(value), value
    assert datetime.fromisoformat(value) == datetime(2024, 1, 2, 3, 4, 5, 250000, tzinfo=UTC)


def test_infinite_timestamps_stay_postgres_text(writer):
    assert value_of(writer, "select 'infinity'::timestamptz as ts") == "infinity"


def test_interval_is_postgres_text(writer):
    row, types = one_row(writer, "select '1 year 2 months 3 days 04:05:06.5'::interval as i, "
                                 "'-90 minutes'::interval as neg")
    assert row == {"i": "1 year 2 mons 3 days 04:05:06.5", "neg": "-01:30:00"}
    assert types["i"] == "interval"


def test_network_addresses_are_strings(writer):
    row, types = one_row(writer, "select '192.168.0.1/24'::inet as host, '10.0.0.0/8'::cidr as net, "
                                 "'::1'::inet as v6")
    assert row == {"host": "192.168.0.1/24", "net": "10.0.0.0/8", "v6": "::1"}
    assert types == {"host": "inet", "net": "cidr", "v6": "inet"}


def test_enum_is_a_string(writer):
    row, types = one_row(writer, "select mood from moods where id = 1")
    assert row == {"mood": "happy"}
    assert types == {"mood": "mood"}


def test_enum_parameter_from_a_string(writer):
    assert value_of(writer, "select id from moods where mood = $1", "sad") == 2


def test_null_is_null_whatever_the_type(writer):
    row, _ = one_row(writer, "select null::int4 as i, null::text as t, null::jsonb as j, null::bytea as b, "
                             "null::int4[] as a, null::timestamptz as ts")
    assert row == dict.fromkeys(["i", "t", "j", "b", "a", "ts"])


def test_array_with_null_elements(writer):
    row, types = one_row(writer, "select array[1, null, 3] as a")
    assert row == {"a": [1, None, 3]}
    assert types == {"a": "int4[]"}


def test_two_dimensional_array(writer):
    assert value_of(writer, "select '{{1,2},{3,NULL}}'::int4[] as a") == [[1, 2], [3, None]]


def test_array_elements_follow_the_element_mapping(writer):
    row, _ = one_row(writer, """select array[1, 2]::int8[] as big, array[true, false] as flags,
        array['NaN', '1.5']::float8[] as floats, array['{"a": 1}', '[2]']::jsonb[] as docs,
        array['\\x01']::bytea[] as blobs, array['2024-01-02 03:04:05+00']::timestamptz[] as times""")
    assert row["big"] == ["1", "2"]
    assert row["flags"] == [True, False]
    assert row["floats"] == ["NaN", 1.5]
    assert row["docs"] == [{"a": 1}, [2]]
    assert row["blobs"] == ["AQ=="]
    assert datetime.fromisoformat(row["times"][0]) == datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)


def test_text_array_elements_that_need_quoting(writer):
    value = value_of(writer, """select array['a b', 'c,d', '"q"', 'back\\slash', '', 'NULL', null, '{}'] as a""")
    assert value == ["a b", "c,d", '"q"', "back\\slash", "", "NULL", None, "{}"]


def test_empty_array(writer):
    assert value_of(writer, "select '{}'::text[] as a") == []


@pytest.mark.parametrize(
    "expression",
    ["'[0:2]={1,2,3}'::int4[]", "'[-2:-1][1:2]={{1,2},{3,4}}'::int4[]", "'[5:5]={\"a b\"}'::text[]"],
)
def test_an_array_with_other_lower_bounds_is_postgres_text_not_a_renumbered_json_array(writer, superuser, expression):
    assert value_of(writer, f"select {expression} as a") == superuser.fetchval(f"select ({expression})::text")


@pytest.mark.parametrize(
    "expression",
    ["row(1, 'x')", "row(1, row(2, 'a b'), null, 'q\"uote', '')", "(select c from customers c order by id limit 1)",
     "int4range(1, 3)"],
)  # fmt: skip
def test_records_and_ranges_are_postgres_text(writer, superuser, expression):
    assert value_of(writer, f"select {expression} as v") == superuser.fetchval(f"select ({expression})::text")


def test_an_array_of_records_is_an_array_of_record_texts(writer):
    row, types = one_row(writer, "select array[row(1, 'a b'), row(2, null), null] as a")
    assert row == {"a": ["(1,\"a b\")", "(2,)", None]}
    assert types == {"a": "record[]"}


# ---------------------------------------------------------------------------- parameters


@pytest.mark.parametrize(
    ("sql", "text", "expected"),
    [
        ("select $1::int4 + 1 as v", "42", 43),
        ("select $1::int8 as v", "9007199254740993", "9007199254740993"),
        ("select $1::numeric as v", "1.10", "1.10"),
        ("select $1::float8 as v", "NaN", "NaN"),
        ("select $1::bool as v", "t", True),
        ("select $1::bool as v", "off", False),
        ("select $1::date as v", "2024-01-01", "2024-01-01"),
        ("select $1::date as v", "Jan 2, 2024", "2024-01-02"),
        ("select $1::interval as v", "P1D", "1 day"),
        ("select $1::uuid as v", "A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
        ("select $1::jsonb as v", '{"a": [1, 2]}', {"a": [1, 2]}),
        ("select $1::inet as v", "10.1.2.3", "10.1.2.3"),
    ],
)
def test_a_string_is_accepted_for_any_type(writer, sql, text, expected):
    assert value_of(writer, sql, text) == expected


def test_a_timestamptz_parameter_is_parsed_by_postgres(writer):
    value = value_of(writer, "select $1::timestamptz as v", "2024-01-01T10:00:00+02:00")
    assert datetime.fromisoformat(value) == datetime(2024, 1, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("sql", "value", "expected"),
    [
        ("select $1::int4 * 2 as v", 21, 42),
        ("select $1::int8 as v", 9007199254740993, "9007199254740993"),
        ("select $1::numeric as v", 1.5, "1.5"),
        ("select $1::float8 as v", 2.5, 2.5),
        ("select $1::float8 as v", 1e-300, 1e-300),
        ("select $1::bool as v", True, True),
        ("select $1::text as v", 7, "7"),
        ("select $1::jsonb as v", {"nested": {"list": [1, None, True]}}, {"nested": {"list": [1, None, True]}}),
        ("select $1::json as v", [1, "two"], [1, "two"]),
        ("select $1::jsonb as v", 3, 3),
        ("select $1::jsonb as v", True, True),
    ],
)
def test_json_numbers_booleans_and_objects_are_converted(writer, sql, value, expected):
    assert value_of(writer, sql, value) == expected


def test_a_null_parameter_is_sql_null(writer):
    row, _ = one_row(writer, "select $1::int4 is null as missing, $2::text as t", None, None)
    assert row == {"missing": True, "t": None}


def test_parameter_type_is_inferred_from_the_column(writer):
    assert value_of(writer, "select status from orders where id = $1", "1") == "shipped"
    assert value_of(writer, "select status from orders where id = $1", 1) == "shipped"


def test_a_json_array_to_an_array_parameter(writer):
    assert value_of(writer, "select $1::int4[] as a", [[1, 2], [3, None]]) == [[1, 2], [3, None]]


def test_a_json_array_of_strings_to_a_text_array_parameter(writer):
    values = ["a b", None, "c,d", '"q"', "NULL", ""]
    assert value_of(writer, "select $1::text[] as a", values) == values


def test_an_array_literal_string_to_an_array_parameter(writer):
    assert value_of(writer, "select $1::int4[] as a", "{{1,2},{3,NULL}}") == [[1, 2], [3, None]]


def test_an_array_literal_with_lower_bounds_is_read_by_postgres(writer):
    assert value_of(writer, "select array_lower($1::int4[], 1) as lower", "[0:1]={1,2}") == 0


def test_an_array_parameter_for_any(writer):
    response = writer.query("select id from orders where id = any($1) order by id", [1, 2])
    assert response.status_code == 200, response.text
    assert response.json()["rows"] == [{"id": "1"}, {"id": "2"}]

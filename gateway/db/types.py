"""Values between JSON and PostgreSQL, in both directions.

Every connection exchanges every value, of every type, in PostgreSQL's text format
(`TextExchangeConnection`): a parameter string goes to PostgreSQL's own input function, so a
string is accepted for any type and parsed by PostgreSQL's rules, and a result is PostgreSQL's
exact text output — records, ranges and arrays with their bounds included. The
Neon-compatible endpoint sends that text as it is; the native API maps it to JSON per column
type (`json_converter`), reading array text here.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import asyncpg
import orjson

from gateway import json_text
from gateway.db import asyncpg_compat as compat
from gateway.errors import bad_request

Converter = Callable[[Any], Any]

# Every type of pg_catalog. `array_delimiter` is set for the types array_out writes.
BUILTIN_TYPES_QUERY = """
SELECT t.oid, t.typname, CASE WHEN t.typoutput = 'pg_catalog.array_out'::pg_catalog.regproc
                              THEN e.typdelim::pg_catalog.text END AS array_delimiter
FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem
WHERE t.typnamespace = 'pg_catalog'::pg_catalog.regnamespace AND t.typtype <> 'd'
"""
# A statement whose every value asyncpg reads its own way unless told otherwise: a record (in
# binary, field by field), an array with a lower bound other than 1 (as a list, bounds lost),
# and a composite type outside pg_catalog (known only once asyncpg introspects it).
SELF_TEST_SQL = "SELECT row(1, 'a b'), '[0:1]={1,2}'::pg_catalog.int4[], '(1,x,2,y)'::information_schema.sql_sizing"
SELF_TEST_TEXT = ('(1,"a b")', "[0:1]={1,2}", "(1,x,2,y)")


def _identity(text: str) -> str:
    return text


@dataclass(frozen=True)
class TextType:
    """A type a connection exchanges as PostgreSQL text, named as asyncpg names it."""

    oid: int
    name: str  # an array type is "<element>[]"
    schema: str
    # Written by array_out with "," between elements: the native API reads it into a JSON
    # array. (box[] separates with ";" and stays text.)
    json_array: bool

    @classmethod
    def of(cls, oid: int, name: str, schema: str, array_delimiter: str | None) -> TextType:
        if array_delimiter is None:
            return cls(oid, name, schema, False)
        return cls(oid, f"{name.removeprefix('_')}[]", schema, array_delimiter == ",")


async def builtin_text_types(connection: asyncpg.Connection) -> list[TextType]:
    """pg_catalog's types, read once on a connection that has no text codecs yet."""
    rows = await connection.fetch(BUILTIN_TYPES_QUERY)
    return [TextType.of(row["oid"], row["typname"], "pg_catalog", row["array_delimiter"]) for row in rows]


def _array_parameter(value: str | list) -> str:
    """An array parameter: a literal as it is, or nested lists of element texts."""
    return value if isinstance(value, str) else format_array_literal(value)


class TextExchangeConnection(compat.IntrospectingConnection):
    """A connection on which every value, of every type, travels as PostgreSQL's text.

    asyncpg's public `set_type_codec` takes scalar types only, and derives codecs for the rest
    itself: records and composites read in binary (or refused), arrays read into lists that
    lose their lower bounds. So text codecs are added for every built-in type when the
    connection opens, and for any other type when asyncpg first introspects it
    (`gateway.db.asyncpg_compat`; checked at start by `check_text_exchange`).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._text_oids: set[int] = set()

    def exchange_as_text(self, types: Iterable[TextType]) -> None:
        for type_ in types:
            if type_.oid in self._text_oids:
                continue
            kind, encoder = ("array", _array_parameter) if type_.json_array else ("scalar", str)
            compat.add_text_codec(self, type_.oid, type_.name, type_.schema, kind, encoder, _identity)
            self._text_oids.add(type_.oid)

    def types_introspected(self, rows: list) -> None:
        # Domains keep asyncpg's alias to their base type, which is text by then: PostgreSQL
        # describes a domain's values by the base type's OID anyway.
        self.exchange_as_text(
            TextType.of(row["oid"], row["name"], row["ns"], _array_delimiter(row))
            for row in rows
            if row["kind"] != b"d"
        )


def _array_delimiter(row: Any) -> str | None:
    """asyncpg's introspection marks a varlena type with an element type as an array (as
    asyncpg itself reads it); outside pg_catalog only array types are."""
    return row["elemdelim"].decode() if row["elemtype"] and row["elemdelim"] is not None else None


async def check_text_exchange(connection: asyncpg.Connection) -> None:
    """Fail at start, not per request, if this asyncpg no longer lets every value through as
    text."""
    row = await connection.fetchrow(SELF_TEST_SQL)
    if tuple(row) != SELF_TEST_TEXT:
        raise RuntimeError(
            f"asyncpg {asyncpg.__version__} does not read records and arrays as PostgreSQL's text "
            f"(got {tuple(row)!r}); use an asyncpg version in the range pyproject.toml pins"
        )


# ---------------------------------------------------------------------------- PostgreSQL text -> JSON

ISO_TIMESTAMP = re.compile(r"^(\d{4,}-\d\d-\d\d) (\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d(?::\d\d){0,2})?$")
ISO_TIMETZ = re.compile(r"^(\d\d:\d\d:\d\d(?:\.\d+)?)([+-]\d\d(?::\d\d){0,2})$")
FLOAT_SPECIALS = frozenset({"NaN", "Infinity", "-Infinity"})


def _offset(offset: str | None) -> str:
    """PostgreSQL writes `+02`; ISO 8601 wants `+02:00`."""
    if not offset:
        return ""
    return offset + ":00" if len(offset) == 3 else offset


def _timestamp(text: str) -> str:
    match = ISO_TIMESTAMP.match(text)
    if match is None:  # infinity, BC dates, or a non-ISO DateStyle: PostgreSQL's text as is
        return text
    date, time, offset = match.groups()
    return f"{date}T{time}{_offset(offset)}"


def _timetz(text: str) -> str:
    match = ISO_TIMETZ.match(text)
    return f"{match.group(1)}{_offset(match.group(2))}" if match else text


def _float(text: str) -> float | str:
    return text if text in FLOAT_SPECIALS else float(text)


def _bool(text: str) -> bool:
    return text == "t"


def decode_bytea(text: str) -> bytes:
    if text.startswith("\\x"):
        return bytes.fromhex(text[2:])
    # bytea_output = escape: backslash-escaped octal and doubled backslashes.
    out, i = bytearray(), 0
    while i < len(text):
        if text[i] == "\\":
            if text[i + 1] == "\\":
                out.append(0x5C)
                i += 2
            else:
                out.append(int(text[i + 1 : i + 4], 8))
                i += 4
        else:
            out.extend(text[i].encode("latin-1"))
            i += 1
    return bytes(out)


def _bytea(text: str) -> str:
    return base64.b64encode(decode_bytea(text)).decode("ascii")


SCALAR_CONVERTERS: dict[str, Converter] = {
    "bool": _bool,
    "int2": int,
    "int4": int,
    "oid": int,
    "float4": _float,
    "float8": _float,
    "json": orjson.Fragment,
    "jsonb": orjson.Fragment,
    "bytea": _bytea,
    "timestamp": _timestamp,
    "timestamptz": _timestamp,
    "timetz": _timetz,
}


def _array_of(element: Converter | None) -> Converter:
    def convert(text: str) -> list | str:
        if text.startswith("["):
            # array_out writes the bounds only when one is not 1; a JSON array cannot say
            # where it starts, so such an array stays PostgreSQL's text rather than renumbered.
            return text
        items = parse_array_text(text)
        return items if element is None else _each(items, element)

    return convert


def _each(items: list, element: Converter) -> list:
    return [
        None if item is None else _each(item, element) if isinstance(item, list) else element(item) for item in items
    ]


@lru_cache(maxsize=1024)
def json_converter(type_: Any) -> Converter | None:
    """How to turn a column's value into JSON; None when the value is already right
    (text, int8, numeric, uuid, dates, intervals, records, ranges... stay PostgreSQL's text)."""
    if type_.kind == "array":
        return _array_of(SCALAR_CONVERTERS.get(type_.name.removesuffix("[]")))
    return SCALAR_CONVERTERS.get(type_.name)


def row_converter(converters: list[Converter | None], names: list[str] | None = None) -> Callable[[Any], Any]:
    """A function turning a record into its values made JSON-ready, touching only the columns
    whose converter is not None (most values stay PostgreSQL's text as they are): a list, or
    with `names` an object keyed by them (of two columns with one name the later wins, as in a
    JSON object)."""
    conversions = [(index, convert) for index, convert in enumerate(converters) if convert is not None]
    if names is None:
        return _list_converter(conversions)
    if len(set(names)) < len(names):  # a conversion by name could meet the other column's value
        values_of = _list_converter(conversions)
        return lambda record: dict(zip(names, values_of(record), strict=True))
    return _object_converter([(names[index], convert) for index, convert in conversions])


def _list_converter(conversions: list[tuple[int, Converter]]) -> Callable[[Any], list[Any]]:
    if not conversions:
        return list

    def convert_row(record: Any) -> list[Any]:
        values = list(record)
        for index, convert in conversions:
            value = values[index]
            if value is not None:
                values[index] = convert(value)
        return values

    return convert_row


def _object_converter(conversions: list[tuple[str, Converter]]) -> Callable[[Any], dict]:
    """Objects built from the record's own items, in C, and converted in place by name: half
    the cost of a list of values zipped with the names."""

    def convert_object(record: Any) -> dict:
        row = dict(record.items())
        for name, convert in conversions:
            value = row[name]
            if value is not None:
                row[name] = convert(value)
        return row

    return convert_object


# The Neon protocol without raw text output (curl users; the driver always asks for raw
# text): Neon's proxy makes JSON values of these types, arrays of them included, and leaves
# every other value PostgreSQL's text (proxy json.rs, pg_text_to_json).
NEON_JSON_TYPES = frozenset({"bool", "int2", "int4", "float4", "float8", "json", "jsonb"})


@lru_cache(maxsize=1024)
def neon_json_converter(type_: Any) -> Converter | None:
    if type_.kind == "array":
        element = type_.name.removesuffix("[]")
        return _array_of(SCALAR_CONVERTERS[element] if element in NEON_JSON_TYPES else None)
    return SCALAR_CONVERTERS[type_.name] if type_.name in NEON_JSON_TYPES else None


# ---------------------------------------------------------------------------- JSON -> parameter


def parameter_value(value: Any, type_: Any, position: int) -> str | list | None:
    """A JSON value as what the connection's codec for `type_` takes: text for PostgreSQL's
    input function (an array literal string included, bounds and all), nested lists of element
    texts for a JSON array given to an array type, or None for NULL."""
    if value is None:
        return None
    if type_.kind == "array" and isinstance(value, list):
        element_is_json = type_.name.removesuffix("[]") in ("json", "jsonb")
        return _array_elements(value, element_is_json, type_.name, position)
    return _scalar_text(value, type_.name in ("json", "jsonb"), type_.name, position)


def _scalar_text(value: Any, is_json: bool, type_name: str, position: int) -> str:
    if isinstance(value, str):
        return value
    if is_json:
        return json_text.dumps(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise bad_request(f"parameter ${position}: {value} is not a finite number")
        return repr(value)
    kind = "an object" if isinstance(value, dict) else "an array"
    raise bad_request(f"parameter ${position}: {kind} does not fit type {type_name}")


def _array_elements(items: list, is_json: bool, type_name: str, position: int) -> list:
    return [
        None
        if item is None
        else _array_elements(item, is_json, type_name, position)
        if isinstance(item, list) and not is_json
        else _scalar_text(item, is_json, type_name, position)
        for item in items
    ]


def json_to_pg_text(value: Any) -> str | None:
    """A Neon request parameter as PostgreSQL text, as Neon's proxy reads one (json.rs,
    json_to_pg_text): the driver sends strings and nulls; from other clients booleans, numbers
    and objects become their JSON text, and arrays array literals (nested, null elements
    NULL, objects as their JSON text). Elements are quoted by PostgreSQL's array rules where
    the proxy JSON-quotes them, so a string with a backslash or a newline reads back as sent."""
    text = _json_as_text(value)
    return format_array_literal(text) if isinstance(text, list) else text


def _json_as_text(value: Any) -> Any:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, list):
        return [_json_as_text(item) for item in value]
    return json_text.dumps(value)


# ---------------------------------------------------------------------------- array text

ARRAY_SPACE = " \t\n\r\v\f"
# array_out's output, token by token: a quoted element (backslash escapes inside), a brace, a
# delimiter, or an unquoted element (never holding a brace, comma, quote, backslash or space).
ARRAY_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|[{},]|[^{},"]+', re.DOTALL)
ARRAY_ESCAPE = re.compile(r"\\(.)", re.DOTALL)


def parse_array_text(text: str) -> list:
    """array_out's text without bounds -> nested lists of element texts, None for NULL:
    `{1,"a b",NULL,{2}}` -> ["1", "a b", None, ["2"]]."""
    outer: list[list] = []
    current: list = []
    for match in ARRAY_TOKEN.finditer(text):
        token = match.group()
        if token == "{":
            outer.append(current)
            current = []
            outer[-1].append(current)
        elif token == "}":
            current = outer.pop()
        elif token[0] == '"':
            current.append(ARRAY_ESCAPE.sub(r"\1", match.group(1)))
        elif token != ",":
            current.append(None if token == "NULL" else token)
    return current[0]


def _needs_quotes(element: str) -> bool:
    return (
        element == ""
        or element.upper() == "NULL"
        or any(char in element for char in '{},"\\')
        or any(char in ARRAY_SPACE for char in element)
    )


def format_array_literal(items: list) -> str:
    """Nested lists of element texts (None for NULL) -> an array literal, quoted as array_out
    quotes."""
    parts = []
    for item in items:
        if item is None:
            parts.append("NULL")
        elif isinstance(item, list):
            parts.append(format_array_literal(item))
        elif _needs_quotes(item):
            parts.append('"' + item.replace("\\", "\\\\").replace('"', '\\"') + '"')
        else:
            parts.append(item)
    return "{" + ",".join(parts) + "}"

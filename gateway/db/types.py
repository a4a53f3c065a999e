"""Values between JSON and PostgreSQL, in both directions.

Every connection reads and writes scalar types in PostgreSQL's text format (`install_text_codecs`):
a parameter string goes to PostgreSQL's own input function, so a string is accepted for
any type and parsed by PostgreSQL's rules, and a result is PostgreSQL's exact text output.
The native API then maps that text to JSON per column type (`json_converter`); the
Neon-compatible endpoint sends it as it is. asyncpg applies no custom codec to array types,
so arrays travel as (nested) lists of element texts, and array literals are parsed and
written here.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Callable
from functools import lru_cache
from typing import Any

import asyncpg
import orjson

from gateway.errors import bad_request

Converter = Callable[[Any], Any]

# Base types of pg_catalog that keep asyncpg's own codec: none. Everything scalar is text.
TEXT_CODEC_TYPES_QUERY = """
SELECT t.typname FROM pg_catalog.pg_type t
WHERE t.typnamespace = 'pg_catalog'::regnamespace AND t.typtype = 'b' AND t.typcategory <> 'A'
  AND t.typisdefined AND t.typname NOT IN ('unknown', 'cstring')
"""


def _identity(text: str) -> str:
    return text


async def install_text_codecs(connection: asyncpg.Connection, type_names: list[str]) -> None:
    for name in type_names:
        await connection.set_type_codec(name, schema="pg_catalog", encoder=str, decoder=_identity, format="text")


async def text_codec_types(connection: asyncpg.Connection) -> list[str]:
    return [row[0] for row in await connection.fetch(TEXT_CODEC_TYPES_QUERY)]


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


def _array_of(element: Converter) -> Converter:
    def convert(items: list) -> list:
        return [
            None if item is None else (convert(item) if isinstance(item, list) else element(item)) for item in items
        ]

    return convert


@lru_cache(maxsize=1024)
def json_converter(type_: Any) -> Converter | None:
    """How to turn a column's value into JSON; None when the value is already right
    (text, int8, numeric, uuid, dates, intervals... stay PostgreSQL's text)."""
    if type_.kind == "array":
        element = SCALAR_CONVERTERS.get(type_.name.removesuffix("[]"))
        return _array_of(element or _identity)
    if type_.kind == "composite":
        return _composite_text
    return SCALAR_CONVERTERS.get(type_.name)


def _composite_text(record: Any) -> str:
    return format_record_literal(record)


# The Neon protocol without raw text output (curl users; the driver always asks for raw
# text): Neon's proxy makes JSON values of these types, arrays of them included, and leaves
# every other value PostgreSQL's text (proxy json.rs, pg_text_to_json).
NEON_JSON_TYPES = frozenset({"bool", "int2", "int4", "float4", "float8", "json", "jsonb"})


@lru_cache(maxsize=1024)
def neon_json_converter(type_: Any) -> Converter | None:
    if type_.kind == "array":
        element = type_.name.removesuffix("[]")
        return _array_of(SCALAR_CONVERTERS[element] if element in NEON_JSON_TYPES else _identity)
    return SCALAR_CONVERTERS[type_.name] if type_.name in NEON_JSON_TYPES else None


# ---------------------------------------------------------------------------- JSON -> parameter


def parameter_value(value: Any, type_: Any, position: int) -> Any:
    """A JSON value as what the connection's codec for `type_` expects: text, a list of
    texts for arrays, or None for NULL."""
    if value is None:
        return None
    if type_.kind == "array":
        if isinstance(value, str):
            return parse_array_literal(value, position)
        if isinstance(value, list):
            element_is_json = type_.name.removesuffix("[]") in ("json", "jsonb")
            return _array_elements(value, element_is_json, type_.name, position)
        raise bad_request(f"parameter ${position}: expected an array or an array literal string for {type_.name}")
    return _scalar_text(value, type_.name in ("json", "jsonb"), type_.name, position)


def _scalar_text(value: Any, is_json: bool, type_name: str, position: int) -> str:
    if isinstance(value, str):
        return value
    if is_json:
        return orjson.dumps(value).decode()
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
    return orjson.dumps(value).decode()


# ---------------------------------------------------------------------------- array literals

ARRAY_SPACE = " \t\n\r\v\f"


def parse_array_literal(text: str, position: int) -> list:
    """`{1,"a b",NULL,{2}}` -> nested lists of element texts (None for NULL), as PostgreSQL's
    array_in reads it (default delimiter `,`; dimension decorations are not accepted)."""
    parser = _ArrayLiteralParser(text, position)
    result = parser.parse()
    return result


class _ArrayLiteralParser:
    def __init__(self, text: str, position: int) -> None:
        self.text = text
        self.i = 0
        self.position = position

    def fail(self, why: str) -> Exception:
        return bad_request(f"parameter ${self.position}: malformed array literal ({why})")

    def skip_space(self) -> None:
        while self.i < len(self.text) and self.text[self.i] in ARRAY_SPACE:
            self.i += 1

    def parse(self) -> list:
        self.skip_space()
        result = self.array()
        self.skip_space()
        if self.i != len(self.text):
            raise self.fail("junk after the closing brace")
        return result

    def array(self) -> list:
        if self.i >= len(self.text) or self.text[self.i] != "{":
            raise self.fail('expected "{"')
        self.i += 1
        items: list = []
        self.skip_space()
        if self.i < len(self.text) and self.text[self.i] == "}":
            self.i += 1
            return items
        while True:
            self.skip_space()
            if self.i >= len(self.text):
                raise self.fail("unexpected end")
            items.append(self.array() if self.text[self.i] == "{" else self.element())
            self.skip_space()
            if self.i >= len(self.text):
                raise self.fail("unexpected end")
            if self.text[self.i] == ",":
                self.i += 1
            elif self.text[self.i] == "}":
                self.i += 1
                return items
            else:
                raise self.fail(f"unexpected {self.text[self.i]!r}")

    def element(self) -> str | None:
        if self.text[self.i] == '"':
            return self.quoted()
        start = self.i
        out = []
        while self.i < len(self.text) and self.text[self.i] not in ',}{"':
            if self.text[self.i] == "\\":
                self.i += 1
                if self.i >= len(self.text):
                    raise self.fail("unexpected end")
            out.append(self.text[self.i])
            self.i += 1
        raw = "".join(out).rstrip(ARRAY_SPACE)
        if not raw:
            raise self.fail("empty element")
        if raw.upper() == "NULL" and "\\" not in self.text[start : self.i]:
            return None
        return raw

    def quoted(self) -> str:
        self.i += 1
        out = []
        while self.i < len(self.text):
            char = self.text[self.i]
            if char == "\\":
                self.i += 1
                if self.i >= len(self.text):
                    break
                out.append(self.text[self.i])
            elif char == '"':
                self.i += 1
                return "".join(out)
            else:
                out.append(char)
            self.i += 1
        raise self.fail("unterminated quoted element")


def _needs_quotes(element: str) -> bool:
    return (
        element == ""
        or element.upper() == "NULL"
        or any(char in element for char in '{},"\\')
        or any(char in ARRAY_SPACE for char in element)
    )


def format_array_literal(items: list) -> str:
    """Nested lists of element texts -> PostgreSQL's array_out text."""
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


def format_record_literal(record: Any) -> str:
    """A composite value -> PostgreSQL's record_out text: `(1,"a b",)`."""
    parts = []
    for value in record.values() if hasattr(record, "values") else record:
        if value is None:
            parts.append("")
        else:
            text = format_array_literal(value) if isinstance(value, list) else str(value)
            needs = text == "" or any(char in text for char in '(),"\\') or any(c in ARRAY_SPACE for c in text)
            parts.append('"' + text.replace("\\", "\\\\").replace('"', '""') + '"' if needs else text)
    return "(" + ",".join(parts) + ")"

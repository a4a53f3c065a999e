"""JSON that callers send (request bodies, token claims) read into Python values, and values
written back as JSON text, with no value changed on the way: integers of any width stay
exact. Bounding how deep a value may nest is the reader's choice (`nests_deeper_than`).
"""

from __future__ import annotations

import json
from typing import Any

import orjson

# Bytes -> "9" for an ASCII digit, " " for anything else: a run of 19 digits is then one
# substring search (C speed, a few ms per MiB) instead of a regex over the body.
_DIGITS_ONLY = bytes(0x39 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
# The fewest digits an integer outside 64 bits has (2**63 has 19).
_WIDE_INTEGER_DIGITS = b"9" * 19


class UnreadableJson(ValueError):
    """Text that is not JSON the gateway can read; the message says why, in words a caller
    can act on ("is not valid UTF-8 …", "is not valid JSON: …")."""


def loads(data: bytes) -> Any:
    """orjson's reading of `data`, except that an integer beyond 64 bits is exact (orjson
    reads one as the nearest float: 12345678901234567890123 would reach PostgreSQL as
    1.2345678901234568e+22)."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as error:
        raise UnreadableJson(_why_unreadable(data, error)) from None
    if _WIDE_INTEGER_DIGITS in data.translate(_DIGITS_ONLY):
        # The standard library reads integers exactly; on a text orjson accepted (strict UTF-8,
        # no NaN, no lone surrogates, nesting at most 1024) it reads everything else alike.
        try:
            value = json.loads(data.decode())
        except RecursionError:  # Python's parser recurses per level, and stops short of 1024
            raise UnreadableJson("nests arrays and objects too deeply to be read") from None
    return value


def _why_unreadable(data: bytes, error: orjson.JSONDecodeError) -> str:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as bad:
        return f"is not valid UTF-8 (byte 0x{data[bad.start]:02x} at offset {bad.start})"
    return f"is not valid JSON: {error}"


def dumps(value: Any) -> str:
    """`value` as JSON text. orjson writes integers within 64 bits only; a wider one (kept
    exact by `loads`) is written by the standard library, as exactly."""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError:
        return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def nests_deeper_than(value: Any, limit: int) -> bool:
    """Whether arrays and objects nest more than `limit` levels in `value` (a scalar is 0
    levels, `[1]` one, `{"a": [1]}` two). Level by level, without recursion."""
    level = [value] if isinstance(value, list | dict) else []
    depth = 0
    while level:
        depth += 1
        if depth > limit:
            return True
        level = [
            child
            for container in level
            for child in (container.values() if isinstance(container, dict) else container)
            if isinstance(child, list | dict)
        ]
    return False

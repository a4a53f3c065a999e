"""JSON on the wire, with the standard library only: what a parameter may be, and how an
answer is read. The client depends on httpx alone, so it stays small where it is installed.
"""

from __future__ import annotations

import datetime
import decimal
import json
import uuid
from typing import Any

# Kept as PostgreSQL's parser reads them: a Decimal as its exact text, times in ISO 8601.
_AS_TEXT = (decimal.Decimal, uuid.UUID)
_AS_ISO_8601 = (datetime.datetime, datetime.date, datetime.time)


def _parameter(value: Any) -> Any:
    if isinstance(value, _AS_TEXT):
        return str(value)
    if isinstance(value, _AS_ISO_8601):
        return value.isoformat()
    raise TypeError(f"cannot send a {type(value).__name__} as a parameter")


def dumps(body: Any) -> bytes:
    """A request body; NaN and infinities are refused (JSON has no spelling for them)."""
    return json.dumps(body, default=_parameter, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def loads(data: bytes | str) -> Any:
    """An answer; malformed JSON or UTF-8 raises ValueError."""
    return json.loads(data)

"""Rows -> the native API's JSON and NDJSON bodies, within the identity's limits.

Owns the per-column JSON mapping applied to each row, row and byte budgets (a result that
would pass `max_rows` or `max_response_bytes` stops at a row boundary and says
`truncated`), and the head and tail of both body formats. Batches are encoded with one
orjson call each; only `whole_result`, for answers sent after COMMIT, holds more than one
batch, and no more than the limits allow.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

import orjson

from gateway.api.openapi import NULLABLE_STRING
from gateway.db.session import Column, StatementRun
from gateway.db.types import json_converter, row_converter
from gateway.errors import GatewayError

NDJSON = "application/x-ndjson"


def parse_command_tag(tag: str) -> tuple[str, int | None]:
    """`INSERT 0 3` -> ("INSERT", 3); `SELECT 2` -> ("SELECT", 2); `CREATE TABLE` ->
    ("CREATE", None); an empty query's empty tag -> ("", None)."""
    words = tag.split()
    if not words:
        return "", None
    count_word = words[2] if words[0] == "INSERT" and len(words) > 2 else (words[1] if len(words) > 1 else "")
    return words[0], int(count_word) if count_word.isdigit() else None


def command_and_count(tag: str, kind: str | None, rows_sent: int) -> tuple[str, int]:
    """The tag's command and count. A portal left open at a limit has no tag yet: the
    statement kind and the rows sent stand in, as they do for a count the tag lacks."""
    command, count = parse_command_tag(tag)
    return command or (kind or "").upper(), rows_sent if count is None else count


# `error_body`'s shape; `code` is one of the error table's (each operation narrows it).
ERROR_BODY_SCHEMA = {
    "type": "object",
    "required": ["code", "message", "postgresMessage", "requestId", "sqlstate", "detail", "hint", "position"],
    "properties": {
        "code": {"type": "string"},
        "message": {"type": "string"},
        "postgresMessage": NULLABLE_STRING,
        "requestId": {"type": "string"},
        "sqlstate": NULLABLE_STRING,
        "detail": NULLABLE_STRING,
        "hint": NULLABLE_STRING,
        "position": {"type": ["integer", "null"]},
    },
}


def error_body(error: GatewayError, request_id: str) -> dict[str, Any]:
    return {
        "code": error.code,
        "message": error.message,
        # PostgreSQL's own words when it raised the error; `message` may add the gateway's
        # (which parameter, which limit).
        "postgresMessage": error.pg_fields.get("message"),
        "requestId": request_id,
        "sqlstate": error.sqlstate,
        "detail": error.detail,
        "hint": error.hint,
        "position": error.position,
    }


COLUMNS_SCHEMA = {
    "type": "array",
    "items": {
        "type": "object",
        "required": ["name", "type"],
        "properties": {"name": {"type": "string"}, "type": {"type": "string"}},
    },
}
# A JSON body as `ResultWriter` writes it: rows as objects, or arrays (`rowMode: "array"`); a
# result that failed after rows were sent ends with the error instead of its summary.
RESULT_SCHEMA = {
    "type": "object",
    "required": ["columns", "rows", "truncated"],
    "properties": {
        "columns": COLUMNS_SCHEMA,
        "rows": {"type": "array", "items": {"type": ["object", "array"]}},
        "command": {"type": "string"},
        "rowCount": {"type": "integer", "minimum": 0},
        "truncated": {"type": "boolean"},
        "error": ERROR_BODY_SCHEMA,
    },
    "oneOf": [{"required": ["command", "rowCount"]}, {"required": ["error"]}],
}


class ResultWriter:
    """Encodes one statement's result, in order: `head`, `rows` per batch, `tail`."""

    def __init__(
        self, columns: Sequence[Column], *, array_rows: bool, ndjson: bool, max_rows: int, max_bytes: int
    ) -> None:
        names = [column.name for column in columns]
        self._row = row_converter([json_converter(column.type) for column in columns], None if array_rows else names)
        self.columns_json = [{"name": column.name, "type": column.type.name} for column in columns]
        self.ndjson = ndjson
        self.rows_left = max_rows
        self.bytes_left = max_bytes
        self.rows_sent = 0
        self.bytes_sent = 0
        self.truncated = False
        self._first_row = True

    def head(self) -> bytes:
        if self.ndjson:
            return orjson.dumps({"columns": self.columns_json}, option=orjson.OPT_APPEND_NEWLINE)
        return b'{"columns":' + orjson.dumps(self.columns_json) + b',"rows":['

    def rows(self, records: list) -> tuple[bytes, bool]:
        """The encoded batch and whether the result stops here (a limit was reached)."""
        if self.truncated:
            return b"", True
        if len(records) > self.rows_left:
            records = records[: self.rows_left]
            self.truncated = True
        encoded = list(map(self._row, records))
        chunk = self._encode(encoded)
        if len(chunk) > self.bytes_left:
            chunk, taken = self._fit(encoded)
            encoded = encoded[:taken]
            self.truncated = True
        self.rows_left -= len(encoded)
        self.bytes_left -= len(chunk)
        self.rows_sent += len(encoded)
        self.bytes_sent += len(chunk)
        if encoded:
            self._first_row = False
        return chunk, self.truncated

    def _encode(self, rows: list) -> bytes:
        if not rows:
            return b""
        if self.ndjson:
            # Appended one by one: thousands of small encodings alive at once (for a join) make
            # the allocator ten times slower per row.
            lines = bytearray()
            for row in rows:
                lines += orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE)
            return bytes(lines)
        body = orjson.dumps(rows)[1:-1]
        return body if self._first_row else b"," + body

    def _fit(self, rows: list) -> tuple[bytes, int]:
        """The longest prefix of `rows` within the byte budget, row by row."""
        pieces: list[bytes] = []
        size = 0
        for index, row in enumerate(rows):
            encoded = orjson.dumps(row, option=orjson.OPT_APPEND_NEWLINE if self.ndjson else 0)
            if not self.ndjson and (index or not self._first_row):
                encoded = b"," + encoded
            if size + len(encoded) > self.bytes_left:
                return b"".join(pieces), index
            pieces.append(encoded)
            size += len(encoded)
        return b"".join(pieces), len(rows)

    def summary(self, tag: str, kind: str | None) -> dict[str, Any]:
        command, count = command_and_count(tag, kind, self.rows_sent)
        if self.truncated:
            count = self.rows_sent
        return {"command": command, "rowCount": count, "truncated": self.truncated}

    def tail(self, tag: str, kind: str | None) -> bytes:
        summary = self.summary(tag, kind)
        if self.ndjson:
            return orjson.dumps(summary, option=orjson.OPT_APPEND_NEWLINE)
        return b"]," + orjson.dumps(summary)[1:]

    def error_tail(self, error: GatewayError, request_id: str) -> bytes:
        """A failure after rows were sent: the body ends with the error instead of a summary."""
        payload = {"error": error_body(error, request_id)}
        if self.ndjson:
            return orjson.dumps(payload, option=orjson.OPT_APPEND_NEWLINE)
        return b"]," + orjson.dumps({**payload, "truncated": self.truncated})[1:]


async def encoded_rows(run: StatementRun, writer: ResultWriter) -> AsyncIterator[bytes]:
    """Encoded batches until the result ends or reaches a limit."""
    async for batch in run.batches():
        chunk, stop = writer.rows(batch)
        yield chunk
        if stop:
            return


async def whole_result(run: StatementRun, writer: ResultWriter, kind: str | None) -> bytes:
    """One result read to its end or to a limit, as one JSON body (`writer` not NDJSON): a
    statement of `/v1/batch`, MCP's query tool."""
    chunks = [writer.head(), *[chunk async for chunk in encoded_rows(run, writer)]]
    chunks.append(writer.tail(run.command_tag, kind))
    return b"".join(chunks)

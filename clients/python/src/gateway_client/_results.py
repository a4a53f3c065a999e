"""What the client returns, decoded from the native API's bodies: query results, policy
explanations, and the line-by-line state of a streamed result.

Knows the wire shapes only; how the bytes arrive (sync or async) is the clients' business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from gateway_client import _wire
from gateway_client._errors import IncompleteResponse, error_from_body

RowMode = Literal["object", "array"]


@dataclass(frozen=True)
class Column:
    name: str
    type: str  # PostgreSQL's type name: "int4", "numeric", "timestamptz", "_text", ...


def columns_from(body: list[dict[str, Any]]) -> list[Column]:
    return [Column(column["name"], column["type"]) for column in body]


class AwaitingApproval(Exception):
    """Nothing ran: a rule holds the statement (or the batch) until an approver approves it
    (a 202 answer). Its requester reads the outcome with `GET /v1/approvals/{id}` once
    approved, before `expires_at`."""

    def __init__(self, approval: dict[str, Any]) -> None:
        super().__init__(f"awaits approval {approval['id']} until {approval['expiresAt']}")
        self.id: str = approval["id"]
        self.expires_at = datetime.fromisoformat(approval["expiresAt"])
        self.statement: str | None = approval.get("statement")


def _not_held(body: dict[str, Any]) -> dict[str, Any]:
    if "approval" in body:
        raise AwaitingApproval(body["approval"])
    return body


@dataclass(frozen=True)
class QueryResult:
    """One statement's result. `rows` are dicts keyed by column name, or lists in column
    order with `row_mode="array"`; `truncated` says a row or byte limit cut the result."""

    columns: list[Column]
    rows: list[Any]
    command: str
    row_count: int
    truncated: bool

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> QueryResult:
        body = _not_held(body)
        return cls(columns_from(body["columns"]), body["rows"], body["command"], body["rowCount"], body["truncated"])


def batch_results(body: dict[str, Any]) -> list[QueryResult]:
    return [QueryResult.from_json(result) for result in _not_held(body)["results"]]


@dataclass(frozen=True)
class Explanation:
    """The policy decision on a statement, without running it."""

    allowed: bool
    identity: str
    kind: str | None
    tables: list[str]
    columns: list[str]
    functions: list[str]
    reason: str | None  # None when allowed; else why, and what rule would allow it

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> Explanation:
        return cls(
            body["allowed"],
            body["identity"],
            body.get("kind"),
            body.get("tables", []),
            body.get("columns", []),
            body.get("functions", []),
            body.get("reason"),
        )


@dataclass(frozen=True)
class DatabaseCredential:
    """A temporary PostgreSQL login of the caller's identity: `url` connects (psycopg,
    asyncpg, psql; SQLAlchemy as `postgresql+psycopg://...`) until `expires_at`, with exactly
    the privileges of the identity's role. The password is never shown in its repr."""

    url: str = field(repr=False)
    expires_at: datetime
    user: str
    password: str = field(repr=False)
    host: str
    port: int
    database: str
    sslmode: str

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> DatabaseCredential:
        return cls(
            body["url"],
            datetime.fromisoformat(body["expiresAt"]),
            body["user"],
            body["password"],
            body["host"],
            body["port"],
            body["database"],
            body["sslmode"],
        )


END = object()  # what `StreamedResult.take` returns after the last line


class StreamedResult:
    """An NDJSON result as it arrives: `columns` from the first line, then rows, then the
    summary (`command`, `row_count`, `truncated`) once the last line is read.

    Rows are always requested as arrays: a row object could look like the summary line
    (a column named "error"), an array cannot."""

    def __init__(self, head_line: str, lines: Any, row_mode: RowMode) -> None:
        self._lines = lines  # the lines after the first: an iterator, or an async one
        if not head_line:
            raise IncompleteResponse("the streamed result ended before its first line")
        self.columns = columns_from(_wire.loads(head_line)["columns"])
        self._names = [column.name for column in self.columns] if row_mode == "object" else None
        self.command: str | None = None
        self.row_count: int | None = None
        self.truncated = False

    def take(self, line: str) -> Any:
        """The row on `line`, or END for the last line: the summary is kept, an error raised."""
        value = _wire.loads(line)
        if isinstance(value, list):
            return value if self._names is None else dict(zip(self._names, value, strict=False))
        if "error" in value:
            raise error_from_body(value)
        self.command, self.row_count, self.truncated = value["command"], value["rowCount"], value["truncated"]
        return END

    @staticmethod
    def cut_short() -> IncompleteResponse:
        return IncompleteResponse("the streamed result ended before its last line (connection cut)")

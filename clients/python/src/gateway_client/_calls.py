"""The native API's calls as values: method, path, body, whether they are idempotent, and
how to decode their answer. Both clients send these; only the transport differs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypedDict, TypeVar, Unpack

from gateway_client._results import DatabaseCredential, Explanation, QueryResult, RowMode, batch_results

T = TypeVar("T")

JSON = "application/json"
NDJSON = "application/x-ndjson"

# A statement in a batch: its SQL alone, or (SQL, parameters).
BatchStatement = str | tuple[str, Sequence[Any]]


@dataclass(frozen=True)
class Call(Generic[T]):
    method: str
    path: str
    body: dict[str, Any] | None
    idempotent: bool
    decode: Callable[[Any], T]
    accept: str = JSON


class ExplainOptions(TypedDict, total=False):
    params: Sequence[Any] | None  # the parameters as one list, in place of positional ones


class StatementOptions(ExplainOptions, total=False):
    row_mode: RowMode  # "object" (rows as dicts, the default) or "array" (lists in column order)
    idempotent: bool  # safe to retry after any 429 or 503 (default False; see _retry)


class BatchOptions(TypedDict, total=False):
    isolation: str  # "read uncommitted", "read committed" (default), "repeatable read", "serializable"
    read_only: bool
    row_mode: RowMode
    idempotent: bool


def parameters(args: tuple[Any, ...], params: Sequence[Any] | None) -> list[Any]:
    """`query(sql, 1, 2)` or `query(sql, params=[1, 2])`: one or the other."""
    if args and params is not None:
        raise TypeError("pass parameters positionally or as params=, not both")
    return list(args if params is None else params)


def query(
    sql: str,
    args: tuple[Any, ...],
    *,
    params: Sequence[Any] | None = None,
    row_mode: RowMode = "object",
    idempotent: bool = False,
) -> Call[QueryResult]:
    body = {"sql": sql, "params": parameters(args, params), "rowMode": row_mode}
    return Call("POST", "/v1/query", body, idempotent, QueryResult.from_json)


def stream(sql: str, args: tuple[Any, ...], **options: Unpack[StatementOptions]) -> tuple[Call[Any], RowMode]:
    """The call, and the row mode the caller asked for: rows travel as arrays whatever it
    is (see StreamedResult)."""
    call = query(sql, args, **options)
    assert call.body is not None
    return replace(call, body={**call.body, "rowMode": "array"}, accept=NDJSON), call.body["rowMode"]


def batch(
    statements: Sequence[BatchStatement],
    *,
    isolation: str = "read committed",
    read_only: bool = False,
    row_mode: RowMode = "object",
    idempotent: bool = False,
) -> Call[list[QueryResult]]:
    body = {
        "statements": [_statement(item) for item in statements],
        "isolation": isolation,
        "readOnly": read_only,
        "rowMode": row_mode,
    }
    return Call("POST", "/v1/batch", body, idempotent, batch_results)


def _statement(item: BatchStatement) -> dict[str, Any]:
    if isinstance(item, str):
        return {"sql": item, "params": []}
    sql, params = item
    return {"sql": sql, "params": list(params)}


def explain(sql: str, args: tuple[Any, ...], *, params: Sequence[Any] | None = None) -> Call[Explanation]:
    body = {"sql": sql, "params": parameters(args, params)}
    return Call("POST", "/v1/explain", body, True, Explanation.from_json)


WHOAMI: Call[dict[str, Any]] = Call("GET", "/v1/whoami", None, True, dict)


def credentials(ttl: str | float | None) -> Call[DatabaseCredential]:
    """A new temporary login; never retried after an answer that may have come after one was
    made (each try could leave one more)."""
    body = {} if ttl is None else {"ttl": ttl}
    return Call("POST", "/v1/credentials", body, False, DatabaseCredential.from_json)

"""The OpenAPI 3.1 document of the HTTP API, generated from the app's routes.

Every route is an `ApiRoute`: a Starlette route with the `Operation` it serves. An operation's
body and answer schemas are defined beside the decoder and encoder that read and write them
(`gateway.api.native`, `neon`, `mcp`, ...); the statuses, meanings and shape of its errors come
from the error codes it names, through the one error table (`gateway.errors.ERROR_TABLE`) and
its wire format's error shape. Nothing here is written per path.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from starlette.routing import BaseRoute, Route

from gateway import __version__
from gateway.errors import ERROR_TABLE, ErrorKind

JSON = "application/json"
Schema = dict[str, Any]
STRINGS: Schema = {"type": "array", "items": {"type": "string"}}
NULLABLE_STRING: Schema = {"type": ["string", "null"]}

# Every answer carries the request's id (gateway.api.app.Front, the endpoints).
ALWAYS_SENT = ("X-Request-Id",)
# Codes any operation can end in: a failure nobody foresaw; and, with a body, one over the limit
# (refused by its Content-Length before the route is reached).
ANY_OPERATION = ("internal_error",)
WITH_BODY = ("payload_too_large",)


@dataclass(frozen=True)
class Answer:
    """One status of an operation: what it means, its content (media type -> schema) and the
    headers it always carries beyond `ALWAYS_SENT`."""

    description: str
    content: Mapping[str, Schema] = field(default_factory=dict)
    headers: tuple[str, ...] = ()

    @classmethod
    def json(cls, description: str, schema: Schema, headers: tuple[str, ...] = ()) -> Answer:
        return cls(description, {JSON: schema}, headers)


# A wire format's error answers: the error kinds an operation names -> its answers by status.
ErrorShape = Callable[[Sequence[ErrorKind]], dict[int, Answer]]


def listed(key: str, items: Schema) -> Schema:
    """`{"<key>": [<items>...]}`, the shape of every answer that is a list."""
    return {"type": "object", "required": [key], "properties": {key: {"type": "array", "items": items}}}


def kinds_of(codes: Sequence[str]) -> list[ErrorKind]:
    """The answered rows of the error table with these codes, in the table's order."""
    known = {kind.code for kind in ERROR_TABLE}
    unknown = set(codes) - known
    if unknown:
        raise ValueError(f"error codes not in gateway.errors.ERROR_TABLE: {sorted(unknown)}")
    return [kind for kind in ERROR_TABLE if kind.code in codes and kind.answered]


def describe(kinds: Sequence[ErrorKind]) -> str:
    return "; ".join(f"{kind.code}: {kind.summary}" for kind in kinds)


def shared_headers(kinds: Sequence[ErrorKind]) -> tuple[str, ...]:
    """The headers every one of these errors carries."""
    return tuple(header for header in kinds[0].headers if all(header in kind.headers for kind in kinds))


def by_status(kinds: Sequence[ErrorKind], status_of: Callable[[ErrorKind], int]) -> dict[int, list[ErrorKind]]:
    grouped: dict[int, list[ErrorKind]] = {}
    for kind in kinds:
        grouped.setdefault(status_of(kind), []).append(kind)
    return grouped


@dataclass(frozen=True)
class Operation:
    """What one method of one path takes and answers.

    `answers` are its own (successes, and answers that are not the gateway's errors); `errors`
    are codes of the error table, answered in `error_shape` (the native `/v1` shape by
    default). `request` is its body's schema; `parameters` its header and query parameters
    (path parameters come from the route's path)."""

    summary: str
    answers: Mapping[int, Answer]
    errors: tuple[str, ...] = ()
    request: Schema | None = None
    request_required: bool = True
    parameters: tuple[Schema, ...] = ()
    secured: bool = True
    error_shape: ErrorShape | None = None
    description: str = ""

    def responses(self, native_errors: ErrorShape) -> dict[int, Answer]:
        codes = (*self.errors, *ANY_OPERATION, *(WITH_BODY if self.request is not None else ()))
        errors = (self.error_shape or native_errors)(kinds_of(codes))
        clash = set(errors) & set(self.answers)
        if clash:
            raise ValueError(f"{self.summary!r}: statuses both answered and errors: {sorted(clash)}")
        return dict(sorted({**self.answers, **errors}.items()))


class ApiRoute(Route):
    """A route of the public API: one method, and the operation it serves."""

    def __init__(self, path: str, endpoint: Callable[..., Any], method: str, operation: Operation) -> None:
        super().__init__(path, endpoint, methods=[method])
        self.method = method
        self.operation = operation


def _parameters(route: ApiRoute) -> list[Schema]:
    in_path = [
        {"name": name, "in": "path", "required": True, "schema": {"type": "string", "minLength": 1}}
        for name in re.findall(r"{(\w+)}", route.path)
    ]
    return [*in_path, *route.operation.parameters]


def _answer(answer: Answer) -> Schema:
    headers = {name: {"required": True, "schema": {"type": "string"}} for name in (*ALWAYS_SENT, *answer.headers)}
    result: Schema = {"description": answer.description, "headers": headers}
    if answer.content:
        result["content"] = {media: {"schema": schema} for media, schema in answer.content.items()}
    return result


def _operation(route: ApiRoute, native_errors: ErrorShape) -> Schema:
    operation = route.operation
    result: Schema = {
        "operationId": f"{route.method.lower()}{re.sub(r'[^A-Za-z0-9]+', '_', route.path).rstrip('_')}",
        "summary": operation.summary,
        "responses": {str(status): _answer(answer) for status, answer in operation.responses(native_errors).items()},
    }
    if operation.description:
        result["description"] = operation.description
    parameters = _parameters(route)
    if parameters:
        result["parameters"] = parameters
    if operation.request is not None:
        result["requestBody"] = {
            "required": operation.request_required,
            "content": {JSON: {"schema": operation.request}},
        }
    result["security"] = [{"bearer": []}] if operation.secured else []
    return result


def build_document(routes: Sequence[BaseRoute], native_errors: ErrorShape) -> Schema:
    """The document of every `ApiRoute` among `routes`. A route that serves the API without
    saying what it takes is a mistake: only routes kept out of the schema may be plain."""
    paths: dict[str, dict[str, Schema]] = {}
    for route in routes:
        if isinstance(route, ApiRoute):
            paths.setdefault(route.path, {})[route.method.lower()] = _operation(route, native_errors)
        elif getattr(route, "include_in_schema", False):
            raise TypeError(
                f"route {getattr(route, 'path', route)!r} is not an ApiRoute: its operation is undocumented"
            )
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "edge-sql-gateway",
            "version": __version__,
            "description": "HTTP-to-SQL gateway for PostgreSQL. Errors, their codes and statuses: the README's "
            "Errors table.",
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }

"""`GET /docs`: the API reference for people, an HTML page made from the OpenAPI document when
the app is built, and its style sheet. Both are served by the gateway itself: the page loads
nothing from anywhere else (its Content-Security-Policy says so to the browser), so it works
offline and behind any egress policy.

Owns the page's layout only; what it says is the document's (`gateway.api.openapi`).
"""

from __future__ import annotations

import html
from importlib.resources import files
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

PATH = "/docs"
STYLE_PATH = "/docs/reference.css"
STYLE = files("gateway.api").joinpath("reference.css").read_bytes()
# Only this origin's style sheet; no script, image, font or frame from anywhere.
POLICY = "default-src 'none'; style-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
METHODS = ("get", "post", "put", "patch", "delete")


def _text(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _schema(schema: dict[str, Any]) -> str:
    return f"<pre>{_text(orjson.dumps(schema, option=orjson.OPT_INDENT_2).decode())}</pre>"


def _example(example: Any) -> str:
    return f'<pre class="example">{_text(orjson.dumps(example).decode())}</pre>'


def _anchor(method: str, path: str) -> str:
    return f"{method}-{path.strip('/').replace('/', '-').replace('{', '').replace('}', '') or 'root'}"


def _parameters(operation: dict[str, Any]) -> str:
    rows = [
        f"<tr><td><code>{_text(p['name'])}</code></td><td>{_text(p['in'])}</td>"
        f"<td>{'required' if p.get('required') else 'optional'}</td>"
        f"<td><code>{_text(orjson.dumps(p['schema']).decode())}</code> {_text(p.get('description', ''))}</td></tr>"
        for p in operation.get("parameters", [])
    ]
    if not rows:
        return ""
    head = "<tr><th>name</th><th>in</th><th></th><th>schema</th></tr>"
    return f"<h4>Parameters</h4><table>{head}{''.join(rows)}</table>"


def _request(operation: dict[str, Any]) -> str:
    body = operation.get("requestBody")
    if body is None:
        return ""
    parts = [
        f"<details><summary><code>{_text(media)}</code></summary>{_schema(content['schema'])}</details>"
        + "".join(_example(example) for example in content["schema"].get("examples", []))
        for media, content in body["content"].items()
    ]
    needed = "required" if body.get("required") else "optional"
    return f"<h4>Request body ({needed})</h4>{''.join(parts)}"


def _responses(operation: dict[str, Any]) -> str:
    items = []
    for status, answer in operation["responses"].items():
        headers = ", ".join(f"<code>{_text(name)}</code>" for name in answer.get("headers", {}))
        contents = "".join(
            f"<details><summary><code>{_text(media)}</code></summary>{_schema(content['schema'])}</details>"
            for media, content in answer.get("content", {}).items()
        )
        items.append(
            f'<li><span class="status s{_text(status)[0]}">{_text(status)}</span> '
            f"{_text(answer['description'])}<br><small>headers: {headers}</small>{contents}</li>"
        )
    return f'<h4>Responses</h4><ul class="responses">{"".join(items)}</ul>'


def _operation(path: str, method: str, operation: dict[str, Any]) -> str:
    auth = "bearer token" if operation.get("security") else "no token"
    description = f"<p>{_text(operation['description'])}</p>" if operation.get("description") else ""
    return (
        f'<section id="{_anchor(method, path)}"><h3><span class="method {method}">{method.upper()}</span> '
        f"<code>{_text(path)}</code></h3><p>{_text(operation['summary'])} <small>({auth})</small></p>"
        f"{description}{_parameters(operation)}{_request(operation)}{_responses(operation)}</section>"
    )


def render(document: dict[str, Any]) -> bytes:
    """The whole page: an index of the operations, then each one."""
    operations = [
        (path, method, operations[method])
        for path, operations in document["paths"].items()
        for method in METHODS
        if method in operations
    ]
    index = "".join(
        f'<li><a href="#{_anchor(method, path)}"><span class="method {method}">{method.upper()}</span> '
        f"{_text(path)}</a></li>"
        for path, method, _ in operations
    )
    info = document["info"]
    title = f"{_text(info['title'])} {_text(info['version'])}"
    page = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{title} API reference</title>'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="stylesheet" href="{STYLE_PATH}"></head><body><header><h1>{title}</h1>'
        f"<p>{_text(info.get('description', ''))}</p>"
        f'<p>The machine-readable document: <a href="/openapi.json">/openapi.json</a> (OpenAPI '
        f"{_text(document['openapi'])})</p></header>"
        f"<nav><ul>{index}</ul></nav><main>"
        + "".join(_operation(path, method, operation) for path, method, operation in operations)
        + "</main></body></html>"
    )
    return page.encode()


async def page(request: Request) -> Response:
    return Response(request.app.state.reference, media_type="text/html", headers={"Content-Security-Policy": POLICY})


async def style(request: Request) -> Response:
    return Response(STYLE, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"})

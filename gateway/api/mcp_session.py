"""MCP sessions that live in their id, not in the gateway: the `Mcp-Session-Id` answered to
`initialize` carries the client's name and a digest binding it to the caller who opened it
(issuer, subject, identity, role). Any worker or replica checks a request against it without
shared state; a token of another caller never continues the session.

The id is not a credential (every request carries its bearer token) and is not signed: a
caller can only make up a session for itself, naming its client as it could in `initialize`.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os

import orjson

from gateway.errors import not_found
from gateway.pipeline import Caller

HEADER = "Mcp-Session-Id"
VERSION = "gw1"  # the id's format, its first part


def _encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _binding(nonce: bytes, caller: Caller) -> bytes:
    sub = caller.token.claims.get("sub")
    who = [caller.token.issuer, sub if isinstance(sub, str) else None, caller.identity.name, caller.identity.role]
    return hashlib.sha256(nonce + orjson.dumps(who)).digest()[:16]


def open_session(caller: Caller, client: str | None) -> str:
    """A new session id for `caller`, naming its client: visible ASCII, as MCP requires."""
    nonce = os.urandom(16)
    return ".".join([VERSION, _encode(nonce), _encode(_binding(nonce, caller)), _encode((client or "").encode())])


def session_client(session_id: str, caller: Caller) -> str | None:
    """The client name of a session `caller` opened. Any other id — another caller's, one
    this gateway never made — is answered as a session that does not exist (404), which
    tells an MCP client to initialize a new one."""
    try:
        version, nonce, binding, client = session_id.split(".")
        if version == VERSION and hmac.compare_digest(_decode(binding), _binding(_decode(nonce), caller)):
            return _decode(client).decode() or None
    except ValueError:  # not four parts, not base64, not UTF-8
        pass
    raise not_found("no MCP session with this id is open for this caller; initialize a new session")

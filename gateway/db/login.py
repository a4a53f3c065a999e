"""The gateway's own database login: which user and password a new connection presents.

`[database] password_secret` names a password for the URL's user; `login_secret` names a
secret holding the user as well (`user:password`, or JSON `{"user": ..., "password": ...}`),
so that the login can move to a new role by rewriting one secret. Either is read at every
new connection (`gateway.db.pool`), never kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import orjson

from gateway.config import DatabaseConfig
from gateway.secrets import MissingSecret, SecretStore


@dataclass(frozen=True)
class Login:
    user: str | None  # None: the URL's user
    password: str | None

    def __repr__(self) -> str:  # never the password, whatever prints it
        return f"Login(user={self.user!r})"


def parse_login(text: str, name: str) -> Login:
    """A login secret's value. A JSON object names both fields; otherwise the user is what
    comes before the first colon (PostgreSQL role names the gateway logs in as have none)."""
    if text.startswith("{"):
        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = None
        if not (
            isinstance(value, dict) and isinstance(value.get("user"), str) and isinstance(value.get("password"), str)
        ):
            raise MissingSecret(f'secret "{name}": expected JSON {{"user": "...", "password": "..."}}')
        user, password = value["user"], value["password"]
    else:
        user, colon, password = text.partition(":")
        if not colon:
            raise MissingSecret(f'secret "{name}": expected user:password')
    if not user or not password:
        raise MissingSecret(f'secret "{name}": the user and the password must not be empty')
    return Login(user, password)


def current_login(config: DatabaseConfig, secrets: SecretStore) -> Login:
    """The login a connection opened now should present."""
    if config.login_secret is not None:
        return parse_login(secrets.get(config.login_secret), config.login_secret)
    if config.password_secret is not None:
        return Login(None, secrets.get(config.password_secret))
    return Login(None, None)

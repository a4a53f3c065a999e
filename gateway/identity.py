"""Verified claims -> the identity a request runs as.

Owns `Identity` (role, rules, limits) and resolution: the token's issuer selects the
candidate identities, tried in file order; the first whose `match` holds wins. A match
value that is a list means "any of"; a claim that is a list matches when it contains the
value; dotted keys reach nested claims (`"realm.team" = "ops"`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig, IdentityConfig, RuleConfig
from gateway.errors import no_identity


@dataclass(frozen=True)
class Identity:
    name: str
    issuer: str
    role: str
    read_only: bool
    max_rows: int
    max_response_bytes: int
    statement_timeout: float
    rate: float | None
    concurrency: int
    functions: frozenset[str]
    schemas: tuple[str, ...]
    rules: tuple[RuleConfig, ...]
    match: dict[str, Any]

    @classmethod
    def from_config(cls, config: IdentityConfig) -> Identity:
        return cls(
            name=config.name,
            issuer=config.issuer,
            role=config.role,
            read_only=config.read_only,
            max_rows=config.max_rows,
            max_response_bytes=config.max_response_bytes,
            statement_timeout=config.statement_timeout,
            rate=config.rate,
            concurrency=config.concurrency,
            functions=frozenset(config.functions),
            schemas=config.schemas,
            rules=config.rules,
            match=config.match,
        )

    def limits(self) -> dict[str, Any]:
        return {
            "readOnly": self.read_only,
            "maxRows": self.max_rows,
            "maxResponseBytes": self.max_response_bytes,
            "statementTimeoutMs": round(self.statement_timeout * 1000),
            "ratePerSecond": self.rate,
            "concurrency": self.concurrency,
        }


_MISSING = object()


def claim_at(claims: dict[str, Any], path: str) -> Any:
    """The claim at a dotted path; an exact top-level key wins over nesting."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _value_matches(actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return False
    wanted = expected if isinstance(expected, tuple | list) else (expected,)
    present = actual if isinstance(actual, list) else (actual,)
    # bool is an int in Python; a claim `true` must not match an expected 1.
    return any(type(a) is type(w) and a == w for a in present for w in wanted)


def matches(identity: Identity, claims: dict[str, Any]) -> bool:
    return all(_value_matches(claim_at(claims, key), value) for key, value in identity.match.items())


class IdentityResolver:
    def __init__(self, identities: list[Identity]) -> None:
        self.identities = identities
        self._by_issuer: dict[str, list[Identity]] = {}
        for identity in identities:
            self._by_issuer.setdefault(identity.issuer, []).append(identity)
        self._by_name = {identity.name: identity for identity in identities}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> IdentityResolver:
        return cls([Identity.from_config(identity) for identity in config.identities])

    def resolve(self, issuer: str, claims: dict[str, Any]) -> Identity:
        for identity in self._by_issuer.get(issuer, ()):
            if matches(identity, claims):
                return identity
        raise no_identity(issuer)

    def by_name(self, name: str) -> Identity | None:
        return self._by_name.get(name)

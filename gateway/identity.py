"""Verified claims -> the identity a request runs as.

Owns `Identity` (role, rules, limits) and resolution: the token's issuer selects the
candidate identities, tried in file order; the first whose `match` holds wins. A match
value that is a list means "any of"; a claim that is a list matches when it contains the
value; dotted keys reach nested claims (`"realm.team" = "ops"`, `"kubernetes.io.namespace"`).
An identity with `role_claim` runs as the role that claim names, and only when it names one
of its `roles`; otherwise it does not match and resolution moves on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.config import GatewayConfig, IdentityConfig, IdentityCredentialsConfig, RuleConfig
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
    credentials: IdentityCredentialsConfig | None = None  # may take temporary database logins

    @classmethod
    def from_config(cls, config: IdentityConfig, role: str | None = None) -> Identity:
        """The identity running as `role` (default: the configured one)."""
        role = role or config.role
        assert role is not None  # the configuration has role or role_claim with roles
        return cls(
            name=config.name,
            issuer=config.issuer,
            role=role,
            read_only=config.read_only,
            max_rows=config.max_rows,
            max_response_bytes=config.max_response_bytes,
            statement_timeout=config.statement_timeout,
            rate=config.rate,
            concurrency=config.concurrency,
            functions=frozenset(config.functions),
            schemas=config.schemas,
            rules=config.rules,
            credentials=config.credentials,
        )

    @property
    def narrows_columns(self) -> bool:
        """Some rule limits the columns it may use: PostgreSQL's errors may quote others."""
        return any(rule.columns for rule in self.rules)

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
    """The claim at a dotted path. A key that itself holds dots is found too, the exact key
    first and then the shortest prefix that is one: `"kubernetes.io.namespace"` reaches
    `{"kubernetes.io": {"namespace": ...}}`."""
    if path in claims:
        return claims[path]
    parts = path.split(".")
    for cut in range(1, len(parts)):
        head = ".".join(parts[:cut])
        if head in claims and isinstance(claims[head], dict):
            return claim_at(claims[head], ".".join(parts[cut:]))
    return _MISSING


def _value_matches(actual: Any, expected: Any) -> bool:
    if actual is _MISSING:
        return False
    wanted = expected if isinstance(expected, tuple | list) else (expected,)
    present = actual if isinstance(actual, list) else (actual,)
    # bool is an int in Python; a claim `true` must not match an expected 1.
    return any(type(a) is type(w) and a == w for a in present for w in wanted)


def matches(match: dict[str, Any], claims: dict[str, Any]) -> bool:
    return all(_value_matches(claim_at(claims, key), value) for key, value in match.items())


@dataclass(frozen=True)
class ConfiguredIdentity:
    """One `[[identities]]` entry as resolution sees it: its match, and the `Identity` it
    resolves to for each role it may run as (one, unless the role comes from a claim)."""

    name: str
    issuer: str
    match: dict[str, Any]
    role_claim: str | None
    by_role: dict[str, Identity]

    @classmethod
    def from_config(cls, config: IdentityConfig) -> ConfiguredIdentity:
        by_role = {role: Identity.from_config(config, role) for role in config.database_roles()}
        return cls(config.name, config.issuer, config.match, config.role_claim, by_role)

    def resolve(self, claims: dict[str, Any]) -> Identity | None:
        if not matches(self.match, claims):
            return None
        if self.role_claim is None:
            return next(iter(self.by_role.values()))
        role = claim_at(claims, self.role_claim)
        # A role outside the allowlist (or not a string at all) is no role: no match.
        return self.by_role.get(role) if isinstance(role, str) else None


class IdentityResolver:
    def __init__(self, identities: list[ConfiguredIdentity]) -> None:
        self._by_issuer: dict[str, list[ConfiguredIdentity]] = {}
        for identity in identities:
            self._by_issuer.setdefault(identity.issuer, []).append(identity)
        self._by_name = {identity.name: identity for identity in identities}

    @classmethod
    def from_config(cls, config: GatewayConfig) -> IdentityResolver:
        return cls([ConfiguredIdentity.from_config(identity) for identity in config.identities])

    def resolve(self, issuer: str, claims: dict[str, Any]) -> Identity:
        for candidate in self._by_issuer.get(issuer, ()):
            identity = candidate.resolve(claims)
            if identity is not None:
                return identity
        raise no_identity(issuer)

    def by_name(self, name: str) -> Identity | None:
        """The named identity, for `gateway check`: its rules do not depend on its role, so
        an identity with a role claim is shown as its first allowed role."""
        configured = self._by_name.get(name)
        return next(iter(configured.by_role.values())) if configured else None

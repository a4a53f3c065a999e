"""`gateway.toml` -> frozen dataclasses, once, at start.

Owns the configuration's shape, its defaults (defined here and nowhere else), `[env.NAME]`
overrides and validation. Every error names the file, the key path and what was expected.
Secret *values* are not read here (see `gateway.secrets`); settings ending in `_secret`
hold a secret's name.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import re
import socket
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs, unquote, urlsplit

from gateway.secrets import MissingSecret, SecretStore

DURATION = "duration"  # marks a float field written as "250ms", "5s", "2m", "1h" or a number of seconds
RATE = "rate"  # marks a float field written as "100/s", "600/m", "10/h" (events per second)
RELATIVE_PATH = "relative_path"  # marks a path resolved against the config file's folder

Seconds = Annotated[float, DURATION]
PerSecond = Annotated[float, RATE]
ConfigPath = Annotated[str, RELATIVE_PATH]

SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
# What stands between the gateway and PostgreSQL (docs/pgbouncer.md): nothing, a pooler or proxy
# that keeps one server session per client connection, or PgBouncer in transaction pooling mode.
Pooler = Literal["none", "session", "pgbouncer"]
StatementKind = Literal["select", "insert", "update", "delete", "merge", "ddl"]

# Names that end up inside SQL (role names, schema names) are kept to what PostgreSQL
# accepts unquoted, so quoting them can never be escaped.
SQL_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]{0,62}$")
TABLE_PATTERN = re.compile(r"^[^.\s\"]+\.(\*|[^.\s\"]+)$")
REPLICA_NAME = re.compile(r"^[A-Za-z0-9._-]{1,100}$")
REDIS_SCHEMES = ("redis", "rediss", "unix")
# A secret's name is an environment variable name and a file name in secrets_dir: never a path.
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*$")
AUDIT_STREAMS = ("stdout", "off")
HMAC_ALGORITHMS = ("HS256",)
# Asymmetric only: an OIDC issuer's keys are public, so an HMAC "signature" keyed with one
# proves nothing (key confusion), and `none` proves nothing at all.
OIDC_ALGORITHMS = ("RS256", "PS256", "ES256", "EdDSA")
# orjson writes JSON nested at most this deep: a json or jsonb parameter nested deeper could
# not be sent to PostgreSQL.
MAX_WRITABLE_DEPTH = 254


class ConfigError(ValueError):
    """An invalid configuration; the message names file, key path and expectation."""


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    max_body_bytes: int = 1_048_576
    # How deep a parameter's arrays and objects may nest; deeper is a 400 naming the parameter.
    max_param_depth: int = 64
    cors_origins: tuple[str, ...] = ()
    # How long /readyz keeps its answer: each check takes a pool connection.
    readyz_cache: Seconds = 1.0
    # A streamed result the client takes nothing of for this long is aborted and rolled back.
    stream_idle_timeout: Seconds = 10.0
    # After SIGTERM, open requests get this long to finish; then they are cut (rolled back,
    # audited) and the process exits.
    shutdown_grace: Seconds = 10.0
    # This replica's name, in every audit record and operational log line: which of several
    # gateways behind one address answered.
    replica: str = field(default_factory=socket.gethostname)


@dataclass(frozen=True)
class DatabaseConfig:
    url: str
    password_secret: str | None = None
    # A secret holding the login's user as well as its password (`user:password`, or JSON
    # {"user": ..., "password": ...}), read at every new connection: rotating the login to a
    # new role needs no restart. Instead of password_secret; the URL's user is then unused.
    login_secret: str | None = None
    sslmode: SslMode = "verify-full"
    sslrootcert: ConfigPath | None = None
    sslcert: ConfigPath | None = None
    sslkey_secret: str | None = None
    pool_min: int = 2
    pool_max: int = 20
    acquire_timeout: Seconds = 2.0
    connect_timeout: Seconds = 5.0
    lock_timeout: Seconds = 2.0
    idle_in_transaction_timeout: Seconds = 30.0
    # How long past the identity's statement_timeout any wait on the database may last: by
    # then PostgreSQL has answered a statement past its timeout, so one that is still silent
    # is frozen or cut off; its connection is dropped and the request answered 503.
    response_margin: Seconds = 1.0
    statement_cache_size: int = 1024
    # A connection older than this is closed when it is next released, or found idle, and
    # replaced by one opened with the login as the secret names it then: after a rotation no
    # session of the previous login outlives this by more than the sweep that finds it.
    max_connection_age: Seconds = 3600.0
    # Refuse to start when the login role could run statements with privileges of its own.
    check_login_role: bool = True
    # "pgbouncer": the URL reaches PostgreSQL through PgBouncer in transaction pooling mode, where
    # consecutive transactions of one connection may run on different server sessions.
    pooler: Pooler = "none"
    # Where the one connection that LISTENs for catalog changes goes, when not to `url`: a URL
    # that reaches PostgreSQL directly (or through a session pool), with the same login and TLS
    # settings. Behind a transaction pooler without it, nothing listens: the catalog is re-read
    # every `policy.catalog_refresh`.
    listen_url: str | None = None


@dataclass(frozen=True)
class IssuerConfig:
    """A shared-secret issuer (`hs256_secret`) or an OIDC issuer (keys from its JWKS)."""

    name: str
    issuer: str
    audience: str
    hs256_secret: str | None = None
    jwks_uri: str | None = None  # OIDC: else from the discovery document
    algorithms: tuple[str, ...] | None = None  # default: ["HS256"] with hs256_secret, else ["RS256"]
    max_token_lifetime: Seconds = 24 * 3600.0
    leeway: Seconds = 30.0
    jwks_cache: Seconds = 3600.0
    jwks_refresh_min_interval: Seconds = 30.0
    jwks_max_stale: Seconds = 24 * 3600.0  # last good keys kept this long past jwks_cache while unreachable
    jwks_fetch_timeout: Seconds = 5.0
    jwks_ca: ConfigPath | None = None  # CA bundle for the discovery and JWKS URLs (else the system's)
    max_token_bytes: int = 16 * 1024

    def __post_init__(self) -> None:
        # The default depends on the kind of issuer; RS256 is what Google, GitHub Actions, Okta,
        # Auth0 and Kubernetes sign with.
        if self.algorithms is None:
            object.__setattr__(self, "algorithms", HMAC_ALGORITHMS if self.hs256_secret else ("RS256",))

    @property
    def is_oidc(self) -> bool:
        return self.hs256_secret is None


@dataclass(frozen=True)
class ApprovalConfig:
    """`approval = { approvers = [...], ttl = "1h" }` on a rule: what the rule allows runs only
    once an identity among `approvers` approves it, within `ttl` of the request (see
    docs/approvals.md)."""

    approvers: tuple[str, ...]
    ttl: Seconds = 3600.0

    def combined(self, other: ApprovalConfig) -> ApprovalConfig:
        """Several rules asking for approval of one statement: any of their approvers may
        approve it, and the request lasts as long as the shortest of their ttls."""
        return ApprovalConfig(tuple(sorted({*self.approvers, *other.approvers})), min(self.ttl, other.ttl))


@dataclass(frozen=True)
class RuleConfig:
    allow: tuple[StatementKind, ...]
    tables: tuple[str, ...]
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # DROP, TRUNCATE, ALTER TABLE or REVOKE ... CASCADE reach objects no rule was asked about
    # (dependent views, foreign keys, other tables): only a ddl rule saying so allows it.
    cascade: bool = False
    approval: ApprovalConfig | None = None


@dataclass(frozen=True)
class IdentityCredentialsConfig:
    """`[identities.credentials]`: the identity may take temporary PostgreSQL logins
    (`POST /v1/credentials`), members of its role, whose sessions only the role's grants
    bound: the statement policy does not see them."""

    ttl: Seconds = 900.0  # when the request names none
    max_ttl: Seconds = 3600.0
    max_active: int = 2  # logins not yet expired at once, across every replica
    connection_limit: int = 2  # sessions per login (CONNECTION LIMIT)


@dataclass(frozen=True)
class IdentityConfig:
    name: str
    issuer: str
    role: str | None = None  # or, for a role per token, role_claim with its allowlist in roles
    match: dict[str, Any] = field(default_factory=dict)
    role_claim: str | None = None
    roles: tuple[str, ...] = ()
    read_only: bool = False
    max_rows: int = 10_000
    max_response_bytes: int = 10 * 1024 * 1024
    statement_timeout: Seconds = 5.0
    rate: PerSecond | None = None
    concurrency: int = 8
    max_connections: int | None = None  # pooled connections held at once; default: `connection_share`
    functions: tuple[str, ...] = ()
    schemas: tuple[str, ...] = ("public",)
    rules: tuple[RuleConfig, ...] = ()
    credentials: IdentityCredentialsConfig | None = None

    def database_roles(self) -> tuple[str, ...]:
        """Every role a request of this identity may run as."""
        if self.role_claim is not None:
            return self.roles
        return () if self.role is None else (self.role,)


@dataclass(frozen=True)
class PolicyConfig:
    max_statement_bytes: int = 32 * 1024
    analysis_cache_size: int = 4096
    # New statement texts each identity may have analysed (cache misses cost CPU); over it: 429.
    analysis_rate: PerSecond = 200.0
    # A new text is analysed in a worker process; one that takes longer is denied and its
    # worker killed and replaced (parsers can be exponential in nesting).
    analysis_timeout: Seconds = 0.1
    analysis_workers: int = 2  # worker processes per gateway process
    # How often the catalog snapshot is re-read from the database; 0 turns re-reading off.
    catalog_refresh: Seconds = 300.0
    # How long one read of the catalog may take; past it the read is abandoned, the snapshot
    # in use kept (decisions held after DDL go on with it).
    catalog_read_timeout: Seconds = 5.0


@dataclass(frozen=True)
class ApprovalsConfig:
    """`[approvals]`: where pending approvals live, a schema of the gateway's own that
    `gateway setup` creates with the admin login (no identity role is granted anything there)."""

    schema: str = "gateway"


@dataclass(frozen=True)
class AuditConfig:
    sink: str = "stdout"  # "stdout", "off", or a file path (relative to the config file; {pid} allowed)
    chain: bool = False  # each record carries the SHA-256 of the one before
    # Also one short line per request on stderr (status, identity, endpoint, ms, rows), for a
    # terminal to read while the records go to the sink; `gateway dev` sets it.
    summary: bool = False


@dataclass(frozen=True)
class MetricsConfig:
    # "host:port" of a listener of its own for /metrics, whose labels name identities; unset:
    # /metrics is served on the API's address.
    listen: str | None = None
    # With several workers, how often each writes its pool gauges for the process that answers
    # scrapes (which cannot see another process's pool).
    pool_sample_interval: Seconds = 1.0

    @property
    def address(self) -> tuple[str, int] | None:
        return None if self.listen is None else listen_address(self.listen)


# What becomes of the objects a temporary login created when its role is dropped: handed to
# the identity's role (what a migration tool made stays), or dropped with it.
OwnedObjects = Literal["reassign", "drop"]


@dataclass(frozen=True)
class CredentialsConfig:
    """The broker (`POST /v1/credentials`): the admin login that creates and drops temporary
    login roles, and what the connection strings it issues name."""

    # A login of its own, never the query login: CREATEROLE, never a superuser. TLS settings
    # come from [database] (the same server); the password from a secret.
    admin_url: str
    # Where clients connect: a name the server's certificate holds (sslmode verify-full).
    public_host: str
    admin_password_secret: str | None = None
    public_port: int = 5432
    sslmode: SslMode = "verify-full"
    # How often expired logins are dropped and their sessions ended (also once at start).
    reap_interval: Seconds = 60.0
    # How long any one statement of the admin login may last, lock waits included, on the
    # server and in the client (connecting: database.connect_timeout).
    admin_timeout: Seconds = 5.0
    owned_objects: OwnedObjects = "reassign"


@dataclass(frozen=True)
class LimitsConfig:
    """`[limits]`: where per-identity rates and concurrency are counted. Unset `redis_url`: in
    each process. Set: in Redis, shared by every replica of the gateway (see gateway.shared_limits)."""

    redis_url: str | None = None  # redis://, rediss:// or unix://, without a password
    redis_password_secret: str | None = None
    # Every call to Redis; past it the call counts as failed and the replica counts locally.
    redis_timeout: Seconds = 0.2
    # While Redis is unreachable, how often it is tried again.
    redis_retry: Seconds = 1.0
    # Connections to Redis per process; a call waits for one within redis_timeout.
    redis_connections: int = 16
    # A request's concurrency lease lasts this long unless renewed (every third of it while
    # the request runs): a replica that dies frees its leases within this time.
    lease_ttl: Seconds = 30.0


LogLevel = Literal["debug", "info", "warning", "error"]


@dataclass(frozen=True)
class LoggingConfig:
    level: LogLevel = "info"  # operational logs: JSON lines on stderr, apart from the audit sink


@dataclass(frozen=True)
class GatewayConfig:
    name: str
    database: DatabaseConfig
    secrets_dir: ConfigPath | None = None
    server: ServerConfig = field(default_factory=ServerConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    audit: AuditConfig = field(default_factory=AuditConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    issuers: tuple[IssuerConfig, ...] = ()
    identities: tuple[IdentityConfig, ...] = ()
    credentials: CredentialsConfig | None = None
    approvals: ApprovalsConfig = field(default_factory=ApprovalsConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    # Where the file was read from; not a TOML key.
    source: str = field(default="<memory>", metadata={"internal": True})

    def issuer(self, name: str) -> IssuerConfig:
        return next(issuer for issuer in self.issuers if issuer.name == name)

    def identity_roles(self) -> list[str]:
        """Every database role some identity may run as: the login must be a member of each."""
        return sorted({role for identity in self.identities for role in identity.database_roles()})

    def credential_roles(self) -> list[str]:
        """Every role a temporary login may be made a member of (`[identities.credentials]`)."""
        return sorted({role for i in self.identities if i.credentials is not None for role in i.database_roles()})

    def asks_for_approval(self) -> bool:
        """Whether some rule needs approval: the approvals table must then exist."""
        return any(rule.approval is not None for identity in self.identities for rule in identity.rules)

    def secret_store(self) -> SecretStore:
        return SecretStore(Path(self.secrets_dir) if self.secrets_dir else None)

    def connection_share(self, identity: IdentityConfig) -> int:
        """The pooled connections `identity` may hold at once (its requests and streams): its
        `max_connections`, else half the pool, so that no identity can starve another (all of
        it when it is the only identity)."""
        if identity.max_connections is not None:
            return identity.max_connections
        pool = self.database.pool_max
        return pool if len(self.identities) == 1 else max(1, pool // 2)


# ---------------------------------------------------------------------------- loading


def load_config(path: str | Path, env: str | None = None) -> GatewayConfig:
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML: {error}") from None
    return parse_config(raw, source=str(path), base_dir=path.resolve().parent, env=env)


def parse_config(
    raw: dict[str, Any], *, source: str = "<memory>", base_dir: Path | None = None, env: str | None = None
) -> GatewayConfig:
    raw = dict(raw)
    environments = raw.pop("env", {})
    if not isinstance(environments, dict) or not all(isinstance(v, dict) for v in environments.values()):
        raise ConfigError(f"{source}: env: expected tables [env.NAME]")
    if env is not None:
        if env not in environments:
            known = ", ".join(sorted(environments)) or "none"
            raise ConfigError(f"{source}: env.{env}: no such environment (defined: {known})")
        raw = _merge(raw, environments[env])
    base_dir = base_dir or Path.cwd()
    config = _Reader(source, base_dir).build(GatewayConfig, raw, "")
    config = dataclasses.replace(config, source=source, audit=_resolve_audit_sink(config.audit, base_dir))
    _validate(config, source)
    return config


def _resolve_audit_sink(audit: AuditConfig, base_dir: Path) -> AuditConfig:
    """A sink that is a file path is relative to the config file, like every other path."""
    if audit.sink in AUDIT_STREAMS:
        return audit
    return dataclasses.replace(audit, sink=str((base_dir / audit.sink).resolve()))


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; every other value (arrays included) is replaced whole."""
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_duration(text: str | float | int) -> float:
    if isinstance(text, bool) or not isinstance(text, str | int | float):
        raise ValueError('a duration such as "250ms", "5s", "2m" or "1h"')
    if isinstance(text, int | float):
        # TOML has inf and nan; neither is a timeout anyone means.
        if not math.isfinite(text) or text < 0:
            raise ValueError("a non-negative, finite number of seconds")
        return float(text)
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*", text)
    if not match:
        raise ValueError('a duration such as "250ms", "5s", "2m" or "1h"')
    number, unit = float(match.group(1)), match.group(2)
    return number * {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}[unit]


def parse_rate(text: str) -> float:
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*", str(text))
    if not match:
        raise ValueError('a rate such as "100/s", "600/m" or "10/h"')
    return float(match.group(1)) / {"s": 1, "m": 60, "h": 3600}[match.group(2)]


class _Reader:
    """Builds dataclasses from TOML values by their type hints, naming the key path on error."""

    def __init__(self, source: str, base_dir: Path) -> None:
        self.source = source
        self.base_dir = base_dir

    def fail(self, path: str, expected: str, value: Any) -> typing.NoReturn:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        raise ConfigError(f"{self.source}: {path or '<top level>'}: expected {expected}, got {shown}")

    def build(self, cls: type, value: Any, path: str) -> Any:
        if not isinstance(value, dict):
            self.fail(path, "a table", value)
        hints = typing.get_type_hints(cls, include_extras=True)
        fields = {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
        unknown = sorted(set(value) - set(fields))
        if unknown:
            where = f"{path}." if path else ""
            known = ", ".join(sorted(fields))
            raise ConfigError(f"{self.source}: {where}{unknown[0]}: unknown key (allowed here: {known})")
        kwargs = {}
        for name, spec in fields.items():
            key_path = f"{path}.{name}" if path else name
            if name in value:
                kwargs[name] = self.convert(hints[name], value[name], key_path)
            elif spec.default is dataclasses.MISSING and spec.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{self.source}: {key_path}: required key is missing")
        return cls(**kwargs)

    def convert(self, hint: Any, value: Any, path: str) -> Any:
        origin = typing.get_origin(hint)
        args = typing.get_args(hint)
        if origin is Annotated:
            return self.annotated(args[0], args[1], value, path)
        if origin in (typing.Union, types.UnionType):
            inner = [a for a in args if a is not type(None)]
            return self.convert(inner[0], value, path)
        if origin is Literal:
            if value not in args:
                self.fail(path, "one of " + ", ".join(map(repr, args)), value)
            return value
        if origin in (tuple, list):
            if not isinstance(value, list):
                self.fail(path, "an array", value)
            return tuple(self.convert(args[0], item, f"{path}[{i}]") for i, item in enumerate(value))
        if origin is dict:
            if not isinstance(value, dict):
                self.fail(path, "a table", value)
            return {k: self.convert(args[1], v, f"{path}.{k}") for k, v in value.items()}
        if dataclasses.is_dataclass(hint):
            return self.build(hint, value, path)
        return self.scalar(hint, value, path)

    def scalar(self, hint: Any, value: Any, path: str) -> Any:
        if hint is Any:
            if isinstance(value, dict):
                self.fail(path, "a string, number, boolean or array of them", value)
            return tuple(value) if isinstance(value, list) else value
        if hint is bool:
            if not isinstance(value, bool):
                self.fail(path, "true or false", value)
            return value
        if hint is int:
            if isinstance(value, bool) or not isinstance(value, int):
                self.fail(path, "an integer", value)
            if value < 0:
                self.fail(path, "a non-negative integer", value)
            return value
        if hint is float:
            if isinstance(value, bool) or not isinstance(value, int | float):
                self.fail(path, "a number", value)
            return float(value)
        if hint is str:
            if not isinstance(value, str):
                self.fail(path, "a string", value)
            return value
        raise TypeError(f"unsupported config type {hint!r}")  # a bug in the dataclasses above

    def annotated(self, base: Any, marker: str, value: Any, path: str) -> Any:
        try:
            if marker == DURATION:
                return parse_duration(value)
            if marker == RATE:
                return parse_rate(value)
        except ValueError as error:
            self.fail(path, str(error), value)
        if marker == RELATIVE_PATH:
            text = self.scalar(str, value, path)
            return str((self.base_dir / text).resolve())
        return self.convert(base, value, path)


# ---------------------------------------------------------------------------- validation


def _validate(config: GatewayConfig, source: str) -> None:
    def fail(path: str, message: str) -> typing.NoReturn:
        raise ConfigError(f"{source}: {path}: {message}")

    _validate_database_url(config.database.url, "database.url", "password_secret", fail)
    if config.credentials is not None:
        _validate_credentials(config.credentials, config.database, fail)
    if config.database.login_secret is not None and config.database.password_secret is not None:
        fail("database.login_secret", "expected either login_secret or password_secret, not both")
    if config.database.max_connection_age <= 0:
        fail("database.max_connection_age", "expected a duration above zero")
    if not 0 < config.server.port < 65536:
        fail("server.port", "expected a TCP port between 1 and 65535")
    if not 1 <= config.server.max_param_depth <= MAX_WRITABLE_DEPTH:
        fail("server.max_param_depth", f"expected 1 to {MAX_WRITABLE_DEPTH}")
    if config.metrics.listen is not None:
        try:
            listen_address(config.metrics.listen)
        except ValueError as error:
            fail("metrics.listen", str(error))
    if config.metrics.pool_sample_interval <= 0:
        fail("metrics.pool_sample_interval", "expected a duration above zero")
    if not REPLICA_NAME.match(config.server.replica):
        fail("server.replica", "expected a name of letters, digits, '.', '_' and '-' (at most 100)")
    _validate_limits(config.limits, fail)
    for path, name in _secret_names(config):
        if not SECRET_NAME.match(name):
            fail(path, "expected the name of a secret (an environment variable or file name), not a value or path")
    if config.database.pool_min > config.database.pool_max:
        fail("database.pool_min", "expected at most database.pool_max")
    if config.database.pool_max < 1:
        fail("database.pool_max", "expected at least 1")
    if config.server.stream_idle_timeout <= 0:
        fail("server.stream_idle_timeout", "expected a duration above zero")
    idle_in_transaction = config.database.idle_in_transaction_timeout
    if 0 < idle_in_transaction <= config.server.stream_idle_timeout:
        # Else PostgreSQL ends a stalled stream's transaction first, and the stream ends in a
        # misleading database_unavailable.
        fail("server.stream_idle_timeout", "expected less than database.idle_in_transaction_timeout")

    issuer_names = set()
    issuer_values = set()
    for i, issuer in enumerate(config.issuers):
        path = f"issuers[{i}]"
        if issuer.name in issuer_names:
            fail(f"{path}.name", f'duplicate issuer name "{issuer.name}"')
        issuer_names.add(issuer.name)
        # A token's iss selects one issuer: a second with the same iss would never be used.
        if issuer.issuer in issuer_values:
            fail(f"{path}.issuer", f'duplicate issuer "{issuer.issuer}" (each iss may be configured once)')
        issuer_values.add(issuer.issuer)
        _validate_issuer(issuer, path, fail)

    identity_names = set()
    configured_identities = {identity.name for identity in config.identities}
    if not SQL_NAME.match(config.approvals.schema):
        fail("approvals.schema", "expected a plain schema name (letters, digits, _ and $)")
    for i, identity in enumerate(config.identities):
        path = f"identities[{i}]"
        if identity.name in identity_names:
            fail(f"{path}.name", f'duplicate identity name "{identity.name}"')
        identity_names.add(identity.name)
        if identity.issuer not in issuer_names:
            fail(f"{path}.issuer", f'expected the name of an issuer, got "{identity.issuer}"')
        _validate_identity_roles(identity, path, fail)
        for j, schema in enumerate(identity.schemas):
            if not SQL_NAME.match(schema):
                fail(f"{path}.schemas[{j}]", "expected a plain schema name (letters, digits, _ and $)")
        if identity.concurrency < 1:
            fail(f"{path}.concurrency", "expected at least 1")
        if identity.max_connections is not None and identity.max_connections < 1:
            fail(f"{path}.max_connections", "expected at least 1")
        if identity.statement_timeout <= 0:
            # Every wait on the database ends at this plus response_margin: no timeout at all
            # (PostgreSQL's 0) would leave a long statement that margin and nothing more.
            fail(f"{path}.statement_timeout", "expected a duration above zero")
        if identity.credentials is not None:
            _validate_identity_credentials(identity.credentials, f"{path}.credentials", config.credentials, fail)
        for j, rule in enumerate(identity.rules):
            if rule.cascade and "ddl" not in rule.allow:
                fail(f"{path}.rules[{j}].cascade", 'expected only on a rule that allows "ddl"')
            for k, table in enumerate(rule.tables):
                if not TABLE_PATTERN.match(table):
                    fail(f"{path}.rules[{j}].tables[{k}]", 'expected "schema.table" or "schema.*"')
            for table in rule.columns:
                if not TABLE_PATTERN.match(table) or table.endswith(".*"):
                    fail(f"{path}.rules[{j}].columns.{table}", 'expected a "schema.table" key')
                if table not in rule.tables and f"{table.split('.')[0]}.*" not in rule.tables:
                    # Column rules narrow what a rule allows: on a table it does not cover, nothing.
                    fail(f"{path}.rules[{j}].columns.{table}", "expected a table this rule's tables cover")
            _validate_rule_reach(rule, f"{path}.rules[{j}]", config.approvals.schema, configured_identities, fail)
    if config.policy.analysis_rate <= 0:
        fail("policy.analysis_rate", "expected a rate above zero")
    if config.policy.analysis_timeout <= 0:
        fail("policy.analysis_timeout", "expected a duration above zero")
    if config.policy.catalog_read_timeout <= 0:
        fail("policy.catalog_read_timeout", "expected a duration above zero")
    if config.policy.analysis_workers < 1:
        fail("policy.analysis_workers", "expected at least 1")


Fail = typing.Callable[[str, str], typing.NoReturn]


def _validate_rule_reach(rule: RuleConfig, path: str, approvals_schema: str, identities: set[str], fail: Fail) -> None:
    """No rule reaches the gateway's own schema (pending approvals hold other callers'
    statements and claims); an approval names configured identities and a positive ttl."""
    for k, table in enumerate(rule.tables):
        if table.split(".", 1)[0] == approvals_schema:
            fail(f"{path}.tables[{k}]", f'expected a table outside "{approvals_schema}", the gateway\'s own schema')
    if rule.approval is None:
        return
    if not rule.approval.approvers:
        fail(f"{path}.approval.approvers", "expected at least one identity name")
    for k, name in enumerate(rule.approval.approvers):
        if name not in identities:
            fail(f"{path}.approval.approvers[{k}]", f'expected the name of an identity, got "{name}"')
    if rule.approval.ttl <= 0:
        fail(f"{path}.approval.ttl", "expected a duration above zero")


def _validate_database_url(url: str, path: str, secret_key: str, fail: Fail) -> None:
    if not url.startswith(("postgresql://", "postgres://")):
        fail(path, "expected a postgresql:// URL")
    try:
        has_password = url_has_password(url)
    except ValueError:  # urlsplit refuses, e.g., an unclosed [IPv6 host
        fail(path, "expected a valid postgresql:// URL")
    if has_password:
        fail(path, f"must not contain a password; name it with {secret_key}")


def _validate_limits(limits: LimitsConfig, fail: Fail) -> None:
    for key in ("redis_timeout", "redis_retry", "lease_ttl"):
        if getattr(limits, key) <= 0:
            fail(f"limits.{key}", "expected a duration above zero")
    if limits.redis_connections < 1:
        fail("limits.redis_connections", "expected at least 1")
    if limits.redis_url is None:
        if limits.redis_password_secret is not None:
            fail("limits.redis_password_secret", "only with limits.redis_url")
        return
    try:
        scheme, has_password = urlsplit(limits.redis_url).scheme, url_has_password(limits.redis_url)
    except ValueError:
        fail("limits.redis_url", "expected a valid redis:// URL")
    if scheme not in REDIS_SCHEMES:
        fail("limits.redis_url", "expected a redis://, rediss:// or unix:// URL")
    if has_password:
        fail("limits.redis_url", "must not contain a password; name it with redis_password_secret")


def _validate_credentials(credentials: CredentialsConfig, database: DatabaseConfig, fail: Fail) -> None:
    _validate_database_url(credentials.admin_url, "credentials.admin_url", "admin_password_secret", fail)
    # The query login must never be able to create roles: one login cannot be both.
    if urlsplit(credentials.admin_url).username == urlsplit(database.url).username:
        fail("credentials.admin_url", "expected a login of its own, not database.url's")
    if not url_database(database.url):
        # Issued URLs name it: a client's default (its user name) would be a temporary one.
        fail("database.url", "expected the database's name in it (the issued connection strings name it)")
    if not credentials.public_host:
        fail("credentials.public_host", "expected the host name clients connect to")
    if not 0 < credentials.public_port < 65536:
        fail("credentials.public_port", "expected a TCP port between 1 and 65535")
    for key in ("reap_interval", "admin_timeout"):
        if getattr(credentials, key) <= 0:
            fail(f"credentials.{key}", "expected a duration above zero")


def _validate_identity_credentials(
    credentials: IdentityCredentialsConfig, path: str, broker: CredentialsConfig | None, fail: Fail
) -> None:
    if broker is None:
        fail(path, "needs a [credentials] section (the admin login that creates the temporary logins)")
    if credentials.ttl <= 0:
        fail(f"{path}.ttl", "expected a duration above zero")
    if credentials.ttl > credentials.max_ttl:
        fail(f"{path}.ttl", f"expected at most max_ttl ({credentials.max_ttl:g}s)")
    for key in ("max_active", "connection_limit"):
        if getattr(credentials, key) < 1:
            fail(f"{path}.{key}", "expected at least 1")


# Settings that only an OIDC issuer uses: on a shared-secret issuer they would do nothing.
OIDC_ONLY_KEYS = ("jwks_uri", "jwks_ca")


def _validate_issuer(issuer: IssuerConfig, path: str, fail: Fail) -> None:
    assert issuer.algorithms is not None  # resolved in IssuerConfig.__post_init__
    if not issuer.algorithms:
        fail(f"{path}.algorithms", "expected at least one algorithm")
    if not issuer.is_oidc:
        if issuer.algorithms != HMAC_ALGORITHMS:
            fail(f"{path}.algorithms", 'expected ["HS256"] for an issuer with hs256_secret')
        for key in OIDC_ONLY_KEYS:
            if getattr(issuer, key) is not None:
                fail(f"{path}.{key}", "only for OIDC issuers (this issuer has hs256_secret)")
        return
    # Keys fetched over plain http could be swapped by anyone on the path.
    for key in ("issuer", "jwks_uri"):
        url = getattr(issuer, key)
        if url is not None and not is_https_or_loopback(url):
            fail(f"{path}.{key}", "expected an https:// URL (plain http only on loopback hosts)")
    for j, algorithm in enumerate(issuer.algorithms):
        if algorithm not in OIDC_ALGORITHMS:
            fail(
                f"{path}.algorithms[{j}]",
                f"expected one of {', '.join(OIDC_ALGORITHMS)} for an OIDC issuer (never HS* or none), "
                f"got {algorithm!r}",
            )
    for key in ("jwks_cache", "jwks_fetch_timeout"):
        if getattr(issuer, key) <= 0:
            fail(f"{path}.{key}", "expected a duration above zero")


def _validate_identity_roles(identity: IdentityConfig, path: str, fail: Fail) -> None:
    """A fixed `role`, or a `role_claim` naming one of an allowlist of `roles`: never a role
    name taken from a token unchecked."""
    if identity.role_claim is None:
        if identity.roles:
            fail(f"{path}.roles", "only with role_claim (roles lists the roles role_claim may name)")
        if identity.role is None:
            fail(f"{path}.role", "required key is missing (or set role_claim and roles)")
    else:
        if identity.role is not None:
            fail(f"{path}.role", "expected either role or role_claim, not both")
        if not identity.role_claim:
            fail(f"{path}.role_claim", "expected the name of a claim")
        if not identity.roles:
            fail(f"{path}.roles", "expected the roles role_claim may name (an allowlist)")
    key = "role" if identity.role_claim is None else "roles"
    for role in identity.database_roles():
        if not SQL_NAME.match(role):
            fail(f"{path}.{key}", f"expected a plain role name (letters, digits, _ and $), got {role!r}")


def listen_address(text: str) -> tuple[str, int]:
    """`"127.0.0.1:9464"` or `"[::1]:9464"` -> (host, port)."""
    host, _, port = text.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f'expected "host:port" with a TCP port between 1 and 65535, got {text!r}')
    return host, int(port)


def url_has_password(url: str) -> bool:
    parts = urlsplit(url)
    authority = parts.netloc
    in_userinfo = "@" in authority and ":" in authority.rsplit("@", 1)[0]
    # libpq also takes `?password=...` (and a client key's `sslpassword`) from the query string.
    in_query = any(key.lower() in ("password", "sslpassword") for key in parse_qs(parts.query, keep_blank_values=True))
    return in_userinfo or in_query


def url_database(url: str) -> str:
    """The database a postgresql:// URL names ("" when it names none)."""
    return unquote(urlsplit(url).path.lstrip("/"))


def is_https_or_loopback(url: str) -> bool:
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    if parts.scheme == "https":
        return True
    return parts.scheme == "http" and _is_loopback(parts.hostname or "")


def _is_loopback(host: str) -> bool:
    """By the parsed host, so `http://localhost.example.com` and `http://127.evil.dev` are not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _secret_names(config: GatewayConfig) -> list[tuple[str, str]]:
    """(key path, secret name) for every secret the configuration names."""
    named = [
        ("database.password_secret", config.database.password_secret),
        ("database.login_secret", config.database.login_secret),
        ("database.sslkey_secret", config.database.sslkey_secret),
    ]
    if config.credentials is not None:
        named.append(("credentials.admin_password_secret", config.credentials.admin_password_secret))
    named.append(("limits.redis_password_secret", config.limits.redis_password_secret))
    named += [(f"issuers[{i}].hs256_secret", issuer.hs256_secret) for i, issuer in enumerate(config.issuers)]
    return [(path, name) for path, name in named if name is not None]


def missing_secrets(config: GatewayConfig, store: SecretStore) -> list[str]:
    """One message per secret the configuration names that cannot be read."""
    problems = []
    for path, name in _secret_names(config):
        try:
            store.get(name)
        except MissingSecret as error:
            problems.append(f"{config.source}: {path}: {error}")
    return problems


def redacted(config: GatewayConfig, store: SecretStore) -> dict[str, Any]:
    """The resolved configuration as plain data, each secret shown by name and source only."""

    def walk(value: Any, key: str = "") -> Any:
        if dataclasses.is_dataclass(value):
            return {
                f.name: walk(getattr(value, f.name), f.name)
                for f in dataclasses.fields(value)
                if not f.metadata.get("internal")
            }
        if isinstance(value, tuple | list):
            return [walk(item) for item in value]
        if isinstance(value, dict):
            return {k: walk(v) for k, v in value.items()}
        if key.endswith("_secret") and isinstance(value, str):
            return store.describe(value)
        return value

    return walk(config)

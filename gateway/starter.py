"""`gateway init`: a commented starter configuration written from a live database's catalog.

Owns the starter's shape (a dev issuer, one read-only identity over the tables found with
their columns listed, a writer identity left commented out), its dev signing secret, and the
SQL for the roles and grants it assumes. Reading the catalog is `gateway.db.catalog`; the
grants are `gateway.grants`, as `gateway grants plan` computes them.
"""

from __future__ import annotations

import os
import secrets as random_source
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit, urlunsplit

import asyncpg

from gateway.catalog import RelationShape
from gateway.config import SQL_NAME, ConfigError, DatabaseConfig, GatewayConfig, SslMode, parse_config
from gateway.db.catalog import read_catalog
from gateway.db.privileges import read_privileges
from gateway.grants import grants_for_new_role, identities_by_role, plan_role, quoted

DEV_SECRET = "GATEWAY_DEV_SECRET"
DB_PASSWORD_SECRET = "DB_PASSWORD"
SECRETS_DIR = "secrets"
# libpq's names in the URL's query string that become [database] settings; anything else is refused.
URL_TLS_SETTINGS = ("sslmode", "sslrootcert")
DEFAULT_SSLMODE = "prefer"  # libpq's default, when the URL does not say


@dataclass(frozen=True)
class StarterOptions:
    database_url: str  # postgresql://user@host:port/db, without a password
    login: str  # the gateway's own login role
    role: str  # the read-only identity's role
    schemas: tuple[str, ...]  # empty: every schema with relations


def inspection_settings(url: str, password_secret: str | None) -> DatabaseConfig:
    """How `gateway init` connects: the URL without its query, TLS from libpq's parameters in it."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(f"--database: expected postgresql://user@host:port/database, got {url!r}")
    if parts.password:
        raise ConfigError("--database: the URL must not contain a password; use PGPASSWORD or --password-secret")
    query = {name: values[-1] for name, values in parse_qs(parts.query).items()}
    unknown = sorted(set(query) - set(URL_TLS_SETTINGS))
    if unknown:
        raise ConfigError(f"--database: unsupported URL parameters {', '.join(unknown)} (known: sslmode, sslrootcert)")
    if not parts.path.strip("/"):
        raise ConfigError(f"--database: the URL names no database: {url!r}")
    sslmode = query.get("sslmode", DEFAULT_SSLMODE)
    if sslmode not in typing.get_args(SslMode):
        raise ConfigError(f"--database: sslmode={sslmode}: expected one of {', '.join(typing.get_args(SslMode))}")
    return DatabaseConfig(
        url=urlunsplit(parts._replace(query="")),
        password_secret=password_secret,
        sslmode=sslmode,  # type: ignore[arg-type]
        sslrootcert=str(Path(query["sslrootcert"]).resolve()) if "sslrootcert" in query else None,
        check_login_role=False,
    )


def check_role_names(options: StarterOptions) -> None:
    for flag, name in (("--login", options.login), ("--role", options.role)):
        if not SQL_NAME.match(name):
            raise ConfigError(f"{flag}: {name!r} is not a plain role name (letters, digits, _ and $)")
    if options.login == options.role:
        raise ConfigError("--login and --role must differ: the login holds no privileges of its own")


def _relations(shapes: Mapping[str, Mapping[str, RelationShape]], schemas: tuple[str, ...]) -> dict[str, RelationShape]:
    """schema.relation -> shape, for the chosen schemas (every schema outside PostgreSQL's own)."""
    return {
        f"{schema}.{name}": shape
        for schema, relations in sorted(shapes.items())
        if (schema in schemas if schemas else not schema.startswith("pg_"))
        for name, shape in sorted(relations.items())
    }


def _login_url(settings: DatabaseConfig, login: str) -> str:
    parts = urlsplit(settings.url)
    host = f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)
    return urlunsplit(parts._replace(netloc=f"{login}@{host}"))


def starter_text(options: StarterOptions, settings: DatabaseConfig, relations: Mapping[str, RelationShape]) -> str:
    """The configuration, without the SQL (appended once the grants are known)."""
    database = urlsplit(settings.url).path.strip("/")
    tables = "\n".join(
        f'    "{name}",  # {shape.kind}: {", ".join(column.name for column in shape.columns)}'
        for name, shape in relations.items()
    )
    example = next(name for name, shape in relations.items() if shape.kind == "table") if relations else "public.t"
    tls = f'sslrootcert = "{settings.sslrootcert}"\n' if settings.sslrootcert else ""
    verified = settings.sslmode == "verify-full"
    tls_advice = "" if verified else '   # "verify-full" with sslrootcert for a database off this machine'
    return f"""# Starter configuration from `gateway init`, read from database "{database}".
# Every setting, with a comment: wrangler-like-config/gateway.toml in the gateway's repository.
# Check it: gateway config validate --config gateway.toml
# Then, with the roles below created: gateway check --config gateway.toml --database

name = "{database}-gateway"
secrets_dir = "{SECRETS_DIR}"          # a secret NAME is read from the file {SECRETS_DIR}/NAME, else the environment

[database]
url = "{_login_url(settings, options.login)}"   # the gateway's own login; no password here
password_secret = "{DB_PASSWORD_SECRET}"   # its password: the file {SECRETS_DIR}/{DB_PASSWORD_SECRET}, else the env
sslmode = "{settings.sslmode}"{tls_advice}
{tls}
# A shared-secret issuer for trying things out: `gateway token --config gateway.toml --issuer dev
# --sub reader` mints a token. Its secret was generated into {SECRETS_DIR}/{DEV_SECRET}.
# In production, add your platform's OIDC issuer (README: Identities for the tokens platforms issue).
[[issuers]]
name = "dev"
issuer = "edge-sql-gateway-dev"
audience = "edge-sql-gateway"
hs256_secret = "{DEV_SECRET}"

# Read-only access to every relation found, columns listed; remove what callers need not see.
[[identities]]
name = "reader"
issuer = "dev"
match = {{ sub = "reader" }}
role = "{options.role}"
read_only = true
max_rows = 1000
statement_timeout = "5s"

  [[identities.rules]]
  allow = ["select"]
  tables = [
{tables}
  ]

# A writer, left out until you decide what it may change. Its role needs creating and
# granting too: `gateway grants plan --config gateway.toml` prints the statements.
# [[identities]]
# name = "writer"
# issuer = "dev"
# match = {{ sub = "writer" }}
# role = "{database}_writer"
# statement_timeout = "5s"
#
#   [[identities.rules]]
#   allow = ["select", "insert", "update"]
#   tables = ["{example}"]
"""


async def roles_sql(connection: asyncpg.Connection, config: GatewayConfig, options: StarterOptions) -> list[str]:
    """The statements that create the login and the identity role (when missing) and give the
    role what its rules allow, as `gateway grants plan` would."""
    privileges = await read_privileges(connection, [options.login, options.role])
    identities = identities_by_role(config)[options.role]
    statements = []
    if options.login in privileges.missing_roles:
        statements.append(f"CREATE ROLE {quoted(options.login)} LOGIN NOINHERIT")
    if options.role in privileges.missing_roles:
        statements.append(f"CREATE ROLE {quoted(options.role)} NOLOGIN")
        statements += grants_for_new_role(options.role, identities, privileges)
    else:
        statements += plan_role(options.role, identities, privileges).statements
    statements.append(f"GRANT {quoted(options.role)} TO {quoted(options.login)}")
    return statements


def render_sql(statements: list[str], options: StarterOptions) -> str:
    lines = [f"{statement};" for statement in statements]
    lines.append(f"-- then give the login a password: \\password {options.login} (psql), and store it in")
    lines.append(f"-- {SECRETS_DIR}/{DB_PASSWORD_SECRET} beside gateway.toml")
    return "\n".join(lines) + "\n"


async def write_starter(
    connection: asyncpg.Connection, options: StarterOptions, settings: DatabaseConfig, path: Path
) -> str:
    """Write the configuration to `path` (and the dev secret beside it); the roles' SQL is
    appended to it as comments and returned. Raises ConfigError when nothing is found."""
    catalog = await read_catalog(connection, [])
    relations = _relations(catalog.shapes, options.schemas)
    if not relations:
        where = f"schemas {', '.join(options.schemas)}" if options.schemas else "the database"
        raise ConfigError(f"--database: no tables or views in {where}: nothing to start from")
    text = starter_text(options, settings, relations)
    config = parse_config(tomllib.loads(text), source=str(path), base_dir=path.resolve().parent)
    sql = render_sql(await roles_sql(connection, config, options), options)
    commented = "".join(f"#   {line}\n" if line else "#\n" for line in sql.splitlines())
    text += f"\n# The roles and grants this configuration assumes, to run as an admin (printed too):\n{commented}"
    _write_dev_secret(path.parent / SECRETS_DIR)
    path.write_text(text)
    return sql


def _write_dev_secret(folder: Path) -> None:
    """A fresh signing secret, readable by this user only; an existing one is kept (tokens
    already minted stay valid)."""
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    target = folder / DEV_SECRET
    if target.exists():
        return
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(random_source.token_urlsafe(32) + "\n")

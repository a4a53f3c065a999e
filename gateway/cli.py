"""The `gateway` command: serve, dev, init, setup, check, token, config validate, catalog
dump, grants plan and apply, rotate-login, audit verify, --version.

Owns argument parsing and exit codes; each command calls into the package and prints.
Exit codes: 0 success (or "allowed"), 1 denied or failed (`check --database`: also when an
identity role holds more than its rules allow), 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import orjson

from gateway import __version__
from gateway.auth import mint_hs256_token
from gateway.catalog import CatalogError, CatalogSnapshot, absent_rule_tables, dump_snapshot, load_snapshot
from gateway.config import (
    ConfigError,
    GatewayConfig,
    load_config,
    missing_secrets,
    parse_duration,
    redacted,
    url_has_password,
)
from gateway.embedded import EmbeddedPostgresError
from gateway.secrets import MissingSecret, SecretStore

if TYPE_CHECKING:
    import asyncpg

    from gateway.db.pool import Database
    from gateway.db.privileges import DatabasePrivileges

FAILED = 1
USAGE_ERROR = 2


def _fail(message: str) -> int:
    print(f"gateway: {message}", file=sys.stderr)
    return USAGE_ERROR


def _load(args: argparse.Namespace) -> GatewayConfig:
    path = args.config or os.environ.get("GATEWAY_CONFIG")
    if not path:
        raise ConfigError("no configuration: pass --config FILE or set GATEWAY_CONFIG")
    return load_config(path, env=getattr(args, "env", None) or os.environ.get("GATEWAY_ENV") or None)


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


# ---------------------------------------------------------------------------- commands


def cmd_serve(args: argparse.Namespace) -> int:
    config = _load(args)
    problems = missing_secrets(config, config.secret_store())
    if problems:
        return _fail("\n".join(problems))
    from gateway.server import serve

    return serve(
        config,
        host=args.host or config.server.host,
        port=args.port if args.port is not None else config.server.port,
        workers=args.workers or config.server.workers,
        config_path=args.config or os.environ.get("GATEWAY_CONFIG"),
        env=args.env,
    )


def cmd_dev(args: argparse.Namespace) -> int:
    from gateway.dev import run_dev

    return run_dev(port=args.port, reset=args.reset, config_path=Path(args.config) if args.config else None)


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    if args.identity is None:
        if args.sql is not None or args.snapshot or not args.database:
            args.usage_error("--identity NAME is needed to judge a statement; --database alone checks every role")
        privileges = _on_database(_configured_database(config), _privileges_reader(config))
        return _print_privilege_report(config, privileges, config.identity_roles())
    return _check_statement(args, config)


def _check_statement(args: argparse.Namespace, config: GatewayConfig) -> int:
    from gateway.identity import IdentityResolver
    from gateway.policy import PolicyEngine

    identity = IdentityResolver.from_config(config).by_name(args.identity)
    if identity is None:
        known = ", ".join(i.name for i in config.identities) or "none"
        return _fail(f'no identity named "{args.identity}" in {config.source} (identities: {known})')
    privileges = None
    if args.snapshot:
        catalog = load_snapshot(args.snapshot)
    elif args.database:
        catalog, privileges = _on_database(_configured_database(config), _catalog_and_privileges_reader(config))
    else:
        catalog = None
        print(
            "gateway: no catalog snapshot (--snapshot FILE or --database): unqualified tables must be allowed in "
            "every schema of the search path, and functions shadowing built-ins go unnoticed",
            file=sys.stderr,
        )
    sql = args.sql if args.sql is not None else sys.stdin.read()
    _, decision = PolicyEngine(config.policy, catalog).decide(identity, sql)
    if privileges is None:
        _print_json(decision.as_json())
        return 0 if decision.allowed else FAILED
    roles = next(i for i in config.identities if i.name == args.identity).database_roles()
    code = _print_privilege_report(config, privileges, roles, decision.as_json())
    return code if decision.allowed else FAILED


def _print_privilege_report(
    config: GatewayConfig, privileges: DatabasePrivileges, roles: Iterable[str], head: dict | None = None
) -> int:
    """The roles' excess privileges as JSON (after `head`); 1 when any holds more than its rules
    allow, or does not exist; a warning on stderr for each such role some identity may take
    database logins of."""
    from gateway.grants import excess_message, plan_grants

    for warning in absent_rule_tables(config.identities, privileges.relations):
        print(f"gateway: warning: {warning}", file=sys.stderr)
    plans = plan_grants(config, privileges, roles).roles
    _print_json({**(head or {}), "roles": [plan.as_json() for plan in plans]})
    for plan in plans:
        if plan.excess and plan.brokered:  # sessions with issued logins meet only the grants
            print(f"gateway: warning: {excess_message(plan)}", file=sys.stderr)
    return FAILED if any(plan.excess or plan.missing for plan in plans) else 0


class CatalogUnavailable(Exception):
    """The database could not be reached, or its catalog not read."""


Result = TypeVar("Result")


def _configured_database(config: GatewayConfig) -> Database:
    """The configured database, as the gateway's login: reading the catalog needs no privileges."""
    from gateway.db.pool import Database

    return Database(config.database, config.secret_store())


def _on_database(database: Database, work: Callable[[asyncpg.Connection], Awaitable[Result]]) -> Result:
    """`work` on one connection to `database`; a database that cannot be reached (or a password
    that cannot be read) raises CatalogUnavailable."""
    from gateway.db.pool import CONNECTION_ERRORS
    from gateway.errors import GatewayError

    async def run() -> Result:
        try:
            await database.open(size=1)
            async with database.connection() as connection:
                return await work(connection)
        finally:
            await database.close()

    try:
        return asyncio.run(run())
    except (MissingSecret, GatewayError, *CONNECTION_ERRORS) as error:
        raise CatalogUnavailable(f"cannot read the catalog from {database.config.url}: {error}") from None


def _read_catalog(config: GatewayConfig) -> CatalogSnapshot:
    return _on_database(_configured_database(config), _catalog_reader(config))


def _catalog_reader(config: GatewayConfig) -> Callable[[asyncpg.Connection], Awaitable[CatalogSnapshot]]:
    from gateway.db.catalog import read_catalog

    async def read(connection: asyncpg.Connection) -> CatalogSnapshot:
        return await read_catalog(connection, config.identity_roles())

    return read


def _privileges_reader(config: GatewayConfig) -> Callable[[asyncpg.Connection], Awaitable[DatabasePrivileges]]:
    from gateway.db.privileges import read_privileges

    async def read(connection: asyncpg.Connection) -> DatabasePrivileges:
        return await read_privileges(connection, config.identity_roles())

    return read


def _catalog_and_privileges_reader(
    config: GatewayConfig,
) -> Callable[[asyncpg.Connection], Awaitable[tuple[CatalogSnapshot, DatabasePrivileges]]]:
    read_catalog, read_privileges = _catalog_reader(config), _privileges_reader(config)

    async def read(connection: asyncpg.Connection) -> tuple[CatalogSnapshot, DatabasePrivileges]:
        return await read_catalog(connection), await read_privileges(connection)

    return read


def cmd_catalog_dump(args: argparse.Namespace) -> int:
    config = _load(args)
    try:
        snapshot = _read_catalog(config)
    except CatalogUnavailable as error:
        print(f"gateway: {error}", file=sys.stderr)
        return FAILED
    sys.stdout.buffer.write(dump_snapshot(snapshot))
    sys.stdout.flush()
    return 0


# The admin URL of `gateway grants` names the server, database and user; TLS comes from the
# configuration's [database] (the same server the gateway uses), the password from a secret.
TLS_URL_PARAMETERS = ("sslmode", "sslrootcert", "sslcert", "sslkey", "sslpassword")
DEFAULT_PASSWORD_SECRET = "PGPASSWORD"
# How long past max_connection_age rotate-login waits for the previous login's sessions by
# default: an idle connection is swept within a quarter of the age (at most 30 s) after it.
ROTATION_SETTLE = 60.0


def _grants_database(config: GatewayConfig, args: argparse.Namespace) -> Database:
    """`--database URL` as an admin login, else (plan only) the configured database as the
    gateway's login."""
    from gateway.db.admin import admin_login
    from gateway.db.pool import Database

    if args.database is None:
        return _configured_database(config)
    url = args.database
    if not url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"--database: expected a postgresql:// URL, got {url!r}")
    if url_has_password(url):
        raise ConfigError("--database: the URL must not contain a password; use PGPASSWORD or --password-secret")
    if any(name in TLS_URL_PARAMETERS for name in parse_qs(urlsplit(url).query)):
        raise ConfigError("--database: TLS settings come from [database] of the configuration, not from the URL")
    store = config.secret_store()
    secret = args.password_secret
    if secret is None and _is_set(store, DEFAULT_PASSWORD_SECRET):
        secret = DEFAULT_PASSWORD_SECRET
    return Database(admin_login(config.database, url, secret), store)


def _is_set(store: SecretStore, name: str) -> bool:
    try:
        return bool(store.get(name))
    except MissingSecret:
        return False


def cmd_init(args: argparse.Namespace) -> int:
    from gateway.db.pool import Database
    from gateway.secrets import SecretStore
    from gateway.starter import StarterOptions, check_role_names, inspection_settings, write_starter

    options = StarterOptions(args.database, args.login, args.role, tuple(args.schema))
    check_role_names(options)
    store = SecretStore(None)
    secret = args.password_secret or (DEFAULT_PASSWORD_SECRET if _is_set(store, DEFAULT_PASSWORD_SECRET) else None)
    settings = inspection_settings(args.database, secret)
    path = Path(args.output)
    if path.exists() and not args.force:
        return _fail(f"{path} exists; pass --force to replace it, or --output another file")
    try:
        sql = _on_database(Database(settings, store), lambda link: write_starter(link, options, settings, path))
    except CatalogUnavailable as error:
        print(f"gateway: {error}", file=sys.stderr)
        return FAILED
    sys.stdout.write(sql)
    print(
        f"gateway init: wrote {path} and its dev signing secret; run the printed SQL as an admin, then "
        f"`gateway check --config {path} --database`",
        file=sys.stderr,
    )
    return 0


def cmd_grants_plan(args: argparse.Namespace) -> int:
    from gateway.grants import plan_grants

    config = _load(args)
    try:
        privileges = _on_database(_grants_database(config, args), _privileges_reader(config))
    except CatalogUnavailable as error:
        print(f"gateway: {error}", file=sys.stderr)
        return FAILED
    plan = plan_grants(config, privileges)
    sys.stdout.write(plan.render(f"gateway grants plan: the identity roles of {config.source}"))
    return 0


def cmd_grants_apply(args: argparse.Namespace) -> int:
    from gateway.grants import GrantsNotApplied, apply_grants

    config = _load(args)
    database = _grants_database(config, args)
    try:
        plan = _on_database(database, lambda connection: apply_grants(connection, config))
    except (CatalogUnavailable, GrantsNotApplied) as error:
        print(f"gateway: grants not applied, nothing changed: {error}", file=sys.stderr)
        return FAILED
    sys.stdout.write(plan.render(f"gateway grants apply: the identity roles of {config.source}"))
    count = len(plan.statements)
    print(f"-- applied {count} statements in one transaction" if count else "-- nothing to change")
    return 0


def cmd_rotate_login(args: argparse.Namespace) -> int:
    from gateway.db.pool import CONNECTION_ERRORS
    from gateway.db.rotation import RotationFailed, rotate_login

    config = _load(args)
    wait = config.database.max_connection_age + ROTATION_SETTLE
    if args.wait is not None:
        try:
            wait = duration_argument(args.wait)
        except ValueError as error:
            return _fail(f"--wait: expected {error}, got {args.wait!r}")
    try:
        rotation = asyncio.run(rotate_login(config, wait, say=lambda line: print(f"gateway rotate-login: {line}")))
    except (RotationFailed, MissingSecret, *CONNECTION_ERRORS) as error:
        print(f"gateway: rotate-login failed: {error}", file=sys.stderr)
        return FAILED
    return 0 if rotation.dropped else FAILED


def cmd_setup(args: argparse.Namespace) -> int:
    """The gateway's own schema (pending approvals), made with `[credentials] admin_url`."""
    import asyncpg

    from gateway.approvals import setup_store
    from gateway.db.admin import connect_admin
    from gateway.db.pool import CONNECTION_ERRORS

    config = _load(args)
    if config.credentials is None:
        return _fail(f"{config.source}: setup needs a [credentials] section (admin_url: the admin login)")
    credentials = config.credentials
    login = urlsplit(config.database.url).username
    if not login:
        return _fail(f"{config.source}: database.url names no user (the login to grant the approvals table to)")
    schema = config.approvals.schema

    async def run() -> None:
        connection = await connect_admin(config, credentials)
        try:
            await setup_store(connection, schema, login)
        finally:
            await connection.close()

    try:
        asyncio.run(run())
    except (MissingSecret, asyncpg.PostgresError, *CONNECTION_ERRORS) as error:
        print(f"gateway: setup failed, nothing changed: {error}", file=sys.stderr)
        return FAILED
    print(f"gateway setup: {schema}.approvals ready; login {login} may read and write it")
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    config = _load(args)
    issuer = next((i for i in config.issuers if i.name == args.issuer), None)
    if issuer is None:
        known = ", ".join(i.name for i in config.issuers) or "none"
        return _fail(f'no issuer named "{args.issuer}" in {config.source} (issuers: {known})')
    if issuer.hs256_secret is None:
        return _fail(f'issuer "{issuer.name}" has no hs256_secret: only HS256 (dev) issuers can mint tokens')
    try:
        ttl = duration_argument(args.ttl)
    except ValueError as error:
        return _fail(f"--ttl: expected {error}, got {args.ttl!r}")
    if not 1 <= ttl <= issuer.max_token_lifetime:
        return _fail(
            f"--ttl {args.ttl}: the issuer {issuer.name!r} accepts lifetimes from 1s to its "
            f"max_token_lifetime ({issuer.max_token_lifetime:g}s)"
        )
    claims = dict(_claim(item) for item in args.claim)
    try:
        secret = config.secret_store().get(issuer.hs256_secret)
    except MissingSecret as error:
        where = f"issuers[{config.issuers.index(issuer)}].hs256_secret"
        print(f"gateway: {config.source}: {where}: {error}", file=sys.stderr)
        return FAILED
    print(mint_hs256_token(issuer, secret, args.sub, ttl, claims))
    return 0


def duration_argument(text: str) -> float:
    """A duration on the command line, in the configuration's syntax: "90s", "15m", "8h", "1d",
    or a plain number of seconds."""
    try:
        return parse_duration(float(text))
    except ValueError:
        return parse_duration(text)


def _claim(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--claim expects key=value, got {text!r}")
    try:
        return key, orjson.loads(value)
    except orjson.JSONDecodeError:
        return key, value


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from gateway.audit import verify_chain

    try:
        with open(args.file, "rb") as handle:
            count, broken = verify_chain(handle, from_genesis=args.from_genesis)
    except OSError as error:
        return _fail(f"cannot read {args.file}: {error.strerror}")
    if broken is not None:
        print(f"{args.file}:{broken.line}: chain broken: {broken.problem}", file=sys.stderr)
        return 1
    print(f"{args.file}: {count} records, chain intact")
    return 0


def cmd_config_validate(args: argparse.Namespace) -> int:
    config = _load(args)
    store = config.secret_store()
    _print_json(redacted(config, store))
    problems = missing_secrets(config, store)
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return FAILED
    return 0


# ---------------------------------------------------------------------------- parser


def _configuration_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="gateway.toml (default: $GATEWAY_CONFIG)")
    parser.add_argument("--env", help="an [env.NAME] section to apply")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gateway", description="HTTP-to-SQL gateway for PostgreSQL")
    parser.add_argument("--version", action="version", version=f"gateway {__version__}", help="print the version")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    _configuration_arguments(serve)
    serve.add_argument("--host", help="address to listen on (default: [server] host)")
    serve.add_argument("--port", type=int, help="port to listen on (default: [server] port)")
    serve.add_argument("--workers", type=int, help="worker processes (default: [server] workers)")
    serve.set_defaults(handler=cmd_serve)

    dev = commands.add_parser("dev", help="zero-setup demo on an embedded PostgreSQL")
    dev.add_argument("--port", type=int, default=8080, help="port the gateway listens on (default: 8080)")
    dev.add_argument("--reset", action="store_true", help="start over with a new demo database")
    dev.add_argument(
        "--config",
        metavar="FILE",
        help="your own configuration, served against the embedded database (its [database] is replaced)",
    )
    dev.set_defaults(handler=cmd_dev)

    setup = commands.add_parser(
        "setup", help="create the gateway's own schema (pending approvals) with the [credentials] admin login"
    )
    _configuration_arguments(setup)
    setup.set_defaults(handler=cmd_setup)

    check = commands.add_parser(
        "check", help="policy decision for one statement; with --database, the identity roles' excess privileges"
    )
    _configuration_arguments(check)
    check.add_argument("--identity", help="judge a statement for this identity (and check its roles)")
    check.add_argument("--sql", help="the statement to judge (default: read from stdin)")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--snapshot", metavar="FILE", help="catalog snapshot from `gateway catalog dump`")
    source.add_argument(
        "--database",
        action="store_true",
        help="read the catalog from the configured database, and report what identity roles hold beyond their rules",
    )
    check.set_defaults(handler=cmd_check, usage_error=check.error)

    init = commands.add_parser(
        "init", help="write a commented starter configuration from a live database's tables, and print its SQL"
    )
    init.add_argument(
        "--database",
        metavar="URL",
        required=True,
        help="the database to read: postgresql://user@host:port/db[?sslmode=...&sslrootcert=FILE], no password in it",
    )
    init.add_argument(
        "--password-secret",
        metavar="NAME",
        help=f"the password's environment variable (default: {DEFAULT_PASSWORD_SECRET}, when set)",
    )
    init.add_argument("--output", default="gateway.toml", metavar="FILE", help="where to write (default: gateway.toml)")
    init.add_argument("--force", action="store_true", help="replace an existing FILE")
    init.add_argument("--login", default="gateway_login", help="the gateway's login role (default: gateway_login)")
    init.add_argument(
        "--role", default="gateway_reader", help="the read-only identity's role (default: gateway_reader)"
    )
    init.add_argument(
        "--schema", action="append", default=[], help="a schema to include (repeatable; default: every schema)"
    )
    init.set_defaults(handler=cmd_init)

    token = commands.add_parser("token", help="mint a token for an HS256 (dev) issuer")
    _configuration_arguments(token)
    token.add_argument("--issuer", required=True, help="the [[issuers]] name of an issuer with hs256_secret")
    token.add_argument("--sub", required=True, help="the token's subject (sub claim)")
    token.add_argument(
        "--ttl",
        default="15m",
        metavar="DURATION",
        help='lifetime: "90s", "15m", "8h", "1d" or seconds; at most the issuer\'s max_token_lifetime (default: 15m)',
    )
    token.add_argument(
        "--claim",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an extra claim (repeatable); VALUE is read as JSON when it parses, else as a string",
    )
    token.set_defaults(handler=cmd_token)

    config = commands.add_parser("config", help="configuration tools")
    config_commands = config.add_subparsers(dest="config_command", required=True)
    validate = config_commands.add_parser("validate", help="validate and print the resolved configuration")
    _configuration_arguments(validate)
    validate.set_defaults(handler=cmd_config_validate)
    catalog = commands.add_parser("catalog", help="catalog snapshot tools")
    catalog_commands = catalog.add_subparsers(dest="catalog_command", required=True)
    dump = catalog_commands.add_parser("dump", help="print the database's catalog snapshot as JSON")
    _configuration_arguments(dump)
    dump.set_defaults(handler=cmd_catalog_dump)
    grants = commands.add_parser("grants", help="the policy mirrored as GRANT and REVOKE statements")
    grants_commands = grants.add_subparsers(dest="grants_command", required=True)
    plan = grants_commands.add_parser("plan", help="print the statements that give each identity role its rules")
    apply = grants_commands.add_parser("apply", help="run them in one transaction with an admin login")
    for command, handler in ((plan, cmd_grants_plan), (apply, cmd_grants_apply)):
        _configuration_arguments(command)
        command.add_argument(
            "--database",
            metavar="URL",
            required=command is apply,
            help="an admin login: postgresql://user@host:port/db, no password in it"
            + ("" if command is apply else " (default: the configured database, as the gateway's login)"),
        )
        command.add_argument(
            "--password-secret",
            metavar="NAME",
            help=f"the password's secret: environment variable NAME or file secrets_dir/NAME "
            f"(default: {DEFAULT_PASSWORD_SECRET}, when set)",
        )
        command.set_defaults(handler=handler)
    rotate = commands.add_parser(
        "rotate-login", help="move the gateway's database login to a new role, then drop the previous one"
    )
    _configuration_arguments(rotate)
    rotate.add_argument(
        "--wait",
        metavar="DURATION",
        help="how long to wait for the previous login's sessions to end (default: database.max_connection_age + 60s)",
    )
    rotate.set_defaults(handler=cmd_rotate_login)

    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="check an audit file's hash chain")
    verify.add_argument("file", help="the audit file (JSON lines with prev links)")
    verify.add_argument("--from-genesis", action="store_true", help="the chain must start in this file")
    verify.set_defaults(handler=cmd_audit_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, CatalogError, CatalogUnavailable, EmbeddedPostgresError) as error:
        return _fail(str(error))
    except argparse.ArgumentTypeError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

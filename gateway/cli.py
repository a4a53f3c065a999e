"""The `gateway` command: serve, dev, check, token, config validate, catalog dump, audit
verify (SPEC §7).

Owns argument parsing and exit codes; each command calls into the package and prints.
Exit codes: 0 success (or "allowed"), 1 denied or failed, 2 usage or configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

import orjson

from gateway.auth import mint_hs256_token
from gateway.catalog import CatalogError, CatalogSnapshot, dump_snapshot, load_snapshot
from gateway.config import ConfigError, GatewayConfig, load_config, missing_secrets, parse_duration, redacted
from gateway.secrets import MissingSecret

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

    return run_dev(port=args.port, reset=args.reset)


def cmd_check(args: argparse.Namespace) -> int:
    from gateway.identity import IdentityResolver
    from gateway.policy import PolicyEngine

    config = _load(args)
    identity = IdentityResolver.from_config(config).by_name(args.identity)
    if identity is None:
        return _fail(f'no identity named "{args.identity}" in {config.source}')
    if args.snapshot:
        catalog = load_snapshot(args.snapshot)
    elif args.database:
        catalog = _read_catalog(config)
    else:
        catalog = None
        print(
            "gateway: no catalog snapshot (--snapshot FILE or --database): unqualified tables must be allowed in "
            "every schema of the search path, and functions shadowing built-ins go unnoticed",
            file=sys.stderr,
        )
    sql = args.sql if args.sql is not None else sys.stdin.read()
    _, decision = PolicyEngine(config.policy, catalog).decide(identity, sql)
    _print_json(decision.as_json())
    return 0 if decision.allowed else 1


class CatalogUnavailable(Exception):
    """The catalog snapshot could not be read from the database."""


def _read_catalog(config: GatewayConfig) -> CatalogSnapshot:
    from gateway.db.catalog import read_catalog
    from gateway.db.pool import CONNECTION_ERRORS, Database
    from gateway.errors import GatewayError

    async def read() -> CatalogSnapshot:
        database = Database(config.database, config.secret_store())
        try:
            await database.open(size=1)
            async with database.connection() as connection:
                return await read_catalog(connection, config.identity_roles())
        finally:
            await database.close()

    try:
        return asyncio.run(read())
    except (MissingSecret, GatewayError, *CONNECTION_ERRORS) as error:
        raise CatalogUnavailable(f"cannot read the catalog from {config.database.url}: {error}") from None


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


def cmd_token(args: argparse.Namespace) -> int:
    config = _load(args)
    issuer = next((i for i in config.issuers if i.name == args.issuer), None)
    if issuer is None:
        return _fail(f'no issuer named "{args.issuer}" in {config.source}')
    if issuer.hs256_secret is None:
        return _fail(f'issuer "{issuer.name}" has no hs256_secret: only HS256 (dev) issuers can mint tokens')
    try:
        ttl = parse_duration(args.ttl)
    except ValueError as error:
        return _fail(f"--ttl: expected {error}, got {args.ttl!r}")
    claims = dict(_claim(item) for item in args.claim)
    try:
        secret = config.secret_store().get(issuer.hs256_secret)
    except MissingSecret as error:
        where = f"issuers[{config.issuers.index(issuer)}].hs256_secret"
        print(f"gateway: {config.source}: {where}: {error}", file=sys.stderr)
        return FAILED
    print(mint_hs256_token(issuer, secret, args.sub, ttl, claims))
    return 0


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
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser("serve", help="run the gateway")
    _configuration_arguments(serve)
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int)
    serve.set_defaults(handler=cmd_serve)

    dev = commands.add_parser("dev", help="zero-setup demo on an embedded PostgreSQL")
    dev.add_argument("--port", type=int, default=8080)
    dev.add_argument("--reset", action="store_true", help="start over with a new demo database")
    dev.set_defaults(handler=cmd_dev)

    check = commands.add_parser("check", help="policy decision for one statement")
    _configuration_arguments(check)
    check.add_argument("--identity", required=True)
    check.add_argument("--sql")
    source = check.add_mutually_exclusive_group()
    source.add_argument("--snapshot", metavar="FILE", help="catalog snapshot from `gateway catalog dump`")
    source.add_argument("--database", action="store_true", help="read the catalog from the configured database")
    check.set_defaults(handler=cmd_check)

    token = commands.add_parser("token", help="mint a token for an HS256 (dev) issuer")
    _configuration_arguments(token)
    token.add_argument("--issuer", required=True)
    token.add_argument("--sub", required=True)
    token.add_argument("--ttl", default="15m")
    token.add_argument("--claim", action="append", default=[], metavar="KEY=VALUE")
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
    audit = commands.add_parser("audit", help="audit log tools")
    audit_commands = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_commands.add_parser("verify", help="check an audit file's hash chain")
    verify.add_argument("file")
    verify.add_argument("--from-genesis", action="store_true", help="the chain must start in this file")
    verify.set_defaults(handler=cmd_audit_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except (ConfigError, CatalogError, CatalogUnavailable) as error:
        return _fail(str(error))
    except argparse.ArgumentTypeError as error:
        return _fail(str(error))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

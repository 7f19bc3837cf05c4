"""`recomamp snowflake …`: each user's Snowflake configuration (secrets encrypted at rest)."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import TYPE_CHECKING, Any

from recomamp.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_command,
    add_noun,
    async_handler,
    bounded_int,
    database,
    read_secret,
)
from recomamp.cli.output import fields, print_json

if TYPE_CHECKING:
    from recomamp.config import Config


async def _set(connection: Any, config: Config, user_id: int, args: argparse.Namespace) -> int:
    """`snowflake set`: the secrets read and the private key checked before anything is saved."""
    from recomamp.domain.identifiers import validate_identifier
    from recomamp.services import snowflake_configs
    from recomamp.services.snowflake_configs import SnowflakeConfigInput
    from recomamp.snowflake.connection import BadPrivateKey, private_key_der

    validate_identifier(args.database, "database")
    validate_identifier(args.schema, "schema")
    if (args.password_file is None) == (args.private_key_file is None):
        raise UsageError("auth: give exactly one of --password-file and --private-key-file")
    password = read_secret(args.password_file, "password", "--password-file") if args.password_file else None
    pem = read_secret(args.private_key_file, "private key", "--private-key-file") if args.private_key_file else None
    passphrase = read_secret(args.passphrase_file, "passphrase", "--passphrase-file") if args.passphrase_file else None
    if pem is not None:
        try:
            private_key_der(pem, passphrase)
        except BadPrivateKey as exc:
            raise UsageError(f"--private-key-file: {exc}") from None
    await snowflake_configs.save(
        connection,
        config,
        user_id,
        SnowflakeConfigInput(
            account=args.account,
            username=args.login,
            database=args.database,
            default_schema=args.schema,
            warehouse=args.warehouse,
            role=args.role,
            password=password,
            private_key_pem=pem,
            private_key_passphrase=passphrase,
            host=args.host,
            port=args.port,
            protocol=args.protocol,
        ),
    )
    if args.json:
        print_json({"email": args.email, "saved": True})
    else:
        print(f"Snowflake configuration saved for {args.email}; check it with `recomamp snowflake test {args.email}`")
    return EXIT_OK


@async_handler
async def cmd_snowflake(args: argparse.Namespace) -> int:
    from recomamp.services import snowflake_configs
    from recomamp.services.users import user_id as user_id_of
    from recomamp.snowflake.connection import server_version

    async with database(args) as (config, connection):
        user_id = await user_id_of(connection, args.email)
        if args.snowflake_command == "set":
            return await _set(connection, config, user_id, args)
        row = await snowflake_configs.stored(connection, user_id)
        if row is None:
            raise UsageError(
                f"snowflake: {args.email} has no Snowflake configuration; add one with `recomamp snowflake set`"
            )
        if args.snowflake_command == "show":
            shown = snowflake_configs.shown(row)
            if args.json:
                print_json(shown)
            else:
                print("\n".join(fields(shown, indent="")))
            return EXIT_OK
        spec = snowflake_configs.connection_spec(row, config)
    try:
        version = await asyncio.to_thread(server_version, spec, config.snowflake)
    except Exception as exc:  # any connector failure, as one line, classified
        from recomamp.snowflake.errors import classify

        message = classify(exc).message
        if args.json:
            print_json({"email": args.email, "connected": False, "error": message})
        print(f"snowflake test failed: {message}", file=sys.stderr)
        return EXIT_FAILURE
    if args.json:
        print_json(
            {"email": args.email, "connected": True, "login": spec.user, "auth": spec.auth_method, "version": version}
        )
    else:
        print(f"connected to Snowflake as {spec.user} ({spec.auth_method}); server version {version}")
    return EXIT_OK


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    actions = add_noun(commands, "snowflake", "users' Snowflake configurations", common, "snowflake_command")
    sf_set = add_command(actions, "set", "set a user's Snowflake configuration", cmd_snowflake, common)
    sf_set.add_argument("email", help="the recomamp user whose results load there")
    sf_set.add_argument("--account", required=True, help="the Snowflake account identifier, e.g. xy12345.eu-west-1")
    # --login, not --user: everywhere else --user is a recomamp user's email. --user still works here.
    sf_set.add_argument(
        "--login", "--user", dest="login", required=True, metavar="NAME", help="the Snowflake login recomamp loads as"
    )
    sf_set.add_argument("--database", required=True, help="the Snowflake database the tables go in")
    sf_set.add_argument("--schema", default="PUBLIC", help="the default schema (default PUBLIC)")
    sf_set.add_argument("--warehouse", help="the warehouse (default: the login's default)")
    sf_set.add_argument("--role", help="the role (default: the login's default)")
    sf_set.add_argument("--password-file", metavar="PATH", help="password auth: a file holding it ('-': stdin)")
    sf_set.add_argument("--private-key-file", metavar="PATH", help="key-pair auth: a PEM private key file")
    sf_set.add_argument("--passphrase-file", metavar="PATH", help="the private key's passphrase, if encrypted")
    sf_set.add_argument("--host", help="another host (a proxy, or a local emulator)")
    sf_set.add_argument("--port", type=bounded_int(1, 65535), help="with --host (default 443)")
    sf_set.add_argument("--protocol", choices=["http", "https"], help="with --host (default https; http: an emulator)")
    add_command(actions, "show", "show a user's configuration, secrets masked", cmd_snowflake, common).add_argument(
        "email", help="the recomamp user"
    )
    add_command(actions, "test", "connect, and report the server version", cmd_snowflake, common).add_argument(
        "email", help="the recomamp user"
    )

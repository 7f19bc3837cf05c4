"""`check-config`, `keygen`, `migrate`, `keys rotate`: setting up and maintaining an installation."""

from __future__ import annotations

import argparse
import sys

from recomamp.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    EXIT_OK,
    add_command,
    add_noun,
    async_handler,
    bounded_int,
    config_path,
    database,
)
from recomamp.cli.output import print_json
from recomamp.config import ConfigError, load_config


def cmd_example_config(args: argparse.Namespace) -> int:
    """The example config shipped in the package: every key, documented (a wheel has no source tree)."""
    from importlib.resources import files

    sys.stdout.write(files("recomamp").joinpath("example.toml").read_text(encoding="utf-8"))
    return EXIT_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    path = Path(args.path) if args.path else config_path(args)
    try:
        load_config(path)
    except ConfigError as exc:
        if args.json:
            print_json({"path": path, "ok": False, "problems": exc.problems})
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if args.json:
        print_json({"path": path, "ok": True, "problems": []})
    else:
        print(f"{path}: OK")
    return EXIT_OK


def cmd_keygen(args: argparse.Namespace) -> int:
    from recomamp.crypto import generate_key

    # The key goes to stdout only, to be redirected into a file readable by the service alone.
    if args.json:
        print_json({"key": generate_key()})
    else:
        print(generate_key())
    return EXIT_OK


@async_handler
async def cmd_migrate(args: argparse.Namespace) -> int:
    from recomamp.services import schema

    async with database(args) as (_, connection):
        if args.migrate_command == "up":
            applied = await schema.migrate_up(connection, to=args.to)
            if args.json:
                print_json({"applied": applied})
            else:
                print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
        elif args.migrate_command == "down":
            rolled = await schema.migrate_down(connection, to=args.to)
            if args.json:
                print_json({"rolled_back": rolled})
            else:
                print(f"rolled back {len(rolled)} migration(s)" + (f": {rolled}" if rolled else ""))
        else:
            states = await schema.status(connection)
            if args.json:
                print_json([state.__dict__ for state in states])
            else:
                for state in states:
                    mark = "CHANGED" if state.changed else ("applied" if state.applied_at else "pending")
                    when = state.applied_at.isoformat() if state.applied_at else ""
                    print(f"{state.version:04d}  {state.name:<40} {mark:<8} {when}")
            if any(state.changed for state in states):
                return EXIT_FAILURE
    return EXIT_OK


@async_handler
async def cmd_keys_rotate(args: argparse.Namespace) -> int:
    from recomamp.crypto import SecretBox
    from recomamp.services.keys import rotate

    async with database(args) as (config, connection):
        report = await rotate(connection, SecretBox(config.security.token_keys))
    if args.json:
        print_json(report.as_dict())
    else:
        for line in report.lines():
            print(line)
    return EXIT_OK if report.unreadable == 0 else EXIT_FAILURE


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    check = add_command(
        commands, "check-config", "validate a config file; exit 2 on problems", cmd_check_config, common
    )
    check.add_argument(
        "path", nargs="?", help="the file to check (default: --config, $RECOMAMP_CONFIG, the default path)"
    )
    add_command(commands, "keygen", "print a new token encryption key", cmd_keygen, common)
    add_command(
        commands,
        "example-config",
        "print the example config, every key documented (recomamp example-config > recomamp.toml)",
        cmd_example_config,
        common,
        json_output=False,
    )

    actions = add_noun(commands, "migrate", "apply or roll back the database schema", common, "migrate_command")
    add_command(actions, "up", "apply pending migrations", cmd_migrate, common).add_argument(
        "--to", type=bounded_int(1, 9999), metavar="N", help="stop at version N"
    )
    add_command(actions, "down", "roll back to version N (0: everything)", cmd_migrate, common).add_argument(
        "--to", type=bounded_int(0, 9999), metavar="N", required=True, help="roll back to version N"
    )
    add_command(actions, "status", "list migrations", cmd_migrate, common)

    key_actions = add_noun(commands, "keys", "token encryption keys", common, "keys_command")
    add_command(
        key_actions,
        "rotate",
        "re-encrypt every stored secret with the first key, and report counts",
        cmd_keys_rotate,
        common,
    )

"""The `recomamp` command. Exit codes: 0 success, 1 failure, 2 bad input (config, flags, values)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from recomamp.config import DEFAULT_CONFIG_PATH, Config, ConfigError, load_config
from recomamp.logs import configure_logging

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2


class UsageError(Exception):
    """Bad input from the person at the shell: one line that names the field and what is allowed."""


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2, default=str))


def _load(args: argparse.Namespace) -> Config:
    return load_config(Path(args.config))


# --- check-config, keygen --------------------------------------------------------------------------


def cmd_check_config(args: argparse.Namespace) -> int:
    path = Path(args.path or args.config)
    try:
        load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"{path}: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    print(f"{path}: OK")
    return EXIT_OK


def cmd_keygen(_: argparse.Namespace) -> int:
    from recomamp.crypto import generate_key

    # The key goes to stdout only, to be redirected into a file readable by the service alone.
    print(generate_key())
    return EXIT_OK


# --- migrate ----------------------------------------------------------------------------------------


async def _migrate(args: argparse.Namespace) -> int:
    from recomamp.store import migrations
    from recomamp.store.db import connect

    config = _load(args)
    async with connect(config.database) as connection:
        if args.migrate_command == "up":
            applied = await migrations.migrate_up(connection, to=args.to)
            print(f"applied {len(applied)} migration(s)" + (f": {applied}" if applied else ""))
        elif args.migrate_command == "down":
            if args.to is None:
                raise UsageError("migrate down: --to N is required (0 rolls back everything)")
            rolled = await migrations.migrate_down(connection, to=args.to)
            print(f"rolled back {len(rolled)} migration(s)" + (f": {rolled}" if rolled else ""))
        else:
            states = await migrations.status(connection)
            if args.json:
                _print_json([state.__dict__ for state in states])
            else:
                for state in states:
                    mark = "CHANGED" if state.changed else ("applied" if state.applied_at else "pending")
                    when = state.applied_at.isoformat() if state.applied_at else ""
                    print(f"{state.version:04d}  {state.name:<40} {mark:<8} {when}")
            if any(state.changed for state in states):
                return EXIT_FAILURE
    return EXIT_OK


def _async(handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(handler(args))

    return run


# --- the parser ---------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not overwrite a --config given before the subcommand.
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"the TOML config file (default {DEFAULT_CONFIG_PATH})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output, for scripts"
    )

    parser = argparse.ArgumentParser(
        prog="recomamp",
        description="Runs Amazon Marketing Cloud workflows on schedules and loads the results into Snowflake.",
        parents=[common],
    )
    parser.set_defaults(config=str(DEFAULT_CONFIG_PATH), json=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    check = commands.add_parser("check-config", parents=[common], help="validate a config file; exit 2 on problems")
    check.add_argument("path", nargs="?", help="the file to check (default: --config)")
    check.set_defaults(handler=cmd_check_config)

    keygen = commands.add_parser("keygen", parents=[common], help="print a new token encryption key")
    keygen.set_defaults(handler=cmd_keygen)

    migrate = commands.add_parser("migrate", parents=[common], help="apply or roll back the database schema")
    migrate_commands = migrate.add_subparsers(dest="migrate_command", required=True, metavar="ACTION")
    for action, text in (("up", "apply pending migrations"), ("down", "roll back"), ("status", "list migrations")):
        sub = migrate_commands.add_parser(action, parents=[common], help=text)
        if action != "status":
            sub.add_argument("--to", type=int, metavar="N", help="stop at version N")
        sub.set_defaults(handler=_async(_migrate))

    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging("warning", stream=sys.stderr)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        return 130
    return code

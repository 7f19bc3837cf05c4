"""The parser, assembled from one module per noun, and the one place errors become exit codes.

No traceback reaches a person: bad input is one line and exit 2 (nothing written); a database that does
not answer is one line naming where it was looked for (never the password) and exit 1; anything else is
one line and exit 1 (set RECOMAMP_DEBUG=1 for the traceback).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from collections.abc import Sequence

from recomamp import __version__
from recomamp.cli import daemon, fleet, instances, notify, runs, sandbox, schedules, setup, snowflake, status, users
from recomamp.cli.common import (
    CONFIG_ENV,
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    DatabaseUnreachable,
    Parser,
    UsageError,
)
from recomamp.config import DEFAULT_CONFIG_PATH, ConfigError
from recomamp.logs import configure_logging

NOUNS = (setup, daemon, status, users, instances, snowflake, schedules, runs, notify, sandbox, fleet)


GLOBAL_OPTIONS = ("config", "json", "wide")


def _global_options(parser: argparse.ArgumentParser, *, prefix: str = "") -> None:
    """--config, --json, --wide. Before the subcommand they land in `global_*`, after it in the plain
    names; SUPPRESS keeps a subcommand's parser from writing a default over a value given before it
    (argparse copies a subparser's whole namespace back onto the parent's)."""
    parser.add_argument(
        "--config",
        dest=f"{prefix}config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"the TOML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    parser.add_argument(
        "--json",
        dest=f"{prefix}json",
        action="store_true",
        default=argparse.SUPPRESS,
        help="machine-readable output, for scripts",
    )
    parser.add_argument(
        "--wide",
        dest=f"{prefix}wide",
        action="store_true",
        default=argparse.SUPPRESS,
        help="tables at their full width (default: they fit the terminal, at most 120 columns)",
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    _global_options(common)
    parser = Parser(
        prog="recomamp",
        description="Runs Amazon Marketing Cloud workflows on schedules and loads the results into Snowflake.",
        epilog="--config, --json and --wide may come before or after the command.",
    )
    _global_options(parser, prefix="global_")
    parser.add_argument("--version", action="version", version=f"recomamp {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)
    for noun in NOUNS:
        noun.register(commands, common)
    return parser


def parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse, with the global options merged from either position. An argument no parser knows is
    refused by the subcommand it was given to, so the line points at that subcommand's help."""
    args, extras = parser.parse_known_args(argv)
    command_parser: argparse.ArgumentParser = getattr(args, "command_parser", parser)
    if extras:
        command_parser.error(unrecognized(command_parser, extras))
    for name in GLOBAL_OPTIONS:
        before = getattr(args, f"global_{name}", None)
        after = getattr(args, name, None)
        if name == "config" and before is not None and after is not None and before != after:
            command_parser.error(f"--config given twice, {before} and {after}: give it once")
        setattr(args, name, after if after is not None else before)
        if hasattr(args, f"global_{name}"):
            delattr(args, f"global_{name}")
    args.json = bool(args.json)
    args.wide = bool(args.wide)
    if args.json and not getattr(args, "json_output", True):
        command_parser.error("--json: this command has no machine-readable output; run it without --json")
    return args


def unrecognized(parser: argparse.ArgumentParser, extras: list[str]) -> str:
    import difflib

    message = f"unrecognized arguments: {' '.join(extras)}"
    known = [option for action in parser._actions for option in action.option_strings]
    flag = next((extra.split("=")[0] for extra in extras if extra.startswith("--")), None)
    close = difflib.get_close_matches(flag, known, n=1) if flag else []
    return message + (f"; did you mean {close[0]}?" if close else "")


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parse(parser, argv)
    except SystemExit as exc:  # --help, --version, or one line about a bad argument (Parser.error)
        return exc.code if isinstance(exc.code, int) else EXIT_FAILURE
    # An interactive command prints its own answer; library chatter (connector retries) stays out of it.
    # `run` and `runs retry-upload` reconfigure logging from the config file.
    configure_logging("error", stream=sys.stderr)
    try:
        code: int = args.handler(args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(f"config: {problem}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (UsageError, ValueError, LookupError) as exc:
        # Bad input (a ValueError from validation, a LookupError for an unknown user, instance,
        # schedule or run): one line that names the field and what is allowed. Nothing was written.
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except DatabaseUnreachable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        if os.environ.get("RECOMAMP_DEBUG"):
            traceback.print_exc()
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return code

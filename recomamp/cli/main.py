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
from recomamp.cli import daemon, instances, notify, runs, sandbox, schedules, setup, snowflake, status, users
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

NOUNS = (setup, daemon, status, users, instances, snowflake, schedules, runs, notify, sandbox)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: a subcommand's parser must not overwrite a --config given before the subcommand.
    common.add_argument(
        "--config",
        default=argparse.SUPPRESS,
        metavar="PATH",
        help=f"the TOML config file (default: ${CONFIG_ENV}, else {DEFAULT_CONFIG_PATH})",
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output, for scripts"
    )
    parser = Parser(
        prog="recomamp",
        description="Runs Amazon Marketing Cloud workflows on schedules and loads the results into Snowflake.",
        parents=[common],
    )
    parser.add_argument("--version", action="version", version=f"recomamp {__version__}")
    parser.set_defaults(config=None, json=False)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for noun in NOUNS:
        noun.register(commands, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
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

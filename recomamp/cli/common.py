"""What every command shares: exit codes, one-line errors, the config, the database, files, parsing.

Output (JSON, tables, fields) is recomamp.cli.output."""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any, NoReturn

from pydantic import ValidationError

from recomamp.cli.output import print_json as print_json  # re-exported: the commands' JSON goes through output
from recomamp.config import DEFAULT_CONFIG_PATH, Config, load_config
from recomamp.services.errors import DatabaseUnreachable as DatabaseUnreachable  # re-exported: main() maps it to 1

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_BAD_INPUT = 2
EXIT_NEEDS_ATTENTION = 1  # `recomamp status`: something needs a person

CONFIG_ENV = "RECOMAMP_CONFIG"

Handler = Callable[[argparse.Namespace], int]


class UsageError(Exception):
    """Bad input from the person at the shell: one line that names the field and what is allowed."""


class Parser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line on stderr (exit 2), not a usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def config_path(args: argparse.Namespace) -> Path:
    """--config, else $RECOMAMP_CONFIG, else /etc/recomamp/recomamp.toml."""
    explicit = getattr(args, "config", None)
    if explicit:
        return Path(explicit)
    from_env = os.environ.get(CONFIG_ENV)
    return Path(from_env) if from_env else DEFAULT_CONFIG_PATH


def load(args: argparse.Namespace) -> Config:
    return load_config(config_path(args))


def async_handler(handler: Callable[[argparse.Namespace], Coroutine[Any, Any, int]]) -> Handler:
    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        return asyncio.run(handler(args))

    return run


@asynccontextmanager
async def database(args: argparse.Namespace) -> AsyncIterator[tuple[Config, Any]]:
    """(config, a connection). A connection that cannot be made is DatabaseUnreachable, naming the host."""
    from recomamp.services.database import connection

    config = load(args)
    async with connection(config) as opened:
        yield config, opened


def read_file(path: str, flag: str) -> str:
    """A file the person named: a path that does not exist or cannot be read is bad input, naming the flag."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"{flag}: {path} does not exist") from None
    except IsADirectoryError:
        raise UsageError(f"{flag}: {path} is a directory, not a file") from None
    except PermissionError:
        raise UsageError(f"{flag}: {path} is not readable by this user") from None
    except UnicodeDecodeError:
        raise UsageError(f"{flag}: {path} is not UTF-8 text") from None
    except OSError as exc:
        raise UsageError(f"{flag}: cannot read {path}: {exc.strerror or exc}") from None


def read_secret(path: str | None, what: str, flag: str) -> str:
    """A secret from a file, or from stdin when the path is '-' or missing. Never from an argument."""
    if path and path != "-":
        text = read_file(path, flag)
    else:
        if sys.stdin.isatty():
            print(f"paste the {what}, then press Ctrl-D:", file=sys.stderr)
        text = sys.stdin.read()
    text = text.strip()
    if not text:
        raise UsageError(f"{flag}: the {what} is empty")
    return text


def bounded_int(low: int, high: int, why: str = "") -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(
                f"{value} is out of range; use {low} to {high}{f' ({why})' if why else ''}"
            )
        return value

    parse.__name__ = "number"
    return parse


def iso_date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date; use YYYY-MM-DD") from None


def validation_line(exc: ValidationError, flags: dict[str, str] | None = None) -> str:
    """The first problem, named by the flag the person typed (`--time`, not `time_of_day`)."""
    error = exc.errors(include_url=False)[0]
    field = ".".join(str(part) for part in error["loc"])
    message = str(error["msg"]).removeprefix("Value error, ")
    flag = (flags or {}).get(field.split(".")[0])
    if flag is not None:
        # A message that starts with the model's own field name ("cron_expression: …") is renamed.
        for prefix in (f"{field}: ", f"{field.split('.')[0]}: "):
            message = message.removeprefix(prefix)
        if error["type"] == "missing":
            message = "required"
        return f"{flag}: {message}"
    if not field or message.split(":")[0].strip() in field.split(".") or message.startswith(field):
        return message
    return f"{field}: {message}"


def now() -> datetime:
    return datetime.now(UTC)


def add_command(
    group: Any,
    name: str,
    text: str,
    handler: Handler,
    common: argparse.ArgumentParser,
    *,
    json_output: bool = True,
) -> argparse.ArgumentParser:
    """A subcommand with the global options. `json_output=False`: --json is refused, never ignored."""
    sub: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=text, description=text)
    sub.set_defaults(handler=handler, command_parser=sub, json_output=json_output)
    return sub


def add_noun(group: Any, name: str, text: str, common: argparse.ArgumentParser, dest: str) -> Any:
    """A noun (`runs`, `schedules`…) and its actions; an error in the noun names the noun's help."""
    noun: argparse.ArgumentParser = group.add_parser(name, parents=[common], help=text, description=text)
    noun.set_defaults(command_parser=noun)
    return noun.add_subparsers(dest=dest, required=True, metavar="ACTION")

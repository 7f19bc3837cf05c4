"""`recomamp run`: the daemon (systemd starts this)."""

from __future__ import annotations

import argparse
import asyncio
import sys

from recomamp.cli.common import EXIT_FAILURE, add_command, config_path, load


def cmd_run(args: argparse.Namespace) -> int:
    from recomamp.daemon.process import Daemon, DaemonError
    from recomamp.logs import configure_logging, get_logger

    config = load(args)
    configure_logging(config.logging.level)
    try:
        return asyncio.run(Daemon(config, config_path=config_path(args), once=args.once).run())
    except DaemonError as exc:
        get_logger("recomamp").error("daemon_cannot_start", reason=str(exc))
        if sys.stderr.isatty():  # under journald the JSON line above is the one line
            print(f"recomamp: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    run = add_command(commands, "run", "run the daemon (systemd starts this)", cmd_run, common)
    run.add_argument(
        "--once", action="store_true", help="run what is due now to the end, then exit: 0 if all succeeded"
    )

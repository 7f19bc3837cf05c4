"""`recomamp run`: the daemon (systemd starts this); `recomamp reload`: ask it to swap its config."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

from recomamp.cli.common import CONFIG_ENV, EXIT_BAD_INPUT, EXIT_FAILURE, EXIT_OK, add_command, config_path, load


def cmd_run(args: argparse.Namespace) -> int:
    from recomamp.logs import configure_logging, get_logger
    from recomamp.wiring import DaemonError, daemon

    config = load(args)
    configure_logging(config.logging.level)
    try:
        return asyncio.run(daemon(config, config_path=config_path(args), once=args.once).run())
    except DaemonError as exc:
        get_logger("recomamp").error("daemon_cannot_start", reason=str(exc))
        if sys.stderr.isatty():  # under journald the JSON line above is the one line
            print(f"recomamp: {exc}", file=sys.stderr)
        return exc.exit_code  # 78 when a start-up check failed: the unit does not restart it


RELOAD_TIMEOUT_SECONDS = 60.0
DEFAULT_SOCKET = "/run/recomamp/control.sock"


def control_socket(args: argparse.Namespace) -> Path:
    """--socket, else systemd's RuntimeDirectory (set for ExecReload=), else the [daemon] control_socket of a
    config named by --config or $RECOMAMP_CONFIG (a standalone sandbox), else the unit's default. Under
    systemd the config is not read: ExecReload= gets no credentials on systemd 252, and the daemon checks its
    config itself."""
    if args.socket:
        return Path(args.socket)
    runtime = os.environ.get("RUNTIME_DIRECTORY")
    if runtime:
        return Path(runtime.split(":")[0]) / "control.sock"
    if getattr(args, "config", None) or os.environ.get(CONFIG_ENV):
        return Path(load(args).daemon.control_socket)
    return Path(DEFAULT_SOCKET)


async def ask_daemon(path: Path, request: dict[str, Any]) -> dict[str, Any]:
    async with asyncio.timeout(RELOAD_TIMEOUT_SECONDS):
        reader, writer = await asyncio.open_unix_connection(str(path))
        try:
            writer.write(json.dumps(request).encode() + b"\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    answer = json.loads(line) if line else {}
    if not isinstance(answer, dict):
        raise ValueError("the daemon's answer is not a JSON object")
    return answer


def cmd_reload(args: argparse.Namespace) -> int:
    path = control_socket(args)
    try:
        answer = asyncio.run(ask_daemon(path, {"command": "reload"}))
    except (FileNotFoundError, ConnectionRefusedError):
        where = (
            "is `recomamp standalone` (or `recomamp run`) still up?"
            if getattr(args, "config", None) or os.environ.get(CONFIG_ENV)
            else "is recomamp running (`systemctl status recomamp`)?"
        )
        print(
            f"recomamp reload: no daemon listens on {path}: {where} "
            "Give the socket with --socket, or send SIGHUP by hand.",
            file=sys.stderr,
        )
        return EXIT_FAILURE
    except PermissionError:
        print(f"recomamp reload: no permission to open {path}: run it as root or as the service user", file=sys.stderr)
        return EXIT_BAD_INPUT
    except (OSError, TimeoutError, ValueError) as exc:
        print(f"recomamp reload: the daemon on {path} did not answer ({type(exc).__name__}: {exc})", file=sys.stderr)
        return EXIT_FAILURE
    if answer.get("applied"):
        changed = answer.get("changed_keys") or []
        print("reloaded: " + (", ".join(changed) if changed else "no key changed"))
        if answer.get("needs_restart"):
            print("needs `systemctl restart recomamp` to take effect: " + ", ".join(answer["needs_restart"]))
        return EXIT_OK
    print("recomamp reload: refused; the running config stays in force:", file=sys.stderr)
    for problem in answer.get("problems") or ["the daemon gave no reason"]:
        print(f"  - {problem}", file=sys.stderr)
    return EXIT_FAILURE


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    run = add_command(commands, "run", "run the daemon (systemd starts this)", cmd_run, common, json_output=False)
    run.add_argument(
        "--once", action="store_true", help="run what is due now to the end, then exit: 0 if all succeeded"
    )
    reload = commands.add_parser(
        "reload",
        parents=[common],
        help="ask the running daemon to check and swap its config (systemctl reload runs this)",
        description="Ask the running daemon, over its control socket, to check its config file and swap to it. "
        "Exit 0 when applied; 1 with the problems when refused (the running config stays). Under systemd the "
        "socket is found without the config; elsewhere --config (or $RECOMAMP_CONFIG) names it.",
    )
    reload.add_argument(
        "--socket", help=f"the daemon's control socket (default: $RUNTIME_DIRECTORY or {DEFAULT_SOCKET})"
    )
    reload.set_defaults(handler=cmd_reload, command_parser=reload, json_output=False)

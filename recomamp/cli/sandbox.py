"""`recomamp sandbox` (the AMC/LWA simulator) and `recomamp demo` (the whole pipeline, once)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from pathlib import Path
from typing import Any

from recomamp.cli.common import EXIT_OK, add_command, bounded_int
from recomamp.cli.output import Column, table


def cmd_sandbox(args: argparse.Namespace) -> int:
    from recomamp.sandbox.simulator import AmcSimulator, InstanceProfile

    async def serve() -> None:
        simulator = AmcSimulator(
            default_profile=InstanceProfile(
                rows=args.rows, files=args.files, pending_seconds=args.pending, running_seconds=args.running
            )
        )
        url = await simulator.start(args.host, args.port)
        print(f"AMC/LWA simulator on {url}")
        print(f"  token_url     = {simulator.token_url}")
        print(f"  consent_url   = {simulator.consent_url}")
        print(f"  amc_base_url  = {url} (every region)")
        print(f"  client_id     = {simulator.client_id}")
        print(f"  client_secret = {simulator.client_secret}")
        print(f'  add a user:     curl -s -XPOST {url}/_sandbox/users -d \'{{"email": "ada@example.com"}}\'')
        print("Ctrl-C stops it.", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await simulator.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from recomamp.sandbox.demo import run_demo

    code: int = run_demo(Path(args.workdir), show_demo_runs)
    return code


def show_demo_runs(runs: list[dict[str, Any]]) -> None:
    table(
        runs,
        [
            Column("id", "RUN"),
            Column("email", "USER"),
            Column("name", "SCHEDULE"),
            Column("status"),
            Column("attempt"),
            Column("lwa_calls", "LWA CALLS"),
            Column("snowflake_rows", "ROWS IN SNOWFLAKE"),
        ],
    )


def cmd_standalone(args: argparse.Namespace) -> int:
    from recomamp.sandbox.standalone import run_standalone

    return run_standalone(Path(args.dir))


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    sandbox = add_command(
        commands, "sandbox", "serve the AMC/LWA simulator on loopback", cmd_sandbox, common, json_output=False
    )
    sandbox.add_argument("--host", default="127.0.0.1", help="the address to listen on (default 127.0.0.1)")
    sandbox.add_argument("--port", type=bounded_int(0, 65535), default=8900, help="the port (default 8900; 0: any)")
    sandbox.add_argument("--rows", type=bounded_int(0, 100_000_000), default=120, help="rows per result")
    sandbox.add_argument("--files", type=bounded_int(1, 10_000), default=3, help="files per result")
    sandbox.add_argument("--pending", type=float, default=1.0, help="seconds PENDING")
    sandbox.add_argument("--running", type=float, default=3.0, help="seconds RUNNING")
    demo = add_command(
        commands,
        "demo",
        "run the whole pipeline on embedded servers and print what happened",
        cmd_demo,
        common,
        json_output=False,
    )
    demo.add_argument("--workdir", default=".recomamp-demo", help="where the embedded Postgres keeps its data")
    standalone = add_command(
        commands,
        "standalone",
        "Postgres, the simulators and the daemon, up in the foreground to try the CLI on (Ctrl-C stops all)",
        cmd_standalone,
        common,
        json_output=False,
    )
    standalone.add_argument("--dir", default=".recomamp-standalone", help="where its config, data and logs live")

"""`recomamp runs …`: the run history, one run in full, cancel, retry-upload, and following runs live."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any

from recomamp.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_command,
    async_handler,
    bounded_int,
    database,
    load,
    print_json,
    show_fields,
    table,
)

RUN_STATUSES = ["pending", "running", "succeeded", "failed", "cancelled", "skipped"]


def _status_text(row: dict[str, Any]) -> str:
    if row["status"] == "pending" and row.get("wait_reason"):
        return f"waiting ({row['wait_reason']})"
    return str(row["status"])


@async_handler
async def cmd_runs(args: argparse.Namespace) -> int:
    from recomamp.store import runs as run_store

    async with database(args) as (_, connection):
        if args.runs_command == "show":
            row = await run_store.show_run(connection, args.id)
            if row is None:
                raise UsageError(f"run: no run {args.id}; see `recomamp runs list`")
            if args.json:
                print_json(row)
            else:
                show_fields(row, full=("error_message", "snowflake_error", "query_sql", "amc_status_reason"))
            return EXIT_OK
        rows = await run_store.list_runs(
            connection, schedule_id=args.schedule, status=args.status, trigger=args.trigger, limit=args.limit
        )
    if args.json:
        print_json(rows)
    else:
        for row in rows:
            row["state"] = _status_text(row)
            row["window"] = f"{row['window_start']:%Y-%m-%d}..{row['window_end']:%Y-%m-%d}"
            row["message"] = row["error_message"]
        table(
            rows,
            [
                "id",
                "schedule_id",
                "user_email",
                "trigger",
                "window",
                "state",
                "step",
                "attempt",
                "snowflake_rows",
                "message",
            ],
        )
    return EXIT_OK


@async_handler
async def cmd_cancel(args: argparse.Namespace) -> int:
    from recomamp.daemon.services import open_services
    from recomamp.services.instances import cli_replica
    from recomamp.services.runs import cancel, operator_name

    config = load(args)
    async with open_services(config, replica=cli_replica()) as services:
        result = await cancel(services, config, args.id, operator_name())
    if args.json:
        print_json(result.__dict__)
    else:
        print(result.summary())
    return EXIT_OK


@async_handler
async def cmd_retry_upload(args: argparse.Namespace) -> int:
    from recomamp.daemon.services import open_services
    from recomamp.logs import configure_logging
    from recomamp.services.instances import cli_replica
    from recomamp.snowflake.errors import SnowflakeLoadError

    config = load(args)
    configure_logging(config.logging.level, stream=sys.stderr)
    owner = f"retry-upload:{cli_replica()}"
    async with open_services(config, replica=owner) as services:
        from recomamp.services.runs import retry_upload

        try:
            print(await retry_upload(services, config, args.id, owner=owner))
        except SnowflakeLoadError as exc:
            print(f"retry-upload failed: {exc}", file=sys.stderr)
            return EXIT_FAILURE
    return EXIT_OK


async def watch_runs(args: argparse.Namespace, run_ids: list[int]) -> int:
    """Follow runs until each has ended: a live bar on a terminal, plain lines otherwise, JSON with --json."""
    from recomamp.store import runs as run_store

    live = sys.stdout.isatty() and not args.json
    ended = {"succeeded", "failed", "cancelled", "skipped"}
    last: dict[str, int] = {}
    started = time.monotonic()
    async with database(args) as (_, connection):
        while True:
            counts = await run_store.progress(connection, run_ids)
            done = sum(n for status, n in counts.items() if status in ended)
            if counts != last:
                if args.json:
                    print(json.dumps({"event": "progress", "total": len(run_ids), "done": done, **counts}), flush=True)
                elif live:
                    width = 30
                    filled = int(width * done / max(1, len(run_ids)))
                    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                    sys.stdout.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{len(run_ids)}  {parts}   ")
                    sys.stdout.flush()
                else:
                    parts = ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
                    print(f"{done}/{len(run_ids)} ended: {parts}", flush=True)
                last = counts
            if done >= len(run_ids):
                break
            await asyncio.sleep(getattr(args, "interval", 1.0))
    if live:
        print()
    failed = counts.get("failed", 0)
    summary = f"{len(run_ids)} run(s) ended in {time.monotonic() - started:.0f} s: " + ", ".join(
        f"{n} {status}" for status, n in sorted(counts.items())
    )
    if args.json:
        print(json.dumps({"event": "done", **counts}))
    else:
        print(summary)
    return EXIT_FAILURE if failed else EXIT_OK


@async_handler
async def cmd_watch(args: argparse.Namespace) -> int:
    from recomamp.store import runs as run_store

    if args.ids:
        run_ids = list(args.ids)
    else:
        if args.schedule is None:
            raise UsageError("watch: give run ids, or --schedule ID to follow its active runs")
        async with database(args) as (_, connection):
            run_ids = await run_store.active_runs_of_schedule(connection, args.schedule)
        if not run_ids:
            print(f"schedule {args.schedule} has no run in flight")
            return EXIT_OK
    return await watch_runs(args, run_ids)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    runs = commands.add_parser("runs", parents=[common], help="the execution history")
    actions = runs.add_subparsers(dest="runs_command", required=True, metavar="ACTION")
    run_id = bounded_int(1, 2**62)
    listing = add_command(actions, "list", "list runs, newest first", cmd_runs, common)
    listing.add_argument("--schedule", type=run_id, metavar="ID")
    listing.add_argument("--status", choices=RUN_STATUSES)
    listing.add_argument("--trigger", choices=["schedule", "manual", "catch_up", "backfill", "rerun"])
    listing.add_argument("--limit", type=bounded_int(1, 10_000), default=50)
    add_command(
        actions, "show", "one run: what it sent, where it loaded, every step's time", cmd_runs, common
    ).add_argument("id", type=run_id)
    add_command(
        actions, "retry-upload", "load a run's result into its recorded table again", cmd_retry_upload, common
    ).add_argument("id", type=run_id)
    add_command(
        actions, "cancel", "cancel a pending or running run (and its AMC execution)", cmd_cancel, common
    ).add_argument("id", type=run_id)
    watch = add_command(actions, "watch", "follow runs until they end", cmd_watch, common)
    watch.add_argument("ids", nargs="*", type=run_id, metavar="RUN_ID")
    watch.add_argument("--schedule", type=run_id, metavar="ID", help="follow this schedule's runs in flight")
    watch.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)

"""`recomamp runs …`: the run history, one run in full, cancel, retry-upload, and following runs live."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import datetime
from typing import Any

from recomamp.cli.common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_command,
    add_noun,
    async_handler,
    bounded_int,
    database,
    load,
)
from recomamp.cli.output import (
    Column,
    duration,
    print_json,
    print_json_line,
    section,
    table,
    when,
    window_text,
)

RUN_STATUSES = ["pending", "running", "succeeded", "failed", "cancelled", "skipped"]
ENDED = frozenset({"succeeded", "failed", "cancelled", "skipped"})

LIST_COLUMNS = [
    Column("id", minimum=2),
    Column("schedule_id", "SCHED", minimum=5),
    Column("window", "WINDOW (LOCAL)", minimum=14),
    Column("trigger", minimum=6),
    Column("state", flexible=True, minimum=9),
    Column("step", minimum=6),
    Column("attempt", "TRY", minimum=3),
    Column("snowflake_rows", "ROWS", minimum=4),
    Column("message", flexible=True, minimum=20),
]
WIDE_COLUMNS = [
    *LIST_COLUMNS[:3],
    Column("window_timezone", "TIMEZONE"),
    Column("user_email", "USER"),
    *LIST_COLUMNS[3:-1],
    Column("created_at", "CREATED"),
    LIST_COLUMNS[-1],
]


def status_text(row: dict[str, Any]) -> str:
    if row["status"] == "pending" and row.get("wait_reason"):
        return f"waiting ({row['wait_reason']})"
    return str(row["status"])


def list_row(row: dict[str, Any]) -> dict[str, Any]:
    """A run as one table line: its window in the schedule's own dates, `[start, end)`."""
    return row | {
        "state": status_text(row),
        "window": window_text(row["window_start"], row["window_end"], row["window_timezone"]),
        "step": None if row["status"] in ENDED and row["step"] == "finished" else row["step"],
        "message": row["error_message"],
    }


def _seconds(start: datetime | None, end: datetime | None) -> float | None:
    return (end - start).total_seconds() if start is not None and end is not None else None


# Each step, from the moment it began to the moment the next began (None: not reached).
STEPS = (
    ("queued", "created_at", "started_at"),
    ("submitting to AMC", "started_at", "submitted_at"),
    ("AMC running", "submitted_at", "amc_finished_at"),
    ("downloading", "amc_finished_at", "downloaded_at"),
    ("loading into Snowflake", "downloaded_at", "snowflake_finished_at"),
)


def step_durations(row: dict[str, Any]) -> dict[str, float | None]:
    durations = {name: _seconds(row.get(start), row.get(end)) for name, start, end in STEPS}
    durations["total"] = _seconds(row.get("created_at"), row.get("finished_at"))
    return durations


def _target_text(row: dict[str, Any]) -> str:
    target = ""
    if row["target_enabled"]:
        target = ".".join(part for part in (row["target_schema_name"], row["target_table_name"]) if part)
        if row["target_key_columns"]:
            target += f" (merge on {', '.join(row['target_key_columns'])})"
    return target or "off (this run does not load into Snowflake)"


def _times(row: dict[str, Any]) -> list[str]:
    """When each step began (UTC), and how long each took."""
    durations = step_durations(row)
    times: dict[str, str | None] = {"created": when(row["created_at"], seconds=True)}
    for name, start, _end in STEPS[1:]:
        if row.get(start) is not None:
            times[f"{name} from"] = when(row[start], seconds=True)
    times["finished"] = when(row["finished_at"], seconds=True) if row["finished_at"] else None
    return section("times (UTC)", times) + section(
        "step durations", {name: duration(seconds) for name, seconds in durations.items() if seconds is not None}
    )


def render_run(row: dict[str, Any]) -> str:
    """One run, grouped: what it is, what it sent, AMC, Snowflake, the kept result, each step's time."""
    timezone = row["window_timezone"]
    query: dict[str, Any] = (
        {"workflow": row["query_workflow_id"], "parameters": row["query_parameters"] or None}
        if row["query_workflow_id"]
        else {}
    )
    lines = [
        *section(
            f"run {row['id']}",
            {
                "schedule": f"{row['schedule_id']} ({row['schedule_name']})",
                "user": row["user_email"],
                "instance": row["amc_instance_id"],
                "trigger": row["trigger"],
                "state": status_text(row),
                "step": row["step"],
                "window": f"{window_text(row['window_start'], row['window_end'], timezone)} {timezone}",
                "scheduled for": when(row["scheduled_for"], seconds=True),
                "attempt": f"{row['attempt']} (claims {row['claims']}, interruptions {row['interruptions']})",
                "missed fires skipped": row["missed_fires_skipped"] or None,
            },
        ),
    ]
    problem = {
        "error": f"{row['error_kind']}: {row['error_message']}" if row["error_kind"] else row["error_message"],
        "waiting for": row["wait_reason"],
        "not before": when(row["not_before"], seconds=True) if row["not_before"] else None,
        "held by": f"{row['lease_owner']} until {when(row['lease_expires_at'], seconds=True)}"
        if row["lease_owner"]
        else None,
        "cancelled by": row["cancelled_by"],
    }
    lines += section("problem", problem)
    lines += section("query", query)
    lines += section(
        "AMC",
        {
            "execution": row["amc_execution_id"],
            "status": row["amc_status"],
            "reason": row["amc_status_reason"],
            "result expires": when(row["amc_expire_time"], seconds=True) if row["amc_expire_time"] else None,
            "result files": row["result_files"],
            "result rows": row["result_rows"],
        },
    )
    lines += section(
        "Snowflake",
        {
            "target": _target_text(row),
            "status": row["snowflake_status"],
            "table": row["snowflake_table"],
            "rows loaded": row["snowflake_rows"],
            "error": row["snowflake_error"],
        },
    )
    lines += section(
        "kept result",
        {
            "path": row["results_path"],
            "size": f"{row['results_bytes']} bytes" if row["results_bytes"] is not None else None,
            "kept until": when(row["results_kept_until"], seconds=True) if row["results_kept_until"] else None,
        },
    )
    lines += _times(row)
    if row["query_sql"]:
        lines += ["SQL", *("  " + line for line in str(row["query_sql"]).splitlines())]
    return "\n".join(lines)


@async_handler
async def cmd_runs(args: argparse.Namespace) -> int:
    from recomamp.services import run_history as service

    async with database(args) as (_, connection):
        if args.runs_command == "show":
            row = await service.show(connection, args.id)
            if row is None:
                raise UsageError(f"run: no run {args.id}; see `recomamp runs list`")
            if args.json:
                print_json(row | {"step_seconds": step_durations(row)})
            else:
                print(render_run(row))
            return EXIT_OK
        rows = await service.list_recent(
            connection, schedule_id=args.schedule, status=args.status, trigger=args.trigger, limit=args.limit
        )
    if args.json:
        print_json(rows)
    else:
        table(
            [list_row(row) for row in rows],
            WIDE_COLUMNS if args.wide else LIST_COLUMNS,
            wide=args.wide,
            label=lambda row: f"run {row['id']}",
        )
    return EXIT_OK


@async_handler
async def cmd_cancel(args: argparse.Namespace) -> int:
    from recomamp.services.instances import cli_replica
    from recomamp.services.runs import cancel, operator_name
    from recomamp.wiring import open_services

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
    from recomamp.services.instances import cli_replica
    from recomamp.snowflake.errors import SnowflakeLoadError
    from recomamp.wiring import open_services

    # Logging stays as main() set it (errors only): the daemon's JSON lines are for journald, not a terminal.
    config = load(args)
    owner = f"retry-upload:{cli_replica()}"
    async with open_services(config, replica=owner) as services:
        from recomamp.services.run_history import show
        from recomamp.services.runs import retry_upload

        try:
            summary = await retry_upload(services, config, args.id, owner=owner)
        except SnowflakeLoadError as exc:
            print(f"retry-upload failed: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        row = await show(services.pool, args.id) or {}
    if args.json:
        keys = ("id", "status", "step", "snowflake_status", "snowflake_table", "snowflake_rows", "error_message")
        print_json({key: row.get(key) for key in keys})
    else:
        print(f"{summary}; the run is {status_text(row)}")
    return EXIT_OK


async def watch_runs(args: argparse.Namespace, run_ids: list[int]) -> int:
    """Follow runs until each has ended: a live bar on a terminal, plain lines otherwise, JSON with --json."""
    from recomamp.services.run_history import progress

    live = sys.stdout.isatty() and not args.json
    ended = ENDED
    last: dict[str, int] = {}
    started = time.monotonic()
    async with database(args) as (_, connection):
        while True:
            counts = await progress(connection, run_ids)
            done = sum(n for status, n in counts.items() if status in ended)
            if counts != last:
                if args.json:
                    print_json_line({"event": "progress", "total": len(run_ids), "done": done, **counts})
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
        print_json_line({"event": "done", "total": len(run_ids), **counts})
    else:
        print(summary)
    return EXIT_FAILURE if failed else EXIT_OK


@async_handler
async def cmd_watch(args: argparse.Namespace) -> int:
    from recomamp.services.run_history import in_flight_of_schedule

    if args.ids:
        run_ids = list(args.ids)
    else:
        if args.schedule is None:
            raise UsageError("watch: give run ids, or --schedule ID to follow its active runs")
        async with database(args) as (_, connection):
            run_ids = await in_flight_of_schedule(connection, args.schedule)
        if not run_ids:
            if args.json:
                print_json_line({"event": "done", "total": 0})
            else:
                print(f"schedule {args.schedule} has no run in flight")
            return EXIT_OK
    return await watch_runs(args, run_ids)


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    actions = add_noun(commands, "runs", "the execution history", common, "runs_command")
    run_id = bounded_int(1, 2**62)
    listing = add_command(actions, "list", "list runs, newest first", cmd_runs, common)
    listing.add_argument("--schedule", type=run_id, metavar="ID", help="only this schedule's runs")
    listing.add_argument("--status", choices=RUN_STATUSES, help="only runs in this state")
    listing.add_argument(
        "--trigger", choices=["schedule", "manual", "catch_up", "backfill", "rerun"], help="only runs started so"
    )
    listing.add_argument("--limit", type=bounded_int(1, 10_000), default=50, help="at most N runs (default 50)")
    add_command(
        actions, "show", "one run: what it sent, where it loaded, every step's time", cmd_runs, common
    ).add_argument("id", type=run_id, help="the run's id (`runs list`)")
    add_command(
        actions, "retry-upload", "load a run's result into its recorded table again", cmd_retry_upload, common
    ).add_argument("id", type=run_id, help="the run's id (`runs list`)")
    add_command(
        actions, "cancel", "cancel a pending or running run (and its AMC execution)", cmd_cancel, common
    ).add_argument("id", type=run_id, help="the run's id (`runs list`)")
    watch = add_command(actions, "watch", "follow runs until they end", cmd_watch, common)
    watch.add_argument("ids", nargs="*", type=run_id, metavar="RUN_ID", help="the runs to follow (or --schedule)")
    watch.add_argument("--schedule", type=run_id, metavar="ID", help="follow this schedule's runs in flight")
    watch.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)

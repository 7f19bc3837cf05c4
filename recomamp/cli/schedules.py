"""`recomamp schedules …`: create and edit schedules, run a window now, backfill, preview."""

from __future__ import annotations

import argparse
from typing import Any

from pydantic import ValidationError

from recomamp.cli.common import (
    EXIT_OK,
    UsageError,
    add_command,
    async_handler,
    bounded_int,
    cell,
    database,
    iso_date,
    load,
    now,
    print_json,
    read_file,
    table,
    validation_line,
)
from recomamp.domain.models import AMC_RETENTION_DAYS


def _schedule_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.sql is not None or getattr(args, "sql_file", None):
        if args.sql is not None and args.sql_file:
            raise UsageError("sql_query: give --sql or --sql-file, not both")
        fields["sql_query"] = read_file(args.sql_file, "--sql-file") if args.sql_file else args.sql
    if args.workflow_id is not None:
        fields["workflow_id"] = args.workflow_id
    if args.param:
        parameters: dict[str, str] = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"parameter_values: {item!r} is not KEY=VALUE")
            parameters[key.strip()] = value
        fields["parameter_values"] = parameters
    for flag, field_name in (
        ("name", "name"),
        ("time", "time_of_day"),
        ("day_of_week", "day_of_week"),
        ("day_of_month", "day_of_month"),
        ("cron", "cron_expression"),
        ("timezone", "timezone"),
        ("lookback_days", "lookback_days"),
        ("data_lag_days", "data_lag_days"),
        ("failure_threshold", "failure_threshold"),
        ("snowflake_table", "snowflake_table_name"),
        ("snowflake_schema", "snowflake_schema_name"),
        ("misfire", "misfire_policy"),
        ("catch_up_limit", "catch_up_limit"),
    ):
        value = getattr(args, flag, None)
        if value is not None:
            fields[field_name] = value.replace("-", "_") if flag == "misfire" else value
    if args.snowflake_key_columns is not None:
        fields["snowflake_key_columns"] = [c.strip() for c in args.snowflake_key_columns.split(",") if c.strip()]
    if args.auto_pause is not None:
        fields["auto_pause_on_failure"] = args.auto_pause
    if args.allow_overlap is not None:
        fields["allow_overlap"] = args.allow_overlap
    if args.no_snowflake:
        fields["snowflake_enabled"] = False
    elif getattr(args, "snowflake", False):
        fields["snowflake_enabled"] = True
    return fields


def cadence_text(schedule: dict[str, Any]) -> str:
    from recomamp.domain.schedules import WEEKDAYS

    preset = schedule["preset"]
    at = schedule["time_of_day"].strftime("%H:%M") if schedule.get("time_of_day") else ""
    zone_name = schedule["timezone"]
    if preset == "daily":
        return f"daily {at} {zone_name}"
    if preset == "weekly":
        return f"weekly {WEEKDAYS[schedule['day_of_week']][:3]} {at} {zone_name}"
    if preset == "monthly":
        return f"monthly day {schedule['day_of_month']} {at} {zone_name}"
    return f"cron '{schedule['cron_expression']}' {zone_name}"


@async_handler
async def cmd_schedules(args: argparse.Namespace) -> int:
    from recomamp.domain.models import ScheduleCreateCustom, ScheduleCreatePreset, ScheduleUpdate
    from recomamp.services import schedules as service
    from recomamp.store import schedules as store

    command = args.schedules_command
    if command == "create":
        fields = _schedule_fields(args)
        fields.update(user_email=args.user, instance_id=args.instance)
        try:
            if args.preset == "custom" or (args.preset is None and args.cron):
                fields.pop("time_of_day", None)
                model: ScheduleCreatePreset | ScheduleCreateCustom = ScheduleCreateCustom(**fields)
            else:
                model = ScheduleCreatePreset(preset=args.preset or "daily", **fields)
        except ValidationError as exc:
            raise UsageError(validation_line(exc)) from None
    elif command == "update":
        try:
            update = ScheduleUpdate(**_schedule_fields(args))
        except ValidationError as exc:
            raise UsageError(validation_line(exc)) from None
    async with database(args) as (_, connection):
        if command == "create":
            schedule_id = await service.create(connection, model, now())
            created = await store.get_schedule(connection, schedule_id)
            if args.json:
                print_json(created.model_dump(mode="json"))
            else:
                print(f"schedule {schedule_id} created; next run {cell(created.next_run_at)}")
            return EXIT_OK
        if command == "list":
            schedules = await store.list_schedules(connection, args.user)
            if args.json:
                print_json([s.model_dump(mode="json") for s in schedules])
            else:
                table(
                    [s.model_dump() | {"cadence": cadence_text(s.model_dump())} for s in schedules],
                    [
                        "id",
                        "name",
                        "user_email",
                        "instance_id",
                        "cadence",
                        "is_active",
                        "next_run_at",
                        "snowflake_table_name",
                        "consecutive_failures",
                    ],
                )
            return EXIT_OK
        schedule_id = args.id
        if command == "show":
            schedule = await store.get_schedule(connection, schedule_id)
            if args.json:
                print_json(schedule.model_dump(mode="json"))
            else:
                for key, value in schedule.model_dump().items():
                    print(f"{key:>24}: {cell(value)}")
        elif command == "update":
            updated = await service.update(connection, schedule_id, update, now())
            print(f"schedule {schedule_id} updated; next run {cell(updated.next_run_at)}")
        elif command in ("pause", "resume"):
            await service.set_active(connection, schedule_id, command == "resume", now())
            print(f"schedule {schedule_id} {'resumed' if command == 'resume' else 'paused'}")
        elif command == "run-now":
            queued = await service.run_now(connection, schedule_id, now(), window_start=args.window_start)
            window = queued.window
            print(
                f"run {queued.run_id} queued for the window [{window.start_local:%Y-%m-%d}, "
                f"{window.end_local:%Y-%m-%d}) {window.timezone}; a running daemon picks it up at once "
                f"(`recomamp runs show {queued.run_id}`)"
            )
        elif command == "preview":
            await _preview(connection, args)
        elif command == "delete":
            return await _delete(connection, args)
    return EXIT_OK


async def _preview(connection: Any, args: argparse.Namespace) -> None:
    from recomamp.services import schedules as service

    result = await service.preview(connection, args.id, now(), args.count)
    fires = [
        {
            "fire_at": fire,
            "fire_at_local": fire.astimezone(_zone(window.timezone)).strftime("%Y-%m-%d %H:%M %Z"),
            "window_start": window.start_local.isoformat(),
            "window_end": window.end_local.isoformat(),
            "timezone": window.timezone,
        }
        for fire, window in result.fires
    ]
    plan = result.overdue
    if args.json:
        if plan is None:
            print_json(fires)
        else:
            runs = [{"fire_at": r.fire_at, "window_start": r.window.start_local.isoformat()} for r in plan.runs]
            skipped = [{"fire_at": s.fire_at, "window_start": s.window.start_local.isoformat()} for s in plan.skipped]
            print_json(
                {"fires": fires, "overdue": {"runs": runs, "skipped": skipped, "more_skipped": plan.more_skipped}}
            )
        return
    table(fires, ["fire_at_local", "fire_at", "window_start", "window_end", "timezone"])
    if plan is not None:
        starts = ", ".join(f"{r.window.start_local:%Y-%m-%d}" for r in plan.runs)
        print(
            f"\noverdue: the next poll runs {len(plan.runs)} window(s) ({starts}) and records {len(plan.skipped)} as "
            "skipped" + (" (and more, not listed)" if plan.more_skipped else "")
        )


def _zone(name: str) -> Any:
    from zoneinfo import ZoneInfo

    return ZoneInfo(name)


async def _delete(connection: Any, args: argparse.Namespace) -> int:
    from recomamp.store import runs as run_store
    from recomamp.store import schedules as store

    active = await run_store.active_runs_of_schedule(connection, args.id)
    await store.schedule_row(connection, args.id)  # NotFound first
    if active and not args.cancel_runs:
        raise UsageError(
            f"schedule {args.id} has {len(active)} run(s) in flight ({', '.join(map(str, active))}); "
            "pass --cancel-runs to cancel them (and their AMC executions) first"
        )
    if active:
        from recomamp.daemon.services import open_services
        from recomamp.services.instances import cli_replica
        from recomamp.services.runs import cancel, operator_name

        config = load(args)
        async with open_services(config, replica=cli_replica()) as services:
            for run_id in active:
                result = await cancel(services, config, run_id, operator_name())
                print(result.summary())
    await store.delete_schedule(connection, args.id)
    print(f"schedule {args.id} deleted, with its run history")
    return EXIT_OK


@async_handler
async def cmd_backfill(args: argparse.Namespace) -> int:
    from recomamp.services import schedules as service
    from recomamp.services.runs import operator_name
    from recomamp.store import runs as run_store

    async with database(args) as (_, connection):
        if args.cancel:
            cancelled = await run_store.cancel_queued_backfill(connection, args.id, operator_name())
            print(f"cancelled {len(cancelled)} backfill run(s) of schedule {args.id} that had not started")
            return EXIT_OK
        if args.start is None or args.end is None:
            raise UsageError("backfill: --from DATE and --to DATE are required (or --cancel)")
        plan = await service.backfill(connection, args.id, args.start, args.end, now(), dry_run=args.dry_run)
        rows = [
            {
                "window_start": w.window.start_local.date().isoformat(),
                "window_end": w.window.end_local.date().isoformat(),
                "state": w.state,
                "run_id": w.run_id,
            }
            for w in plan.windows
        ]
        if args.json and not args.wait:
            print_json({"windows": rows, "created": plan.created, "dry_run": args.dry_run})
        elif not args.json:
            table(rows, ["window_start", "window_end", "state", "run_id"])
            verb = "would create" if args.dry_run else "created"
            print(
                f"{verb} {len(plan.to_create) if args.dry_run else len(plan.created)} run(s); "
                f"{sum(1 for w in plan.windows if w.state == 'succeeded')} window(s) already loaded, "
                f"{sum(1 for w in plan.windows if w.state in ('pending', 'running'))} in flight"
            )
    if args.wait and plan.created:
        from recomamp.cli.runs import watch_runs

        return await watch_runs(args, plan.created)
    return EXIT_OK


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    schedules = commands.add_parser("schedules", parents=[common], help="workflow schedules")
    actions = schedules.add_subparsers(dest="schedules_command", required=True, metavar="ACTION")
    retention = f"AMC keeps about 13 months of data: {AMC_RETENTION_DAYS} days at most"

    def schedule_flags(sub: argparse.ArgumentParser, creating: bool) -> None:
        sub.add_argument("--name", required=creating)
        sub.add_argument("--sql", help="ad-hoc AMC SQL")
        sub.add_argument("--sql-file", metavar="PATH", help="ad-hoc AMC SQL from a file")
        sub.add_argument("--workflow-id", help="a saved AMC workflow instead of SQL")
        sub.add_argument("--param", action="append", metavar="KEY=VALUE", help="a saved workflow's parameter; repeat")
        if creating:
            sub.add_argument("--preset", choices=["daily", "weekly", "monthly", "custom"])
        sub.add_argument("--time", metavar="HH:MM", help="time of day, in --timezone")
        sub.add_argument("--day-of-week", metavar="DAY", help="weekly: monday..sunday, or 0..6")
        sub.add_argument(
            "--day-of-month", type=bounded_int(1, 31), metavar="N", help="monthly: 1..31 (29-31: the month's last day)"
        )
        sub.add_argument("--cron", metavar="EXPR", help="custom: a 5-field cron expression, in --timezone")
        sub.add_argument("--timezone", metavar="IANA", help="e.g. America/New_York (default UTC)")
        sub.add_argument(
            "--lookback-days",
            type=bounded_int(1, AMC_RETENTION_DAYS, retention),
            metavar="N",
            help="each window is N days long (default: since the previous fire's window)",
        )
        sub.add_argument(
            "--data-lag-days",
            type=bounded_int(0, AMC_RETENTION_DAYS, retention),
            metavar="N",
            help="end the window N days before the fire (default 14: AMC restates data)",
        )
        sub.add_argument("--auto-pause", action=argparse.BooleanOptionalAction, default=None)
        sub.add_argument("--failure-threshold", type=bounded_int(1, 1000), metavar="N")
        sub.add_argument(
            "--misfire",
            choices=["coalesce", "catch-up"],
            help="after downtime: run the latest missed window (coalesce) or every one (catch-up)",
        )
        sub.add_argument("--catch-up-limit", type=bounded_int(1, 1000), metavar="N", help="catch-up: at most N windows")
        sub.add_argument("--snowflake-table", metavar="NAME", help="load results into this table (enables Snowflake)")
        sub.add_argument("--snowflake-schema", metavar="NAME", help="default: the user's default schema")
        sub.add_argument(
            "--snowflake-key-columns", metavar="A,B", help="MERGE on these columns instead of replacing the window"
        )
        sub.add_argument(
            "--allow-overlap",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="allow windows that overlap without key columns (each overlapping row is kept once per window)",
        )
        sub.add_argument("--no-snowflake", action="store_true", help="do not load into Snowflake")
        if not creating:
            sub.add_argument("--snowflake", action="store_true", help="load into Snowflake again")

    create = add_command(actions, "create", "create a schedule", cmd_schedules, common)
    create.add_argument("--user", required=True, metavar="EMAIL")
    create.add_argument("--instance", required=True, metavar="INSTANCE_ID")
    schedule_flags(create, creating=True)
    add_command(actions, "list", "list schedules", cmd_schedules, common).add_argument("--user", metavar="EMAIL")
    schedule_id = bounded_int(1, 2**62)
    for action, text in (
        ("show", "show a schedule"),
        ("pause", "pause a schedule"),
        ("resume", "resume a schedule from its next fire"),
    ):
        add_command(actions, action, text, cmd_schedules, common).add_argument("id", type=schedule_id)
    delete = add_command(actions, "delete", "delete a schedule and its run history", cmd_schedules, common)
    delete.add_argument("id", type=schedule_id)
    delete.add_argument(
        "--cancel-runs", action="store_true", help="cancel its runs in flight (and their AMC executions)"
    )
    run_now = add_command(
        actions,
        "run-now",
        "run one window of the schedule now (default: its latest complete window)",
        cmd_schedules,
        common,
    )
    run_now.add_argument("id", type=schedule_id)
    run_now.add_argument("--window-start", type=iso_date, metavar="DATE", help="another window of the grid")
    update = add_command(actions, "update", "change a schedule; only the flags given change", cmd_schedules, common)
    update.add_argument("id", type=schedule_id)
    schedule_flags(update, creating=False)
    preview = add_command(
        actions, "preview", "the next fires and their windows, and what an overdue poll would do", cmd_schedules, common
    )
    preview.add_argument("id", type=schedule_id)
    preview.add_argument("--count", type=bounded_int(1, 1000), default=5)
    backfill = add_command(
        actions, "backfill", "one run per grid window in a date range, after scheduled runs", cmd_backfill, common
    )
    backfill.add_argument("id", type=schedule_id)
    backfill.add_argument("--from", dest="start", type=iso_date, metavar="DATE", help="first window start (YYYY-MM-DD)")
    backfill.add_argument("--to", dest="end", type=iso_date, metavar="DATE", help="last window start (YYYY-MM-DD)")
    backfill.add_argument("--dry-run", action="store_true", help="show the windows; create nothing")
    backfill.add_argument("--wait", action="store_true", help="follow the runs until they end")
    backfill.add_argument("--cancel", action="store_true", help="cancel this schedule's backfill runs not yet started")
    from recomamp.cli import coverage  # `schedules coverage`, `schedules grace`, `backfill --missing`, `coverage`

    coverage.register(commands, common, actions)

"""`recomamp schedules …`: create and edit schedules, run a window now, backfill, preview."""

from __future__ import annotations

import argparse
import re
from typing import TYPE_CHECKING, Any

from recomamp.cli.common import (
    EXIT_OK,
    UsageError,
    add_command,
    add_noun,
    async_handler,
    bounded_int,
    database,
    iso_date,
    load,
    now,
    read_file,
    validation_line,
)
from recomamp.cli.output import Column, print_json, section, table, when, window_text
from recomamp.domain.models import AMC_RETENTION_DAYS

if TYPE_CHECKING:
    from recomamp.domain.models import ScheduleCreateCustom, ScheduleCreatePreset

# The model's field → the flag a person types, so that every error names the flag.
FLAGS = {
    "name": "--name",
    "user_email": "--user",
    "instance_id": "--instance",
    "sql_query": "--sql",
    "workflow_id": "--workflow-id",
    "parameter_values": "--param",
    "preset": "--preset",
    "time_of_day": "--time",
    "day_of_week": "--day-of-week",
    "day_of_month": "--day-of-month",
    "cron_expression": "--cron",
    "timezone": "--timezone",
    "lookback_days": "--lookback-days",
    "data_lag_days": "--data-lag-days",
    "failure_threshold": "--failure-threshold",
    "auto_pause_on_failure": "--auto-pause",
    "snowflake_enabled": "--snowflake-table",
    "snowflake_table_name": "--snowflake-table",
    "snowflake_schema_name": "--snowflake-schema",
    "snowflake_key_columns": "--snowflake-key-columns",
    "misfire_policy": "--misfire",
    "catch_up_limit": "--catch-up-limit",
    "allow_overlap": "--allow-overlap",
}
# Field names inside a message (`only a saved workflow (workflow_id) takes parameters`): only the ones with an
# underscore, which are never English words, and never inside a quoted value the person typed.
_FIELD_NAMES = re.compile(r"\b(" + "|".join(sorted((f for f in FLAGS if "_" in f), key=len, reverse=True)) + r")\b")
_QUOTED = re.compile(r"('[^']*')")

# Names tzdata keeps for old systems: fixed offsets (EST is UTC-5 all year, never EDT) or rules of their
# own. A person who types one means a place; refuse it and name the place.
LEGACY_ZONES = {
    "EST": "America/New_York",
    "MST": "America/Denver (or America/Phoenix, which keeps no DST)",
    "HST": "Pacific/Honolulu",
    "EST5EDT": "America/New_York",
    "CST6CDT": "America/Chicago",
    "MST7MDT": "America/Denver",
    "PST8PDT": "America/Los_Angeles",
    "CET": "Europe/Berlin (or Europe/Paris, …)",
    "MET": "Europe/Berlin",
    "EET": "Europe/Helsinki (or Europe/Athens, …)",
    "WET": "Europe/Lisbon",
}


def check_timezone_flag(name: str) -> None:
    legacy = LEGACY_ZONES.get(name.upper())
    if legacy is not None or name.startswith(("Etc/GMT+", "Etc/GMT-")):
        raise UsageError(
            f"--timezone: {name!r} is a fixed offset or an old alias, without the place's daylight saving time; "
            f"use the place's IANA name: {legacy or 'e.g. America/New_York, Europe/Berlin'}"
        )


def flag_message(message: str) -> str:
    """A domain or model message that names fields (`time_of_day: …`), renamed to the flags."""
    head, sep, rest = message.partition(": ")
    if sep and all(part.strip() in FLAGS for part in head.split("/")):
        head = " / ".join(FLAGS[part.strip()] for part in head.split("/"))
        message = f"{head}: {rest}"
    message = "".join(
        part if _QUOTED.fullmatch(part) else _FIELD_NAMES.sub(lambda match: FLAGS[match.group(1)], part)
        for part in _QUOTED.split(message)
    )
    if message.startswith("--cron: ") and "out of range" in message and "field" not in message:
        message += cron_hint(message)
    return message


CRON_FIELDS = (("minute", 0, 59), ("hour", 0, 23), ("day of month", 1, 31), ("month", 1, 12), ("day of week", 0, 6))


def cron_hint(message: str) -> str:
    """croniter says `[61 6 * * *] is not acceptable, out of range`: say which field, and its range."""
    match = re.search(r"'([^']*)'", message)
    parts = match.group(1).split() if match else []
    for (field, low, high), part in zip(CRON_FIELDS, parts, strict=False):
        numbers = [int(n) for n in re.findall(r"\d+", part.split("/")[0])]
        if any(not low <= n <= high for n in numbers):
            return f"; the {field} field {part!r} must be {low}-{high}"
    return ""


def _schedule_fields(args: argparse.Namespace) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if args.sql is not None or getattr(args, "sql_file", None):
        if args.sql is not None and args.sql_file:
            raise UsageError("--sql / --sql-file: give one of them, not both")
        fields["sql_query"] = read_file(args.sql_file, "--sql-file") if args.sql_file else args.sql
    if args.workflow_id is not None:
        fields["workflow_id"] = args.workflow_id
    if args.param:
        parameters: dict[str, str] = {}
        for item in args.param:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise UsageError(f"--param: {item!r} is not KEY=VALUE")
            parameters[key.strip()] = value
        fields["parameter_values"] = parameters
    if args.timezone is not None:
        check_timezone_flag(args.timezone)
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


OPERATOR_PAUSE = "paused by an operator"


def state_text(schedule: dict[str, Any]) -> str:
    """active, or paused (and why, when it paused itself: after N failures)."""
    if schedule["is_active"]:
        return "active"
    reason = schedule.get("paused_reason")
    return f"paused ({reason})" if reason and reason != OPERATOR_PAUSE else "paused"


def schedule_json(schedule: dict[str, Any]) -> dict[str, Any]:
    """The schedule for scripts: its state in words, and no next run while it is paused (the stored
    next_run_at is where it stood when paused; resuming computes a new one)."""
    paused = not schedule["is_active"]
    return schedule | {"state": state_text(schedule), "next_run_at": None if paused else schedule["next_run_at"]}


LIST_COLUMNS = [
    Column("id", minimum=2),
    Column("name", flexible=True, minimum=10),
    Column("user_email", "USER", flexible=True, minimum=12),
    Column("instance_id", "INSTANCE", flexible=True, minimum=10),
    Column("cadence", minimum=16),  # its zone is at the end: it gives way only after the names
    Column("state", flexible=True, minimum=6),
    Column("next_run", "NEXT RUN"),
    Column("table", "TABLE", flexible=True, minimum=10),
]


def list_row(schedule: dict[str, Any]) -> dict[str, Any]:
    table_name = None
    if schedule["snowflake_enabled"]:
        table_name = ".".join(p for p in (schedule["snowflake_schema_name"], schedule["snowflake_table_name"]) if p)
    return schedule | {
        "cadence": cadence_text(schedule),
        "state": state_text(schedule)
        + (f", {schedule['consecutive_failures']} failed" if schedule["consecutive_failures"] else ""),
        "next_run": when(schedule["next_run_at"]) if schedule["is_active"] else "- (paused)",
        "table": table_name or "- (no Snowflake)",
    }


def render_schedule(schedule: dict[str, Any]) -> str:
    tz = schedule["timezone"]
    keys = schedule["snowflake_key_columns"]
    lines = section(
        f"schedule {schedule['id']} ({schedule['name']})",
        {
            "user": schedule["user_email"],
            "instance": schedule["instance_id"],
            "state": state_text(schedule),
            "cadence": cadence_text(schedule),
            "window": (
                f"{schedule['lookback_days']} day(s)" if schedule["lookback_days"] else "since the previous fire"
            )
            + f", ending {schedule['data_lag_days']} day(s) before the fire",
            "next run": f"{when(schedule['next_run_at'], timezone=tz)} ({when(schedule['next_run_at'])})"
            if schedule["is_active"] and schedule["next_run_at"]
            else "- (paused: `recomamp schedules resume " + str(schedule["id"]) + "`)",
            "after downtime": schedule["misfire_policy"].replace("_", "-")
            + (f" (at most {schedule['catch_up_limit']})" if schedule["misfire_policy"] == "catch_up" else ""),
            "failures": f"{schedule['consecutive_failures']} in a row"
            + (
                f"; pauses itself at {schedule['failure_threshold']}"
                if schedule["auto_pause_on_failure"]
                else "; never pauses itself"
            ),
            "created": when(schedule["created_at"]),
            "updated": when(schedule["updated_at"]),
        },
    )
    lines += section(
        "Snowflake",
        {
            "table": (
                f"{schedule['snowflake_schema_name']}.{schedule['snowflake_table_name']}"
                if schedule["snowflake_schema_name"]
                else f"{schedule['snowflake_table_name']} (in the user's default schema)"
            )
            if schedule["snowflake_enabled"]
            else "off",
            "loads by": (f"merge on {', '.join(keys)}" if keys else "replacing each window")
            if schedule["snowflake_enabled"]
            else None,
            "overlapping windows": "allowed" if schedule["allow_overlap"] else None,
        },
    )
    if schedule["workflow_id"]:
        lines += section(
            "query", {"workflow": schedule["workflow_id"], "parameters": schedule["parameter_values"] or None}
        )
    if schedule["sql_query"]:
        lines += ["SQL", *("  " + line for line in str(schedule["sql_query"]).splitlines())]
    return "\n".join(lines)


def _model(build: Any, fields: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    try:
        return build(**fields)
    except ValidationError as exc:
        raise UsageError(flag_message(validation_line(exc, FLAGS))) from None


@async_handler
async def cmd_schedules(args: argparse.Namespace) -> int:
    try:
        return await _schedules(args)
    except (UsageError, LookupError):  # already in the flags' words; an unknown user, instance or schedule
        raise
    except ValueError as exc:  # the domain's and the service's checks name model fields
        raise UsageError(flag_message(str(exc))) from None


def _create_model(args: argparse.Namespace) -> ScheduleCreatePreset | ScheduleCreateCustom:
    """The schedule `create` asks for, validated before the database is opened: a cron means a custom one."""
    from recomamp.domain.models import ScheduleCreateCustom, ScheduleCreatePreset

    fields = _schedule_fields(args)
    fields.update(user_email=args.user, instance_id=args.instance)
    if args.preset == "custom" or (args.preset is None and args.cron):
        fields.pop("time_of_day", None)
        custom: ScheduleCreateCustom = _model(ScheduleCreateCustom, fields)
        return custom
    if args.cron:
        raise UsageError(f"--cron: a {args.preset} schedule has no cron expression; use --preset custom")
    preset: ScheduleCreatePreset = _model(ScheduleCreatePreset, {"preset": args.preset or "daily", **fields})
    return preset


async def _schedules(args: argparse.Namespace) -> int:
    from recomamp.domain.models import ScheduleUpdate
    from recomamp.services import schedules as service

    command = args.schedules_command
    if command == "create":
        model = _create_model(args)
    elif command == "update":
        update = _model(ScheduleUpdate, _schedule_fields(args))
    async with database(args) as (_, connection):
        if command == "create":
            schedule_id = await service.create(connection, model, now())
            created = await service.get(connection, schedule_id)
            if args.json:
                print_json(schedule_json(created.model_dump()))
            else:
                print(f"schedule {schedule_id} created; next run {when(created.next_run_at)}")
            return EXIT_OK
        if command == "list":
            schedules = [s.model_dump() for s in await service.list_all(connection, args.user)]
            if args.json:
                print_json([schedule_json(s) for s in schedules])
            else:
                table([list_row(s) for s in schedules], LIST_COLUMNS, wide=args.wide)
            return EXIT_OK
        schedule_id = args.id
        if command == "show":
            schedule = (await service.get(connection, schedule_id)).model_dump()
            if args.json:
                print_json(schedule_json(schedule))
            else:
                print(render_schedule(schedule))
        elif command == "update":
            updated = await service.update(connection, schedule_id, update, now())
            if args.json:
                print_json(schedule_json(updated.model_dump()))
            else:
                print(f"schedule {schedule_id} updated; next run {when(updated.next_run_at)}")
        elif command in ("pause", "resume"):
            await service.set_active(connection, schedule_id, command == "resume", now())
            after = (await service.get(connection, schedule_id)).model_dump()
            if args.json:
                print_json({key: schedule_json(after)[key] for key in ("id", "state", "next_run_at")})
            elif command == "resume":
                print(f"schedule {schedule_id} resumed; next run {when(after['next_run_at'])}")
            else:
                print(f"schedule {schedule_id} paused; `recomamp schedules resume {schedule_id}` starts it again")
        elif command == "run-now":
            await _run_now(connection, schedule_id, args)
        elif command == "preview":
            schedule = (await service.get(connection, schedule_id)).model_dump()
            await _preview(connection, args, paused=not schedule["is_active"])
        elif command == "delete":
            return await _delete(connection, args)
    return EXIT_OK


async def _run_now(connection: Any, schedule_id: int, args: argparse.Namespace) -> None:
    from recomamp.services import schedules as service

    schedule = (await service.get(connection, schedule_id)).model_dump()
    queued = await service.run_now(connection, schedule_id, now(), window_start=args.window_start)
    window = queued.window
    if args.json:
        print_json(
            {
                "run_id": queued.run_id,
                "schedule_id": schedule_id,
                "window_start": window.start_local.date(),
                "window_end": window.end_local.date(),
                "timezone": window.timezone,
                "schedule_state": state_text(schedule),
            }
        )
    else:
        print(
            f"run {queued.run_id} queued for the window "
            f"{window_text(window.start_local, window.end_local, window.timezone)} {window.timezone}; "
            f"a running daemon picks it up at once (`recomamp runs show {queued.run_id}`)"
        )
        if not schedule["is_active"]:
            print(
                f"note: schedule {schedule_id} is paused: this one run goes ahead, its scheduled fires do "
                f"not (`recomamp schedules resume {schedule_id}`)"
            )


async def _preview(connection: Any, args: argparse.Namespace, *, paused: bool) -> None:
    from recomamp.services import schedules as service

    result = await service.preview(connection, args.id, now(), args.count)
    fires = [
        {
            "fire_at": fire,
            "fire_at_local": fire.astimezone(_zone(window.timezone)).strftime("%Y-%m-%d %H:%M %Z"),
            "window_start": window.start_local.date(),
            "window_end": window.end_local.date(),
            "window": window_text(window.start_local, window.end_local, window.timezone),
            "timezone": window.timezone,
        }
        for fire, window in result.fires
    ]
    plan = result.overdue
    if args.json:
        runs = skipped = None
        if plan is not None:
            runs = [{"fire_at": r.fire_at, "window_start": r.window.start_local.date()} for r in plan.runs]
            skipped = [{"fire_at": s.fire_at, "window_start": s.window.start_local.date()} for s in plan.skipped]
        print_json(
            {
                "paused": paused,
                # One timestamp format in JSON: fire_at in UTC; the local reading is fire_at in `timezone`.
                "fires": [{k: v for k, v in fire.items() if k not in ("fire_at_local", "window")} for fire in fires],
                "overdue": None
                if plan is None
                else {"runs": runs, "skipped": skipped, "more_skipped": plan.more_skipped},
            }
        )
        return
    if paused:
        print(
            f"schedule {args.id} is paused: none of these fires happens until "
            f"`recomamp schedules resume {args.id}` (resuming starts from the next fire after that moment)\n"
        )
    table(
        fires,
        [
            Column("fire_at_local", "FIRES AT (LOCAL)"),
            Column("fire_at", "FIRES AT (UTC)"),
            Column("window", "WINDOW"),
            Column("timezone"),
        ],
        wide=args.wide,
    )
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
    from recomamp.services import schedules as service

    active = await service.runs_in_flight(connection, args.id)  # an unknown id: NotFound
    if active and not args.cancel_runs:
        raise UsageError(
            f"schedule {args.id} has {len(active)} run(s) in flight ({', '.join(map(str, active))}); "
            "pass --cancel-runs to cancel them (and their AMC executions) first"
        )
    if active:
        from recomamp.services.instances import cli_replica
        from recomamp.services.runs import cancel, operator_name
        from recomamp.wiring import open_services

        config = load(args)
        async with open_services(config, replica=cli_replica()) as services:
            for run_id in active:
                result = await cancel(services, config, run_id, operator_name())
                if not args.json:
                    print(result.summary())
    await service.delete(connection, args.id)
    if args.json:
        print_json({"id": args.id, "deleted": True, "cancelled_runs": active})
    else:
        print(f"schedule {args.id} deleted, with its run history")
    return EXIT_OK


@async_handler
async def cmd_backfill(args: argparse.Namespace) -> int:
    from recomamp.services import schedules as service
    from recomamp.services.runs import operator_name

    async with database(args) as (_, connection):
        if args.cancel:
            cancelled = await service.cancel_queued_backfill(connection, args.id, operator_name())
            if args.json:
                print_json({"schedule_id": args.id, "cancelled": cancelled})
            else:
                print(f"cancelled {len(cancelled)} backfill run(s) of schedule {args.id} that had not started")
            return EXIT_OK
        if args.start is None or args.end is None:
            raise UsageError("backfill: --from DATE and --to DATE are required (or --cancel)")
        plan = await service.backfill(connection, args.id, args.start, args.end, now(), dry_run=args.dry_run)
        rows = [
            {
                "window_start": w.window.start_local.date(),
                "window_end": w.window.end_local.date(),
                "window": window_text(w.window.start_local, w.window.end_local, w.window.timezone),
                "state": w.state,
                "run_id": w.run_id,
            }
            for w in plan.windows
        ]
        if args.json and not args.wait:
            print_json({"windows": rows, "created": plan.created, "dry_run": args.dry_run})
        elif not args.json:
            table(rows, ["window", "state", "run_id"], wide=args.wide)
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


def _schedule_flags(sub: argparse.ArgumentParser, creating: bool) -> None:
    """The flags `schedules create` and `schedules update` share; `creating` adds the ones only create has."""
    retention = f"AMC keeps about 13 months of data: {AMC_RETENTION_DAYS} days at most"
    sub.add_argument("--name", required=creating, help="what people call it (shown in lists and alerts)")
    sub.add_argument("--sql", help="ad-hoc AMC SQL")
    sub.add_argument("--sql-file", metavar="PATH", help="ad-hoc AMC SQL from a file")
    sub.add_argument("--workflow-id", help="a saved AMC workflow instead of SQL")
    sub.add_argument("--param", action="append", metavar="KEY=VALUE", help="a saved workflow's parameter; repeat")
    if creating:
        sub.add_argument(
            "--preset",
            choices=["daily", "weekly", "monthly", "custom"],
            help="when it fires (default: daily, at --time; custom when --cron is given)",
        )
    sub.add_argument("--time", metavar="HH:MM", help="daily/weekly/monthly: the time of day, in --timezone")
    sub.add_argument("--day-of-week", metavar="DAY", help="weekly: monday..sunday, or 0..6")
    sub.add_argument(
        "--day-of-month", type=bounded_int(1, 31), metavar="N", help="monthly: 1..31 (29-31: the month's last day)"
    )
    sub.add_argument("--cron", metavar="EXPR", help="custom: a 5-field cron expression, in --timezone")
    sub.add_argument(
        "--timezone", metavar="IANA", help="a place's zone, e.g. America/New_York (default UTC; not EST: no DST)"
    )
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
    sub.add_argument(
        "--auto-pause",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="pause the schedule after --failure-threshold failures in a row (default: off)",
    )
    sub.add_argument(
        "--failure-threshold",
        type=bounded_int(1, 1000),
        metavar="N",
        help="with --auto-pause: failures in a row before it pauses (default 3)",
    )
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


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser], common: argparse.ArgumentParser) -> None:
    actions = add_noun(commands, "schedules", "workflow schedules", common, "schedules_command")
    create = add_command(actions, "create", "create a schedule", cmd_schedules, common)
    create.add_argument("--user", required=True, metavar="EMAIL", help="the recomamp user (their email) it runs as")
    create.add_argument(
        "--instance", required=True, metavar="INSTANCE_ID", help="one of the user's AMC instances (`instances list`)"
    )
    _schedule_flags(create, creating=True)
    add_command(actions, "list", "list schedules", cmd_schedules, common).add_argument(
        "--user", metavar="EMAIL", help="only this user's schedules"
    )
    schedule_id = bounded_int(1, 2**62)
    for action, text in (
        ("show", "show a schedule"),
        ("pause", "pause a schedule"),
        ("resume", "resume a schedule from its next fire"),
    ):
        add_command(actions, action, text, cmd_schedules, common).add_argument(
            "id", type=schedule_id, help="the schedule's id (`schedules list`)"
        )
    delete = add_command(actions, "delete", "delete a schedule and its run history", cmd_schedules, common)
    delete.add_argument("id", type=schedule_id, help="the schedule's id (`schedules list`)")
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
    run_now.add_argument("id", type=schedule_id, help="the schedule's id (`schedules list`)")
    run_now.add_argument("--window-start", type=iso_date, metavar="DATE", help="another window of the grid")
    update = add_command(actions, "update", "change a schedule; only the flags given change", cmd_schedules, common)
    update.add_argument("id", type=schedule_id, help="the schedule's id (`schedules list`)")
    _schedule_flags(update, creating=False)
    preview = add_command(
        actions, "preview", "the next fires and their windows, and what an overdue poll would do", cmd_schedules, common
    )
    preview.add_argument("id", type=schedule_id, help="the schedule's id (`schedules list`)")
    preview.add_argument("--count", type=bounded_int(1, 1000), default=5, help="how many fires (default 5)")
    backfill = add_command(
        actions, "backfill", "one run per grid window in a date range, after scheduled runs", cmd_backfill, common
    )
    backfill.add_argument("id", type=schedule_id, help="the schedule's id (`schedules list`)")
    backfill.add_argument("--from", dest="start", type=iso_date, metavar="DATE", help="first window start (YYYY-MM-DD)")
    backfill.add_argument("--to", dest="end", type=iso_date, metavar="DATE", help="last window start (YYYY-MM-DD)")
    backfill.add_argument("--dry-run", action="store_true", help="show the windows; create nothing")
    backfill.add_argument("--wait", action="store_true", help="follow the runs until they end")
    backfill.add_argument("--cancel", action="store_true", help="cancel this schedule's backfill runs not yet started")
    from recomamp.cli import coverage  # `schedules coverage`, `schedules grace`, `backfill --missing`, `coverage`

    coverage.register(commands, common, actions)

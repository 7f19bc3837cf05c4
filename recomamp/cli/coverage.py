"""`recomamp schedules coverage ID`, `recomamp schedules backfill ID --missing`, `recomamp schedules grace ID`
and `recomamp coverage --user EMAIL`: is my data complete and fresh?

The grid is a calendar: one row a week (Monday first), one cell the window that starts that day, coloured
by state on a terminal and a plain letter otherwise (and with NO_COLOR set), with a legend.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from recomamp.cli.common import EXIT_OK, UsageError, add_command, async_handler, bounded_int, database, iso_date, now
from recomamp.cli.output import Column, print_json, render_table, table, terminal_width, utc_text, window_text
from recomamp.domain.coverage import LETTERS, MAX_GRACE_HOURS, MEANINGS, WindowCoverage, WindowState
from recomamp.domain.schedules import Window

# ANSI colours per state, for a terminal.
COLOURS: dict[WindowState, str] = {
    WindowState.LOADED: "32",
    WindowState.FAILED: "1;31",
    WindowState.RUNNING: "34",
    WindowState.QUEUED: "36",
    WindowState.WAITING_QUOTA: "33",
    WindowState.CANCELLED: "35",
    WindowState.SKIPPED: "1;33",
    WindowState.NEVER_RUN: "1;31",
}
WEEKDAY_HEADER = "Mo Tu We Th Fr Sa Su"


def _utc(value: datetime | None) -> str | None:
    return utc_text(value) if value is not None else None


def _window_text(window: Window) -> str:
    return f"[{window.start_local:%Y-%m-%d}, {window.end_local:%Y-%m-%d}) {window.timezone}"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC") if value is not None else "-"


def use_colour(stream: Any = None) -> bool:
    stream = stream or sys.stdout
    return bool(getattr(stream, "isatty", lambda: False)()) and "NO_COLOR" not in os.environ


# --- rendering (pure: what the test compares line by line) ----------------------------------------------


def render_grid(windows: list[WindowCoverage], *, colour: bool = False) -> list[str]:
    """The calendar: a row per week that has a window, a cell per day (blank where no window starts)."""
    if not windows:
        return ["(no complete window in the range)"]
    by_day = {w.window.start_local.date(): w for w in windows}
    first = min(by_day)
    monday = first - timedelta(days=first.weekday())
    last = max(by_day)
    lines = [f"{'week of':<10}  {WEEKDAY_HEADER}"]
    while monday <= last:
        days = [monday + timedelta(days=i) for i in range(7)]
        if any(day in by_day for day in days):
            cells = [_cell(by_day.get(day), colour) for day in days]
            lines.append(f"{monday.isoformat():<10}  {' '.join(cells)}".rstrip())
        monday += timedelta(days=7)
    lines.append("legend: " + "  ".join(f"{_letter(state, colour)} {MEANINGS[state]}" for state in WindowState))
    return lines


def _letter(state: WindowState, colour: bool) -> str:
    return f"\x1b[{COLOURS[state]}m{LETTERS[state]}\x1b[0m" if colour else LETTERS[state]


def _cell(window: WindowCoverage | None, colour: bool) -> str:
    return "  " if window is None else _letter(window.state, colour) + " "


def _counts_text(counts: dict[str, int]) -> str:
    shown = [f"{n} {MEANINGS[WindowState(state)]}" for state, n in counts.items() if n]
    return ", ".join(shown) if shown else "none"


def render_coverage(covered: Any, *, colour: bool = False) -> list[str]:
    """The whole `schedules coverage` screen for a ScheduleCoverage."""
    schedule = covered.schedule
    coverage = covered.coverage
    windows = coverage.windows
    lines = [
        f"schedule {schedule['id']} ({schedule['name']}, {schedule['user_email']}): windows starting "
        f"{covered.first.isoformat()} .. {covered.last.isoformat()} ({covered.cadence.timezone})"
        + ("" if schedule["is_active"] else ", paused"),
        "",
        *render_grid(windows, colour=colour),
        "",
        f"{len(windows)} windows: {_counts_text(coverage.counts())}",
    ]
    newest = coverage.newest_loaded
    if newest is not None:
        rows = f"{newest.rows:,} rows" if newest.rows is not None else "rows unknown"
        lines.append(
            f"newest loaded in the range: {_window_text(newest.window)}, {rows}, loaded {_when(newest.loaded_at)}"
        )
    fresh = covered.freshness
    if fresh is not None:
        if fresh.late:
            lines.append(f"LATE: newer data was due by {_when(fresh.deadline)}")
        elif fresh.deadline is not None:
            lines.append(f"fresh: the next newer window is due by {_when(fresh.deadline)}")
    if coverage.off_grid_runs:
        lines.append(f"{coverage.off_grid_runs} run(s) in the range are of windows off the current grid (not shown)")
    missing = coverage.missing
    if missing:
        lines.append(
            f"{len(missing)} window(s) missing or failed: `recomamp schedules backfill {schedule['id']} --missing "
            f"--since {covered.first.isoformat()} --until {covered.last.isoformat()} --dry-run` lists them"
        )
    return lines


def window_json(window: WindowCoverage) -> dict[str, Any]:
    return {
        "window_start": window.window.start_local.date().isoformat(),
        "window_end": window.window.end_local.date().isoformat(),
        "start": _utc(window.window.start),
        "end": _utc(window.window.end),
        "fire_at": _utc(window.fire_at),
        "state": window.state.value,
        "run_id": window.run_id,
        "runs": window.runs,
        "rows": window.rows,
        "loaded_at": _utc(window.loaded_at),
        "error_kind": window.error_kind,
    }


def _freshness_json(fresh: Any, moment: datetime) -> dict[str, Any] | None:
    if fresh is None:
        return None
    return {
        "late": fresh.late,
        "newest_window_end": _utc(fresh.newest_end),
        "deadline": _utc(fresh.deadline),
        "late_by_seconds": fresh.late_by(moment).total_seconds(),
    }


def coverage_json(covered: Any, moment: datetime) -> dict[str, Any]:
    schedule = covered.schedule
    coverage = covered.coverage
    newest = coverage.newest_loaded
    return {
        "schedule": {
            "id": schedule["id"],
            "name": schedule["name"],
            "user_email": schedule["user_email"],
            "timezone": covered.cadence.timezone,
            "is_active": schedule["is_active"],
        },
        "since": covered.first.isoformat(),
        "until": covered.last.isoformat(),
        "counts": coverage.counts(),
        "missing": len(coverage.missing),
        "off_grid_runs": coverage.off_grid_runs,
        "newest_loaded": window_json(newest) if newest is not None else None,
        "freshness": _freshness_json(covered.freshness, moment),
        "windows": [window_json(w) for w in coverage.windows],
    }


# --- commands -------------------------------------------------------------------------------------------


@async_handler
async def cmd_coverage(args: argparse.Namespace) -> int:
    from recomamp.services import coverage as service

    moment = now()
    async with database(args) as (_, connection):
        covered = await service.schedule_coverage(connection, args.id, moment, since=args.since, until=args.until)
    if getattr(args, "json", False):
        print_json(coverage_json(covered, moment))
    else:
        print("\n".join(render_coverage(covered, colour=use_colour())))
    return EXIT_OK


async def backfill_missing(args: argparse.Namespace) -> int:
    from recomamp.services import coverage as service

    if getattr(args, "start", None) is not None or getattr(args, "end", None) is not None:
        raise UsageError("backfill --missing: give the range with --since/--until, not --from/--to")
    if getattr(args, "cancel", False):
        raise UsageError("backfill: --missing and --cancel do not go together")
    async with database(args) as (_, connection):
        covered, plan = await service.backfill_missing(
            connection, args.id, now(), since=args.since, until=args.until, dry_run=args.dry_run
        )
    missing = {w.window.start for w in covered.coverage.missing}
    states = {w.window.start: w.state.value for w in covered.coverage.windows}
    rows = [
        {
            "window_start": w.window.start_local.date(),
            "window_end": w.window.end_local.date(),
            "window": window_text(w.window.start, w.window.end, w.window.timezone),
            "was": states.get(w.window.start, "never_run"),
            "state": w.state,
            "run_id": w.run_id,
        }
        for w in plan.windows
        if w.window.start in missing or w.state == "created"
    ]
    if getattr(args, "json", False) and not args.wait:
        print_json({"windows": rows, "created": plan.created, "dry_run": args.dry_run})
    elif not getattr(args, "json", False):
        if rows:
            table(rows, ["window", "was", "state", "run_id"], wide=getattr(args, "wide", False))
        else:
            print("(no missing or failed window)")
        verb = "would create" if args.dry_run else "created"
        count = len(plan.to_create) if args.dry_run else len(plan.created)
        print(
            f"{verb} {count} backfill run(s) for the missing or failed windows of schedule {args.id} starting "
            f"{covered.first.isoformat()} .. {covered.last.isoformat()}; "
            f"{len(covered.coverage.windows) - len(missing)} window(s) loaded or in flight"
        )
    if args.wait and plan.created:
        from recomamp.cli.runs import watch_runs

        return await watch_runs(args, plan.created)
    return EXIT_OK


def render_user_lines(lines: list[Any], *, width: int | None = None) -> str:
    """`coverage --user`: one line per schedule."""
    if not lines:
        return "(the user has no schedules)"
    rows = []
    for line in lines:
        fresh = line.freshness
        newest = line.newest_loaded
        state = "error" if line.error else ("paused" if fresh is None else ("LATE" if fresh.late else "fresh"))
        rows.append(
            {
                "id": line.schedule["id"],
                "name": line.schedule["name"],
                "state": state,
                "range": f"{line.first.isoformat()}..{line.last.isoformat()}" if line.first and line.last else None,
                "loaded": line.counts.get("loaded", 0),
                "missing": line.missing,
                "failed": line.counts.get("failed", 0),
                "newest": f"{window_text(newest.start, newest.end, newest.timezone)} {newest.timezone}"
                if newest
                else line.error,
            }
        )
    columns = [
        Column("id", minimum=2),
        Column("name", flexible=True),
        Column("state", minimum=5),
        Column("range", minimum=22),
        Column("loaded", minimum=6),
        Column("missing", minimum=7),
        Column("failed", minimum=6),
        Column("newest", "NEWEST LOADED", flexible=True),
    ]
    return render_table(rows, columns, width=width)


@async_handler
async def cmd_user_coverage(args: argparse.Namespace) -> int:
    from recomamp.services import coverage as service

    moment = now()
    async with database(args) as (_, connection):
        lines = await service.user_coverage(connection, args.user, moment, since=args.since)
    if getattr(args, "json", False):
        print_json(
            [
                {
                    "schedule_id": line.schedule["id"],
                    "name": line.schedule["name"],
                    "is_active": line.schedule["is_active"],
                    "since": line.first.isoformat() if line.first else None,
                    "until": line.last.isoformat() if line.last else None,
                    "counts": line.counts,
                    "missing": line.missing,
                    "newest_loaded": {
                        "window_start": line.newest_loaded.start_local.date().isoformat(),
                        "window_end": line.newest_loaded.end_local.date().isoformat(),
                        "timezone": line.newest_loaded.timezone,
                    }
                    if line.newest_loaded
                    else None,
                    "freshness": _freshness_json(line.freshness, moment),
                    "error": line.error,
                }
                for line in lines
            ]
        )
    else:
        print(render_user_lines(lines, width=terminal_width(getattr(args, "wide", False))))
    return EXIT_OK


def _grace_hours(text: str) -> float | None:
    if text.strip().lower() == "default":
        return None
    try:
        hours = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of hours; use e.g. 6, 0.5 or 'default'") from None
    if not 0 <= hours <= MAX_GRACE_HOURS:
        raise argparse.ArgumentTypeError(f"{hours:g} is out of range; use 0 to {MAX_GRACE_HOURS} hours, or 'default'")
    return hours


@async_handler
async def cmd_grace(args: argparse.Namespace) -> int:
    from recomamp.domain.coverage import DEFAULT_GRACE
    from recomamp.services import coverage as service

    async with database(args) as (_, connection):
        await service.set_grace(connection, args.id, args.hours)
    shown = (
        f"{args.hours:g} h" if args.hours is not None else f"the default ({DEFAULT_GRACE.total_seconds() / 3600:g} h)"
    )
    print(f"schedule {args.id}: late once newer data is {shown} overdue")
    return EXIT_OK


# --- registration ---------------------------------------------------------------------------------------


def register_schedule_actions(actions: Any, common: argparse.ArgumentParser) -> None:
    """`schedules coverage`, `schedules grace`, and `--missing` on `schedules backfill` (whose handler goes on
    serving every other backfill)."""
    schedule_id = bounded_int(1, 2**62)
    coverage = add_command(
        actions,
        "coverage",
        "every window of the schedule's grid in a range, with its state (loaded, failed, never run…), as a calendar",
        cmd_coverage,
        common,
    )
    coverage.add_argument("id", type=schedule_id)
    _range_flags(coverage)
    grace = add_command(
        actions,
        "grace",
        "how long past the fire that should load newer data the schedule may be before it is late",
        cmd_grace,
        common,
    )
    grace.add_argument("id", type=schedule_id)
    grace.add_argument("hours", type=_grace_hours, metavar="HOURS", help="hours (0 to 744), or 'default' (6)")
    backfill = actions.choices.get("backfill")
    if backfill is not None:
        backfill.add_argument(
            "--missing",
            action="store_true",
            help="only windows without a successful run (never run, failed, cancelled, skipped); with --since/--until",
        )
        _range_flags(backfill)
        backfill.set_defaults(handler=_with_missing(backfill.get_default("handler")))


def _range_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since", type=iso_date, metavar="DATE", help="first window start (default: the schedule's first window)"
    )
    parser.add_argument("--until", type=iso_date, metavar="DATE", help="last window start (default: today)")


def _with_missing(handler: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    run_missing = async_handler(backfill_missing)

    def dispatch(args: argparse.Namespace) -> int:
        if args.missing:
            return run_missing(args)
        if args.since is not None or args.until is not None:
            raise UsageError("backfill: --since/--until go with --missing; for a plain backfill use --from/--to")
        return handler(args)

    return dispatch


def register(commands: Any, common: argparse.ArgumentParser, schedule_actions: Any) -> None:
    """`recomamp coverage --user EMAIL`, and the `schedules` actions above (called by the `schedules` noun, so
    that the parser's list of nouns stays the CLI's own)."""
    register_schedule_actions(schedule_actions, common)
    user = add_command(
        commands,
        "coverage",
        "a user's schedules, one line each: loaded, missing and failed windows, and the newest loaded one",
        cmd_user_coverage,
        common,
    )
    user.add_argument("--user", required=True, metavar="EMAIL")
    user.add_argument(
        "--since", type=iso_date, metavar="DATE", help="first window start (default: the last 30 days of fires)"
    )

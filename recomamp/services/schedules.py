"""Operations on schedules, shared by the CLI (and any later API): create, update, pause, run now, backfill.

Windows are the unit of truth. A schedule's fires define a grid of windows; every run (scheduled,
manual, catch-up, backfill, rerun) runs one window of that grid, and at most one run per window is
active at a time (the database enforces it). Overlap is decided, never accidental:
- Without key columns, a window's load replaces exactly that window's rows. Windows that overlap each
  other (a lookback longer than the cadence), or an edit that moves the grid across windows already
  loaded, would hold rows twice: refused, unless the schedule names key columns (MERGE: the newer
  result wins per key) or says `--allow-overlap` (each overlapping row is kept once per window).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

from recomamp.domain.misfires import FirePlan, MisfirePolicy, plan_due
from recomamp.domain.models import ScheduleCreateCustom, ScheduleCreatePreset, ScheduleResponse, ScheduleUpdate
from recomamp.domain.runs import PRIORITY, Trigger
from recomamp.domain.schedules import (
    Cadence,
    Window,
    fire_for_window_start,
    fires_after,
    latest_fire,
    nearest_window_starts,
    next_fire,
    window_for,
    windows_between,
    windows_overlap,
)
from recomamp.store import catalog
from recomamp.store import runs as run_store
from recomamp.store import schedules as schedule_store
from recomamp.store.db import Connection
from recomamp.store.schedules import cadence_from_row

CADENCE_FIELDS = frozenset(
    {"time_of_day", "day_of_week", "day_of_month", "cron_expression", "timezone", "lookback_days", "data_lag_days"}
)


class ScheduleRefused(ValueError):
    """A request that would break the table's time series, or that names a window off the grid."""


def _overlap_message(what: str) -> str:
    return (
        f"{what}: rows would be loaded twice (a window's load replaces exactly that window). Give key columns "
        "with --snowflake-key-columns (MERGE: the newer result wins per key), or pass --allow-overlap to keep each "
        "overlapping row once per window (count by RECOMAMP_WINDOW_START then)"
    )


def _check_self_overlap(
    cadence: Cadence, now: datetime, *, keys: list[str] | None, allow: bool, snowflake: bool
) -> None:
    if not snowflake or keys or allow:
        return
    overlap = windows_overlap(cadence, now)
    if overlap is not None:
        earlier, later = overlap
        raise ScheduleRefused(
            _overlap_message(
                f"lookback_days: windows overlap each other ([{earlier.start_local:%Y-%m-%d}, "
                f"{earlier.end_local:%Y-%m-%d}) and [{later.start_local:%Y-%m-%d}, {later.end_local:%Y-%m-%d}))"
            )
        )


async def create(connection: Connection, schedule: ScheduleCreatePreset | ScheduleCreateCustom, now: datetime) -> int:
    user_id = await catalog.user_id_for(connection, schedule.user_email)
    instance = await catalog.instance_row_id(connection, user_id, schedule.instance_id)
    cadence = schedule.cadence()
    _check_self_overlap(
        cadence,
        now,
        keys=schedule.snowflake_key_columns,
        allow=schedule.allow_overlap,
        snowflake=schedule.snowflake_on,
    )
    return await schedule_store.create_schedule(
        connection, schedule=schedule, owner_id=user_id, instance_row_id=instance, next_run_at=next_fire(cadence, now)
    )


def _partial_overlaps(
    loaded: list[tuple[datetime, datetime]], windows: list[Window]
) -> tuple[tuple[datetime, datetime], Window] | None:
    exact = {(w.start, w.end) for w in windows}
    for start, end in loaded:
        if (start, end) in exact:
            continue
        for window in windows:
            if window.start < end and start < window.end:
                return (start, end), window
    return None


async def update(connection: Connection, schedule_id: int, update: ScheduleUpdate, now: datetime) -> ScheduleResponse:
    row = await schedule_store.schedule_row(connection, schedule_id)
    changes = update.changes()
    merged: dict[str, Any] = {**row, **changes}
    if "snowflake_table_name" in changes and "snowflake_enabled" not in changes and changes["snowflake_table_name"]:
        merged["snowflake_enabled"] = changes["snowflake_enabled"] = True
    if bool(merged["sql_query"]) == bool(merged["workflow_id"]):
        raise ValueError("sql_query / workflow_id: a schedule runs exactly one: ad-hoc SQL or a saved workflow")
    if merged["snowflake_enabled"] and not merged["snowflake_table_name"]:
        raise ValueError("snowflake_table_name: required when Snowflake is enabled")
    if merged["parameter_values"] and not merged["workflow_id"]:
        raise ValueError("parameter_values: only a saved workflow (workflow_id) takes parameters")
    old_cadence = cadence_from_row(row)
    cadence = cadence_from_row(merged)  # raises InvalidSchedule for a bad combination
    grid_moved = cadence != old_cadence
    snowflake_on = bool(merged["snowflake_enabled"])
    keys = merged["snowflake_key_columns"]
    allow = bool(merged["allow_overlap"])
    if grid_moved:
        _check_self_overlap(cadence, now, keys=keys, allow=allow, snowflake=snowflake_on)
        if snowflake_on and not keys and not allow:
            loaded = await schedule_store.loaded_windows(connection, schedule_id)
            if loaded:
                tz_first = loaded[0][0].astimezone(cadence.tz).date() - timedelta(days=1)
                tz_last = max(end for _, end in loaded).astimezone(cadence.tz).date() + timedelta(days=1)
                reach = timedelta(days=(cadence.lookback_days or 32) + 1)
                new_windows = [w for _, w in windows_between(cadence, tz_first - reach, tz_last)]
                clash = _partial_overlaps(loaded, new_windows)
                if clash is not None:
                    (start, end), window = clash
                    raise ScheduleRefused(
                        _overlap_message(
                            f"the edit moves the grid: the new window [{window.start_local:%Y-%m-%d}, "
                            f"{window.end_local:%Y-%m-%d}) overlaps the loaded window [{start:%Y-%m-%d}, "
                            f"{end:%Y-%m-%d}) (UTC) without being it"
                        )
                    )
    next_run = next_fire(cadence, now) if grid_moved and row["is_active"] else None
    await schedule_store.update_schedule(connection, schedule_id, changes, next_run)
    return await schedule_store.get_schedule(connection, schedule_id)


async def set_active(connection: Connection, schedule_id: int, active: bool, now: datetime) -> None:
    row = await schedule_store.schedule_row(connection, schedule_id)
    # Resuming starts from the next fire after now: the fires missed while paused are not owed (backfill them).
    next_run = next_fire(cadence_from_row(row), now) if active else None
    await schedule_store.set_active(connection, schedule_id, active, next_run)


@dataclass(frozen=True)
class QueuedRun:
    run_id: int
    window: Window


def _window_label(window: Window) -> str:
    return f"[{window.start_local:%Y-%m-%d}, {window.end_local:%Y-%m-%d}) {window.timezone}"


async def run_now(
    connection: Connection, schedule_id: int, now: datetime, *, window_start: date | None = None
) -> QueuedRun:
    """A manual run of one window of the schedule's grid: its latest complete window, or the one starting on
    `window_start`. Refused (with the run's id) while that window has an active run."""
    row = await schedule_store.schedule_row(connection, schedule_id)
    cadence = cadence_from_row(row)
    if window_start is None:
        fire = latest_fire(cadence, now)
        if fire is None:
            raise ScheduleRefused(
                f"schedule {schedule_id} has not fired yet, so it has no complete window; pick one with --window-start"
            )
    else:
        fire = fire_for_window_start(cadence, window_start)
        if fire is None:
            near = ", ".join(d.isoformat() for d in nearest_window_starts(cadence, window_start))
            raise ScheduleRefused(
                f"window_start: {window_start.isoformat()} is not the start of a window of schedule {schedule_id} "
                f"(its windows start on {near or 'no nearby date'}); see `recomamp schedules preview {schedule_id}`"
            )
        if fire > now:
            raise ScheduleRefused(
                f"window_start: the window starting {window_start.isoformat()} is not complete yet (its fire is "
                f"{fire.isoformat()})"
            )
    window = window_for(cadence, fire)
    await _refuse_if_active(connection, schedule_id, window)
    created = await run_store.insert_runs(
        connection,
        [
            run_store.NewRun(
                schedule_id=schedule_id,
                scheduled_for=now,
                window_start=window.start,
                window_end=window.end,
                window_timezone=window.timezone,
                trigger=Trigger.MANUAL.value,
                priority=PRIORITY[Trigger.MANUAL],
            )
        ],
    )
    if not created:
        await _refuse_if_active(connection, schedule_id, window)
        raise ScheduleRefused(f"a run for the window {_window_label(window)} could not be created; try again")
    await schedule_store.notify_wakeup(connection)
    return QueuedRun(created[0].id, window)


async def _refuse_if_active(connection: Connection, schedule_id: int, window: Window) -> None:
    active = await run_store.active_run_for_window(connection, schedule_id, window.start, window.end)
    if active is not None:
        holder = f" on {active['lease_owner']}" if active.get("lease_owner") else ""
        raise ScheduleRefused(
            f"run {active['id']} is already {active['status']}{holder} for the window {_window_label(window)}; "
            f"follow it with `recomamp runs show {active['id']}`, or cancel it with "
            f"`recomamp runs cancel {active['id']}`"
        )


@dataclass(frozen=True)
class BackfillWindow:
    window: Window
    fire_at: datetime
    state: str  # new | succeeded | pending | running
    run_id: int | None


@dataclass(frozen=True)
class BackfillPlan:
    windows: list[BackfillWindow]
    created: list[int]

    @property
    def to_create(self) -> list[BackfillWindow]:
        return [w for w in self.windows if w.state == "new"]


async def backfill(
    connection: Connection,
    schedule_id: int,
    first: date,
    last: date,
    now: datetime,
    *,
    dry_run: bool = False,
) -> BackfillPlan:
    """One run per complete grid window starting within [first, last]. Idempotent: a window that succeeded,
    or that has a run in flight, gets no new run. Backfill runs go after scheduled ones (priority)."""
    if last < first:
        raise ScheduleRefused(f"--to {last.isoformat()} is before --from {first.isoformat()}")
    row = await schedule_store.schedule_row(connection, schedule_id)
    cadence = cadence_from_row(row)
    grid = [(fire, window) for fire, window in windows_between(cadence, first, last) if fire <= now]
    if not grid:
        near = ", ".join(d.isoformat() for d in nearest_window_starts(cadence, first))
        raise ScheduleRefused(
            f"no complete window of schedule {schedule_id} starts between {first.isoformat()} and {last.isoformat()} "
            f"(windows start on {near or 'other dates'}); see `recomamp schedules preview {schedule_id}`"
        )
    states = await run_store.window_states(connection, schedule_id, grid[0][1].start, grid[-1][1].start)
    windows: list[BackfillWindow] = []
    for fire, window in grid:
        status, run_id = states.get((window.start, window.end), ("new", None))
        if status in ("failed", "cancelled"):
            status, run_id = "new", None
        windows.append(BackfillWindow(window, fire, status, run_id))
    plan = BackfillPlan(windows, [])
    if dry_run or not plan.to_create:
        return plan
    async with connection.transaction():
        created = await run_store.insert_runs(
            connection,
            [
                run_store.NewRun(
                    schedule_id=schedule_id,
                    scheduled_for=item.fire_at,
                    window_start=item.window.start,
                    window_end=item.window.end,
                    window_timezone=item.window.timezone,
                    trigger=Trigger.BACKFILL.value,
                    priority=PRIORITY[Trigger.BACKFILL],
                )
                for item in plan.to_create
            ],
        )
        await schedule_store.notify_wakeup(connection)
    by_window = {c.window_start: c.id for c in created}
    return BackfillPlan(
        [
            BackfillWindow(
                w.window,
                w.fire_at,
                "created" if w.window.start in by_window else w.state,
                by_window.get(w.window.start, w.run_id),
            )
            for w in windows
        ],
        [c.id for c in created],
    )


@dataclass(frozen=True)
class Preview:
    fires: list[tuple[datetime, Window]]
    overdue: FirePlan | None  # what the next poll does, when the schedule is overdue


async def preview(connection: Connection, schedule_id: int, now: datetime, count: int) -> Preview:
    row = await schedule_store.schedule_row(connection, schedule_id)
    cadence = cadence_from_row(row)
    fires: list[tuple[datetime, Window]] = []
    for fire in fires_after(cadence, now):
        fires.append((fire, window_for(cadence, fire)))
        if len(fires) >= count:
            break
    overdue = None
    if row["is_active"] and row["next_run_at"] is not None and row["next_run_at"] <= now:
        overdue = plan_due(
            cadence, row["next_run_at"], now, MisfirePolicy(row["misfire_policy"]), row["catch_up_limit"]
        )
    return Preview(fires, overdue)


async def get(connection: Connection, schedule_id: int) -> ScheduleResponse:
    """One schedule; an unknown id is NotFound (a LookupError) that says where to look."""
    return await schedule_store.get_schedule(connection, schedule_id)


async def list_all(connection: Connection, user_email: str | None = None) -> list[ScheduleResponse]:
    """Every schedule, or one user's, by id."""
    return await schedule_store.list_schedules(connection, user_email)


async def runs_in_flight(connection: Connection, schedule_id: int) -> list[int]:
    """The schedule's runs not yet ended (what a delete would have to cancel). An unknown id is NotFound."""
    active = await run_store.active_runs_of_schedule(connection, schedule_id)
    await schedule_store.schedule_row(connection, schedule_id)  # NotFound first
    return active


async def delete(connection: Connection, schedule_id: int) -> None:
    """Delete the schedule with its run history (cancel its runs in flight first: `runs_in_flight`)."""
    await schedule_store.delete_schedule(connection, schedule_id)


async def cancel_queued_backfill(connection: Connection, schedule_id: int, operator: str) -> list[int]:
    """Cancel the schedule's backfill runs that have not started; their ids."""
    return await run_store.cancel_queued_backfill(connection, schedule_id, operator)

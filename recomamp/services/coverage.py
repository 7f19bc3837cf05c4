"""Coverage and freshness: which windows of a schedule's grid are loaded, failed, in flight or never run, and
whether its data is late. Shared by the CLI (`schedules coverage`, `coverage --user`, `backfill --missing`),
`recomamp status` and the daemon's freshness gauges and alerts.

The grid is the one of recomamp.domain.schedules (windows_between), the same one backfill and run-now use;
`backfill --missing` is the backfill service over the coverage range, so its quota rules and idempotence
are the backfill's own.
"""

from __future__ import annotations

import asyncio
from array import array
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from recomamp.domain.alerts import LatenessNotice, late_event, recovered_event
from recomamp.domain.coverage import (
    DEFAULT_GRACE,
    Coverage,
    Freshness,
    FreshnessChange,
    RunFact,
    complete,
    cover,
    episode_change,
    freshness,
    lookback_spans,
    missing_in_lookback,
)
from recomamp.domain.schedules import (
    Cadence,
    InvalidSchedule,
    Window,
    next_fire,
    window_for,
    windows_between,
)
from recomamp.logs import get_logger
from recomamp.services import schedules as schedule_service
from recomamp.services.schedules import ScheduleRefused
from recomamp.store import coverage as coverage_store
from recomamp.store import schedules as schedule_store
from recomamp.store.catalog import NotFound
from recomamp.store.db import Connection, Queryable
from recomamp.store.schedules import cadence_from_row

log = get_logger(__name__)

# A coverage range longer than this is refused: AMC keeps about 13 months, so ten years is history enough.
MAX_RANGE = timedelta(days=3660)
# `coverage --user`, without --since: the windows of the last 30 days of fires.
USER_LOOKBACK = timedelta(days=30)


def grace_of(row: dict[str, Any]) -> timedelta:
    seconds = row.get("freshness_grace_seconds")
    return timedelta(seconds=seconds) if seconds is not None else DEFAULT_GRACE


def _grid(cadence: Cadence, first: date, last: date, now: datetime) -> list[tuple[datetime, Window]]:
    return complete(windows_between(cadence, first, last), now)


def _today(cadence: Cadence, now: datetime) -> date:
    return now.astimezone(cadence.tz).date()


def _first_window_start(cadence: Cadence, created_at: datetime) -> date:
    """Where a schedule's own fires start covering: the window of its first fire after it was created."""
    return window_for(cadence, next_fire(cadence, created_at)).start_local.date()


@dataclass(frozen=True)
class ScheduleCoverage:
    schedule: dict[str, Any]  # id, name, user_email, is_active, the cadence columns
    cadence: Cadence
    first: date  # the range of window starts, local dates
    last: date
    coverage: Coverage
    freshness: Freshness | None  # None for a paused schedule: it is not expected to load


def _check_range(first: date, last: date) -> None:
    if last < first:
        raise ScheduleRefused(f"--until {last.isoformat()} is before --since {first.isoformat()}")
    if last - first > MAX_RANGE:
        raise ScheduleRefused(
            f"--since {first.isoformat()} .. --until {last.isoformat()} spans more than {MAX_RANGE.days} days; "
            "narrow it"
        )


async def schedule_coverage(
    connection: Queryable, schedule_id: int, now: datetime, *, since: date | None = None, until: date | None = None
) -> ScheduleCoverage:
    """Every complete window of the schedule's grid starting within [since, until] (default: from the oldest
    window it has a run for, or its first own fire, to today), each with its state."""
    rows = await coverage_store.schedules_freshness(connection, schedule_id=schedule_id, include_paused=True)
    if not rows:
        raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
    row = rows[0]
    cadence = cadence_from_row(row)
    if since is None:
        oldest = await coverage_store.oldest_window(connection, schedule_id)
        since = _first_window_start(cadence, row["created_at"])
        if oldest is not None:
            since = min(since, oldest.astimezone(cadence.tz).date())
    until = until or _today(cadence, now)
    _check_range(since, until)
    grid = await asyncio.to_thread(_grid, cadence, since, until, now)
    coverage = await _cover(connection, {schedule_id: grid}, since, until)
    return ScheduleCoverage(
        row,
        cadence,
        since,
        until,
        coverage[schedule_id],
        _freshness(row, cadence, now) if row["is_active"] else None,
    )


def _freshness(row: dict[str, Any], cadence: Cadence, now: datetime) -> Freshness:
    return freshness(cadence, row["newest_end"], row["created_at"], now, grace_of(row))


async def _cover(
    connection: Queryable, grids: dict[int, list[tuple[datetime, Window]]], first: date, last: date
) -> dict[int, Coverage]:
    # The runs whose window starts in the range, with two days of slack for any timezone; then each grid
    # keeps the runs within its own window starts (a run of a window off the grid is counted apart).
    low = datetime.combine(first - timedelta(days=2), time(), tzinfo=UTC)
    high = datetime.combine(last + timedelta(days=2), time(), tzinfo=UTC)
    runs = await coverage_store.window_runs(connection, list(grids), low, high)
    return {schedule_id: cover(grid, _on_range(runs[schedule_id], grid)) for schedule_id, grid in grids.items()}


def _on_range(runs: list[Any], grid: list[tuple[datetime, Window]]) -> list[Any]:
    """Off-grid runs count only within the range's window starts (not the slack around it)."""
    if not grid:
        return []
    low, high = grid[0][1].start, grid[-1][1].start
    return [r for r in runs if low <= r.window_start <= high]


# --- backfill --missing ---------------------------------------------------------------------------------


async def backfill_missing(
    connection: Connection,
    schedule_id: int,
    now: datetime,
    *,
    since: date | None = None,
    until: date | None = None,
    dry_run: bool = False,
) -> tuple[ScheduleCoverage, schedule_service.BackfillPlan]:
    """A backfill of the windows of the coverage range that have no successful run and none in flight
    (never run, skipped, failed, cancelled): the backfill service itself decides, so a second call creates
    nothing, and the runs go after scheduled ones under the same quota rules."""
    covered = await schedule_coverage(connection, schedule_id, now, since=since, until=until)
    if not covered.coverage.windows:
        raise ScheduleRefused(
            f"schedule {schedule_id} has no complete window starting between {covered.first.isoformat()} and "
            f"{covered.last.isoformat()}; see `recomamp schedules coverage {schedule_id}`"
        )
    plan = await schedule_service.backfill(
        connection, schedule_id, covered.first, covered.last, now, dry_run=dry_run or not covered.coverage.missing
    )
    return covered, plan


# --- a user's schedules ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class CoverageLine:
    schedule: dict[str, Any]
    first: date | None
    last: date | None
    counts: dict[str, int]
    missing: int
    newest_loaded: Window | None  # over all of the schedule's history, not only the range
    freshness: Freshness | None
    error: str | None = None  # a schedule whose cadence cannot be computed


async def user_coverage(
    connection: Queryable, email: str, now: datetime, *, since: date | None = None
) -> list[CoverageLine]:
    """One line per schedule of the user: its windows' counts since `since` (default: the last 30 days of
    fires) and its newest loaded window."""
    if not await coverage_store.user_exists(connection, email):
        raise NotFound(f"user: no user {email}; see `recomamp users list`")
    rows = await coverage_store.schedules_freshness(connection, user_email=email, include_paused=True)
    plans = await asyncio.to_thread(_user_grids, rows, now, since)
    grids = {schedule_id: grid for schedule_id, (_, _, grid, _) in plans.items() if grid is not None}
    first = min((f for f, _, g, _ in plans.values() if g is not None), default=None)
    last = max((la for _, la, g, _ in plans.values() if g is not None), default=None)
    covered = await _cover(connection, grids, first, last) if grids and first and last else {}
    lines = []
    for row in rows:
        start, end, grid, error = plans[row["id"]]
        if grid is None:
            lines.append(CoverageLine(row, None, None, {}, 0, None, None, error))
            continue
        cadence = cadence_from_row(row)
        coverage = covered[row["id"]]
        newest = window_for_run(row, cadence)
        lines.append(
            CoverageLine(
                row,
                start,
                end,
                coverage.counts(),
                len(coverage.missing),
                newest,
                _freshness(row, cadence, now) if row["is_active"] else None,
            )
        )
    return lines


def window_for_run(row: dict[str, Any], cadence: Cadence) -> Window | None:
    """The newest loaded window, as the grid's Window (its local dates), from the run's recorded instants."""
    if row["newest_start"] is None:
        return None
    tz = cadence.tz
    start, end = row["newest_start"], row["newest_end"]
    return Window(
        start.astimezone(tz).replace(tzinfo=None), end.astimezone(tz).replace(tzinfo=None), cadence.timezone, start, end
    )


def _user_grids(
    rows: list[dict[str, Any]], now: datetime, since: date | None
) -> dict[int, tuple[date, date, list[tuple[datetime, Window]] | None, str | None]]:
    # Schedules that share a cadence share its grid: computed once (a fleet often fires at the same hour).
    by_cadence: dict[tuple[Cadence, date, date], list[tuple[datetime, Window]]] = {}
    plans: dict[int, tuple[date, date, list[tuple[datetime, Window]] | None, str | None]] = {}
    for row in rows:
        try:
            cadence = cadence_from_row(row)
        except (InvalidSchedule, ValueError) as exc:
            plans[row["id"]] = (now.date(), now.date(), None, str(exc))
            continue
        last = _today(cadence, now)
        first = since or (last - timedelta(days=cadence.data_lag_days) - USER_LOOKBACK)
        key = (cadence, first, last)
        if key not in by_cadence:
            by_cadence[key] = _grid(cadence, first, last, now)
        plans[row["id"]] = (first, last, by_cadence[key], None)
    return plans


# --- freshness: the daemon's gauges and alerts ------------------------------------------------------------


@dataclass(frozen=True)
class ScheduleFreshness:
    schedule_id: int
    newest_end: datetime | None
    late: bool
    missing: int  # never-run, skipped, failed and cancelled windows whose fire lies within MISSING_LOOKBACK


@dataclass(frozen=True)
class FleetFreshness:
    schedules: list[ScheduleFreshness]
    became_late: list[int]
    recovered: list[int]

    @property
    def late(self) -> int:
        return sum(1 for s in self.schedules if s.late)


def _evaluate(rows: list[dict[str, Any]], now: datetime) -> dict[int, tuple[Freshness, array[float]]]:
    """Each active schedule's freshness and its look-back grid; CPU only (run off the event loop)."""
    evaluated: dict[int, tuple[Freshness, array[float]]] = {}
    for row in rows:
        try:
            cadence = cadence_from_row(row)
        except (InvalidSchedule, ValueError):  # a schedule the daemon cannot fire is reported by the poll
            continue
        evaluated[row["id"]] = (_freshness(row, cadence, now), lookback_spans(cadence, _today(cadence, now)))
    return evaluated


def _count_missing(
    evaluated: dict[int, tuple[Freshness, array[float]]], runs: dict[int, list[RunFact]], now: datetime
) -> dict[int, int]:
    return {sid: missing_in_lookback(spans, runs[sid], now) for sid, (_, spans) in evaluated.items()}


async def refresh_freshness(connection: Connection, now: datetime) -> FleetFreshness:
    """Every active schedule's freshness and missing windows; a lateness episode that starts or ends writes
    its event to the outbox (once over all replicas: the flip of late_since decides who writes it)."""
    rows = await coverage_store.schedules_freshness(connection)
    evaluated = await asyncio.to_thread(_evaluate, rows, now)
    missing: dict[int, int] = {}
    starts = [spans[1] for _, spans in evaluated.values() if spans]
    if starts:
        low = datetime.fromtimestamp(min(starts), UTC)
        runs = await coverage_store.window_runs(connection, list(evaluated), low, now)
        missing = await asyncio.to_thread(_count_missing, evaluated, runs, now)
    result: list[ScheduleFreshness] = []
    became_late: list[int] = []
    recovered: list[int] = []
    for row in rows:
        if row["id"] not in evaluated:
            continue
        fresh, _ = evaluated[row["id"]]
        result.append(ScheduleFreshness(row["id"], fresh.newest_end, fresh.late, missing.get(row["id"], 0)))
        change = episode_change(fresh.late, row["late_since"])
        if change is None:
            continue
        notice = LatenessNotice(row["id"], row["name"], row["user_email"], fresh.newest_end, fresh.deadline)
        if change is FreshnessChange.BECAME_LATE:
            if await coverage_store.mark_late(connection, row["id"], now, [late_event(notice)]):
                became_late.append(row["id"])
                log.warning(
                    "schedule_late",
                    schedule_id=row["id"],
                    newest_window_end=fresh.newest_end.isoformat() if fresh.newest_end else None,
                    deadline=fresh.deadline.isoformat() if fresh.deadline else None,
                )
        elif await coverage_store.mark_recovered(
            connection, row["id"], lambda since, notice=notice: [recovered_event(notice, since)]
        ):
            recovered.append(row["id"])
            log.info("schedule_recovered", schedule_id=row["id"])
    return FleetFreshness(result, became_late, recovered)


async def late_schedules(connection: Queryable) -> list[dict[str, Any]]:
    """Active schedules in a lateness episode (as the daemons' freshness check recorded it, with its alert),
    each with the command that shows why."""
    return [
        {**row, "command": f"recomamp schedules coverage {row['id']}"}
        for row in await coverage_store.late_schedules(connection)
    ]


async def set_grace(connection: Queryable, schedule_id: int, hours: float | None) -> None:
    await schedule_store.schedule_row(connection, schedule_id)  # NotFound first
    await coverage_store.set_grace(connection, schedule_id, None if hours is None else round(hours * 3600))

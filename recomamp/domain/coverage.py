"""Is a schedule's data complete and fresh? Pure functions over the schedule's grid and its run history.

Coverage joins the grid's windows (recomamp.domain.schedules.windows_between: the one grid, never a second
one) with the runs recorded for them, and gives each window one state. A window with a successful run is
loaded, whatever else ran for it since (a rerun in flight replaces rows that are there already); otherwise
an active run says what is happening now; otherwise the newest run says how the window's last try ended;
a window with no run at all was never run (a schedule paused over it, a grid edit, a coalesced misfire
that was not recorded).

Freshness: a schedule is late when the fire that should have loaded the window after its newest loaded
one happened more than a grace ago. That fire is the newest window's end plus the data lag plus about
one cadence, at the fire's time of day: measuring to the fire itself (not to a fixed "cadence + lag")
keeps a daily schedule that fires at 23:00 from looking late every evening.
"""

from __future__ import annotations

import functools
from array import array
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from enum import StrEnum

from recomamp.domain.schedules import Cadence, Window, fires_after, next_fire, to_instant, window_for, windows_between

# The grace a schedule gets past the fire that should have loaded its next window, unless it sets its own:
# an AMC query that takes a few hours, or waits for the day's quota, is not late yet.
DEFAULT_GRACE = timedelta(hours=6)
MAX_GRACE_HOURS = 31 * 24
# The missing-windows gauge counts the windows whose fire lies within this look-back: enough to alert on a
# hole before it ages out of AMC's retention, and a bounded walk of the grid per schedule per refresh.
MISSING_LOOKBACK = timedelta(days=14)
# A walk of the grid for the next fire after the newest loaded window stops after this many fires (an
# hourly cron walks 24 a day): a grid that never covers a later window is never late.
_MAX_FIRES_WALKED = 24 * 40


class WindowState(StrEnum):
    LOADED = "loaded"
    FAILED = "failed"
    RUNNING = "running"
    QUEUED = "queued"
    WAITING_QUOTA = "waiting_quota"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"  # a coalesced misfire passed over it
    NEVER_RUN = "never_run"


# The windows `schedules backfill --missing` runs, and the missing-windows gauge counts: no successful run
# and none in flight. The backfill service decides the same (failed, cancelled and skipped get a new run).
MISSING_STATES = frozenset({WindowState.NEVER_RUN, WindowState.SKIPPED, WindowState.FAILED, WindowState.CANCELLED})

# One letter per state for the plain grid (stdout not a terminal), and what the legend says of it.
LETTERS: dict[WindowState, str] = {
    WindowState.LOADED: "L",
    WindowState.FAILED: "F",
    WindowState.RUNNING: "R",
    WindowState.QUEUED: "Q",
    WindowState.WAITING_QUOTA: "W",
    WindowState.CANCELLED: "C",
    WindowState.SKIPPED: "S",
    WindowState.NEVER_RUN: "-",
}
MEANINGS: dict[WindowState, str] = {
    WindowState.LOADED: "loaded",
    WindowState.FAILED: "failed",
    WindowState.RUNNING: "running",
    WindowState.QUEUED: "queued",
    WindowState.WAITING_QUOTA: "waiting for AMC quota",
    WindowState.CANCELLED: "cancelled",
    WindowState.SKIPPED: "skipped (misfire)",
    WindowState.NEVER_RUN: "never run",
}


@dataclass(frozen=True)
class RunFact:
    """What coverage needs of one recorded run."""

    run_id: int
    window_start: datetime
    window_end: datetime
    status: str
    error_kind: str | None = None
    wait_reason: str | None = None
    rows: int | None = None
    loaded_at: datetime | None = None


@dataclass(frozen=True)
class WindowCoverage:
    fire_at: datetime
    window: Window
    state: WindowState
    run_id: int | None = None  # the run the state comes from
    rows: int | None = None
    loaded_at: datetime | None = None
    error_kind: str | None = None
    runs: int = 0  # every run recorded for the window

    @property
    def missing(self) -> bool:
        return self.state in MISSING_STATES


@dataclass(frozen=True)
class Coverage:
    windows: list[WindowCoverage]  # oldest first
    off_grid_runs: int  # runs whose window is not on the current grid (recorded before a grid edit)

    def counts(self) -> dict[str, int]:
        counted = Counter(w.state for w in self.windows)
        return {state.value: counted.get(state, 0) for state in WindowState}

    @property
    def missing(self) -> list[WindowCoverage]:
        return [w for w in self.windows if w.missing]

    @property
    def newest_loaded(self) -> WindowCoverage | None:
        return max((w for w in self.windows if w.state is WindowState.LOADED), key=lambda w: w.window.end, default=None)


def _state_of(runs: Sequence[RunFact]) -> tuple[WindowState, RunFact]:
    succeeded = [r for r in runs if r.status == "succeeded"]
    if succeeded:
        return WindowState.LOADED, max(succeeded, key=lambda r: r.run_id)
    active = [r for r in runs if r.status in ("pending", "running")]
    if active:
        run = active[0]  # the database allows one active run per window
        if run.status == "running":
            return WindowState.RUNNING, run
        return (WindowState.WAITING_QUOTA if run.wait_reason == "amc_quota" else WindowState.QUEUED), run
    newest = max(runs, key=lambda r: r.run_id)
    return {
        "failed": WindowState.FAILED,
        "cancelled": WindowState.CANCELLED,
        "skipped": WindowState.SKIPPED,
    }.get(newest.status, WindowState.FAILED), newest


def cover(grid: Sequence[tuple[datetime, Window]], runs: Iterable[RunFact]) -> Coverage:
    """Each grid window's state from the runs recorded for it (runs of other windows are counted apart)."""
    by_window: dict[tuple[datetime, datetime], list[RunFact]] = {}
    for run in runs:
        by_window.setdefault((run.window_start, run.window_end), []).append(run)
    windows: list[WindowCoverage] = []
    for fire, window in grid:
        recorded = by_window.pop((window.start, window.end), None)
        if not recorded:
            windows.append(WindowCoverage(fire, window, WindowState.NEVER_RUN))
            continue
        state, run = _state_of(recorded)
        windows.append(
            WindowCoverage(
                fire,
                window,
                state,
                run_id=run.run_id,
                rows=run.rows if state is WindowState.LOADED else None,
                loaded_at=run.loaded_at if state is WindowState.LOADED else None,
                error_kind=run.error_kind if state in (WindowState.FAILED, WindowState.CANCELLED) else None,
                runs=len(recorded),
            )
        )
    return Coverage(windows, off_grid_runs=sum(len(v) for v in by_window.values()))


def complete(grid: Sequence[tuple[datetime, Window]], now: datetime) -> list[tuple[datetime, Window]]:
    """The windows whose fire is due: a window whose fire is still ahead is not owed yet."""
    return [(fire, window) for fire, window in grid if fire <= now]


# --- the missing-windows gauge: the same grid, kept compact between refreshes -----------------------------


@functools.lru_cache(maxsize=20_000)
def lookback_spans(cadence: Cadence, today: date) -> array[float]:
    """The grid windows a day's look-back can count, as flat (fire, start, end) Unix times: every window
    whose fire may lie within MISSING_LOOKBACK of a moment of local date `today`. Compact (about 400 bytes
    for a daily grid) because the daemon keeps one per schedule for the day: a fleet of 10,000 schedules
    walks its grids once a day, not at every refresh."""
    lag = timedelta(days=cadence.data_lag_days)
    first = today - lag - MISSING_LOOKBACK - timedelta(days=2)
    last = today - lag + timedelta(days=1)  # a window starting later is fired after `today`
    flat = array("d")
    for fire, window in windows_between(cadence, first, last):
        flat.extend((fire.timestamp(), window.start.timestamp(), window.end.timestamp()))
    return flat


def missing_in_lookback(spans: array[float], runs: Iterable[RunFact], now: datetime) -> int:
    """How many windows fired within MISSING_LOOKBACK before `now` are missing (MISSING_STATES), each
    window's state decided as `cover` decides it."""
    by_window: dict[tuple[float, float], list[RunFact]] = {}
    for run in runs:
        by_window.setdefault((run.window_start.timestamp(), run.window_end.timestamp()), []).append(run)
    low, high = (now - MISSING_LOOKBACK).timestamp(), now.timestamp()
    missing = 0
    for index in range(0, len(spans), 3):
        fire, start, end = spans[index], spans[index + 1], spans[index + 2]
        if not low < fire <= high:
            continue
        recorded = by_window.get((start, end))
        if not recorded or _state_of(recorded)[0] in MISSING_STATES:
            missing += 1
    return missing


# --- freshness ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Freshness:
    newest_end: datetime | None  # the newest loaded window's end (None: nothing loaded yet)
    deadline: datetime | None  # when the schedule is late unless a newer window loads (None: never)
    late: bool

    def late_by(self, now: datetime) -> timedelta:
        return max(timedelta(0), now - self.deadline) if self.deadline is not None else timedelta(0)


@functools.lru_cache(maxsize=20_000)  # the same (cadence, newest end) at every refresh until a newer load
def next_load_due(cadence: Cadence, newest_end: datetime) -> datetime | None:
    """The first fire whose window ends after `newest_end`: the one that should load newer data."""
    tz = cadence.tz
    # A window ending after `newest_end` is fired on or after its end's local date plus the lag; a day earlier
    # leaves room for the grid's DST and lookback edges.
    end_date = newest_end.astimezone(tz).date()
    begin = to_instant(datetime.combine(end_date + timedelta(days=cadence.data_lag_days - 1), time()), tz)
    for walked, fire in enumerate(fires_after(cadence, begin)):
        if window_for(cadence, fire).end > newest_end:
            return fire
        if walked >= _MAX_FIRES_WALKED:
            return None
    return None


def freshness(
    cadence: Cadence, newest_end: datetime | None, since: datetime, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> Freshness:
    """Late when the fire that should have loaded the window after the newest loaded one (or, with nothing
    loaded yet, the schedule's first fire after `since`) is more than `grace` ago."""
    due = next_load_due(cadence, newest_end) if newest_end is not None else next_fire(cadence, since)
    deadline = due + grace if due is not None else None
    return Freshness(newest_end, deadline, late=deadline is not None and now > deadline)


class FreshnessChange(StrEnum):
    BECAME_LATE = "became_late"
    RECOVERED = "recovered"


def episode_change(late_now: bool, late_since: datetime | None) -> FreshnessChange | None:
    """One event per lateness episode: at its start, and when a load ends it."""
    if late_now and late_since is None:
        return FreshnessChange.BECAME_LATE
    if not late_now and late_since is not None:
        return FreshnessChange.RECOVERED
    return None

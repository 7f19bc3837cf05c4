"""What a poll does with a due schedule: which windows to run, which to record as skipped. Pure and cheap.

After downtime several fires may be due at once. `coalesce` (the default) runs the latest missed window
and records the others as `skipped` in the run history; `catch_up` runs every missed window, oldest
first, up to the schedule's catch_up_limit (the most recent ones; older ones are recorded as skipped and
can be filled with `recomamp schedules backfill`). However long the downtime, the work here is bounded:
at most MAX_RECORDED_SKIPS + catch_up_limit fires are walked, and the next fire is computed from now.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from recomamp.domain.schedules import Cadence, Window, cadence_seconds, fires_after, latest_fire, next_fire, window_for

# Skipped windows beyond this are counted (up to here) but not each written to the history.
MAX_RECORDED_SKIPS = 200


class MisfirePolicy(StrEnum):
    COALESCE = "coalesce"
    CATCH_UP = "catch_up"


@dataclass(frozen=True)
class PlannedFire:
    fire_at: datetime
    window: Window


@dataclass(frozen=True)
class FirePlan:
    runs: list[PlannedFire]  # oldest first; the last one is a regular scheduled fire
    skipped: list[PlannedFire] = field(default_factory=list)
    more_skipped: bool = False  # more fires were missed than were walked
    next_run_at: datetime | None = None

    @property
    def skipped_count(self) -> int:
        return len(self.skipped)


def _walk(cadence: Cadence, first: datetime, last: datetime, limit: int) -> tuple[list[datetime], bool]:
    """Fires from `first` (included) to `last` (included), at most `limit`; and whether some were left out."""
    fires = [first]
    for fire in fires_after(cadence, first):
        if fire > last:
            return fires, False
        fires.append(fire)
        if len(fires) >= limit:
            return fires, fire < last
    return fires, False


def plan_due(cadence: Cadence, due_at: datetime, now: datetime, policy: MisfirePolicy, limit: int) -> FirePlan:
    """The runs (and skipped windows) for a schedule due since `due_at`, as of `now`."""
    following = next_fire(cadence, due_at)
    if following > now:
        # The common case, on time: exactly one fire is due.
        return FirePlan(runs=[PlannedFire(due_at, window_for(cadence, due_at))], next_run_at=following)
    latest = latest_fire(cadence, now)
    if latest is None or latest < due_at:
        latest = due_at
    missed, more = _walk(cadence, due_at, latest, MAX_RECORDED_SKIPS + limit)
    if more and policy is MisfirePolicy.CATCH_UP:
        # A long downtime: the recent fires are walked back from the latest, not forward from the first.
        period = cadence_seconds(cadence, latest) or 86_400.0
        recent, _ = _walk(cadence, latest - timedelta(seconds=period * (limit + 2)), latest, limit * 64)
        missed = sorted({*missed, *(f for f in recent if f >= due_at)})
    if missed[-1] != latest:
        missed.append(latest)
    # Fires in one local day share a window (a cron that fires hourly): one run per window, the latest fire.
    by_window: dict[tuple[datetime, datetime], PlannedFire] = {}
    for fire in missed:
        window = window_for(cadence, fire)
        by_window[(window.start, window.end)] = PlannedFire(fire, window)
    distinct = sorted(by_window.values(), key=lambda item: item.fire_at)
    keep = limit if policy is MisfirePolicy.CATCH_UP else 1
    runs, skipped = distinct[-keep:], distinct[:-keep]
    return FirePlan(
        runs=runs,
        skipped=skipped[-MAX_RECORDED_SKIPS:],
        more_skipped=more or len(skipped) > MAX_RECORDED_SKIPS,
        next_run_at=next_fire(cadence, max(now, latest)),
    )

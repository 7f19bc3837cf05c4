"""When a schedule fires and which time window a firing covers. Pure functions over plain values.

Every schedule lives in its own IANA timezone. Fire times are wall-clock times there, turned into
instants with two DST rules:
- a wall time that does not exist (spring forward) fires at the first valid instant after it, which is
  the moment the clocks jump;
- a wall time that happens twice (fall back) fires once, at its first occurrence.

The window of a firing on local date D is half-open, [start, end), in the schedule's timezone:
end = the start of day (D - data_lag_days); start = end - lookback_days days, or, with no lookback set,
the end of the previous fire's window (the previous fire on an earlier day), so that windows tile.
"""

from __future__ import annotations

import calendar
import functools
import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from enum import StrEnum
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterNotAlphaError, croniter


class Preset(StrEnum):
    DAILY = "daily"
    WEEKLY = "weekly"
    MONTHLY = "monthly"
    CUSTOM = "custom"


DEFAULT_DATA_LAG_DAYS = 14
WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


class InvalidSchedule(ValueError):
    """A schedule that cannot fire: the message names the field and what is allowed."""


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(
            f"timezone: {name!r} is not an IANA timezone; use a name such as America/New_York, Europe/London or UTC"
        ) from None


def check_cron(expression: str) -> None:
    fields = expression.split()
    if len(fields) != 5:
        raise InvalidSchedule(
            f"cron_expression: {expression!r} has {len(fields)} fields; use 5: minute hour day-of-month month "
            "day-of-week, for example '30 6 * * 1-5'"
        )
    try:
        croniter(expression, datetime(2026, 1, 1))
    except (CroniterBadCronError, CroniterNotAlphaError, ValueError, KeyError) as exc:
        raise InvalidSchedule(f"cron_expression: {expression!r} is not a valid cron expression ({exc})") from None


@dataclass(frozen=True)
class Cadence:
    """The part of a schedule that says when it fires and what window it covers."""

    preset: Preset
    timezone: str
    time_of_day: time | None = None
    day_of_week: int | None = None  # 0 = Monday
    day_of_month: int | None = None
    cron_expression: str | None = None
    lookback_days: int | None = None
    data_lag_days: int = DEFAULT_DATA_LAG_DAYS

    def __post_init__(self) -> None:
        zone(self.timezone)
        if self.preset is Preset.CUSTOM:
            if not self.cron_expression:
                raise InvalidSchedule("cron_expression: required for a custom schedule")
            check_cron(self.cron_expression)
        elif self.time_of_day is None:
            raise InvalidSchedule(f"time_of_day: required for a {self.preset.value} schedule; use HH:MM, 00:00-23:59")
        if self.preset is Preset.WEEKLY and (self.day_of_week is None or not 0 <= self.day_of_week <= 6):
            raise InvalidSchedule("day_of_week: required for a weekly schedule; use 0 (Monday) to 6 (Sunday)")
        if self.preset is Preset.MONTHLY and (self.day_of_month is None or not 1 <= self.day_of_month <= 31):
            raise InvalidSchedule(
                "day_of_month: required for a monthly schedule; use 1 to 31 (29-31 fall back to the month's last day)"
            )
        if self.lookback_days is not None and self.lookback_days < 1:
            raise InvalidSchedule("lookback_days: must be 1 or more")
        if self.data_lag_days < 0:
            raise InvalidSchedule("data_lag_days: must be 0 or more")

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)


def to_instant(local: datetime, tz: ZoneInfo) -> datetime:
    """A naive wall-clock time in `tz` → the UTC instant it fires at, by the two DST rules."""
    first = local.replace(tzinfo=tz, fold=0)
    second = local.replace(tzinfo=tz, fold=1)
    first_utc, second_utc = first.astimezone(UTC), second.astimezone(UTC)
    exists = first_utc.astimezone(tz).replace(tzinfo=None) == local
    if exists:
        # An ambiguous time has two instants; fold=0 is the first occurrence. Otherwise they agree.
        return min(first_utc, second_utc) if second_utc.astimezone(tz).replace(tzinfo=None) == local else first_utc
    # A gap: the clocks jump over `local`. The transition lies between the two readings; find the
    # first minute whose wall-clock reading is past `local` (zones shift by 30 minutes too).
    low, high = sorted((first_utc, second_utc))
    while high - low > timedelta(minutes=1):
        middle = low + (high - low) / 2
        middle = middle.replace(second=0, microsecond=0)
        if middle <= low:
            break
        if middle.astimezone(tz).replace(tzinfo=None) >= local:
            high = middle
        else:
            low = middle
    return high


def _local_candidates(cadence: Cadence, start_local: datetime) -> Iterator[datetime]:
    """Wall-clock fire times of a preset, from the local date of `start_local` onwards (minus a day of slack)."""
    assert cadence.time_of_day is not None
    day = start_local.date() - timedelta(days=1)
    while True:
        if cadence.preset is Preset.DAILY:
            yield datetime.combine(day, cadence.time_of_day)
            day += timedelta(days=1)
        elif cadence.preset is Preset.WEEKLY:
            if day.weekday() == cadence.day_of_week:
                yield datetime.combine(day, cadence.time_of_day)
            day += timedelta(days=1)
        else:
            assert cadence.day_of_month is not None
            last = calendar.monthrange(day.year, day.month)[1]
            fire_day = date(day.year, day.month, min(cadence.day_of_month, last))
            if fire_day >= day:
                yield datetime.combine(fire_day, cadence.time_of_day)
            day = date(day.year + (day.month == 12), day.month % 12 + 1, 1)


def _cron_candidates(cadence: Cadence, start_local: datetime) -> Iterator[datetime]:
    # croniter walks naive wall-clock times; DST is resolved by to_instant, the same way as for presets.
    assert cadence.cron_expression is not None
    # Three hours of slack: more than any DST shift, so a fire that DST moves past `after` is not missed.
    iterator = croniter(cadence.cron_expression, start_local - timedelta(hours=3))
    while True:
        try:
            yield iterator.get_next(datetime)
        except CroniterBadDateError:
            return


def fires_after(cadence: Cadence, after: datetime) -> Iterator[datetime]:
    """Fire instants (UTC) strictly after `after`, in order, each once."""
    tz = cadence.tz
    start_local = after.astimezone(tz).replace(tzinfo=None)
    candidates = (
        _cron_candidates(cadence, start_local)
        if cadence.preset is Preset.CUSTOM
        else _local_candidates(cadence, start_local)
    )
    last: datetime | None = None
    for local in candidates:
        instant = to_instant(local, tz)
        if instant <= after or (last is not None and instant <= last):
            continue
        last = instant
        yield instant


@functools.lru_cache(maxsize=4096)
def next_fire(cadence: Cadence, after: datetime) -> datetime:
    """The first fire after `after`. Cached (bounded): thousands of schedules share a cadence and a due time."""
    for instant in fires_after(cadence, after):
        return instant
    raise InvalidSchedule("cron_expression: it never fires")


@dataclass(frozen=True)
class Window:
    """A run's time window: half-open [start, end), as wall-clock times in `timezone` and as instants."""

    start_local: datetime
    end_local: datetime
    timezone: str
    start: datetime
    end: datetime


def _previous_fire_date(cadence: Cadence, fire_date: date) -> date:
    """The local date of the last fire on a day before `fire_date`."""
    if cadence.preset is Preset.DAILY:
        return fire_date - timedelta(days=1)
    if cadence.preset is Preset.WEEKLY:
        return fire_date - timedelta(days=7)
    if cadence.preset is Preset.MONTHLY:
        assert cadence.day_of_month is not None
        year, month = (fire_date.year - 1, 12) if fire_date.month == 1 else (fire_date.year, fire_date.month - 1)
        return date(year, month, min(cadence.day_of_month, calendar.monthrange(year, month)[1]))
    assert cadence.cron_expression is not None
    return _previous_cron_date(cadence.cron_expression, fire_date)


@functools.lru_cache(maxsize=4096)
def _previous_cron_date(expression: str, fire_date: date) -> date:
    # croniter walks back from the start of the fire's day: the previous fire on an earlier day.
    try:
        previous = croniter(expression, datetime.combine(fire_date, time())).get_prev(datetime)
    except CroniterBadDateError:
        return fire_date - timedelta(days=1)
    previous_date: date = previous.date()
    return previous_date


@functools.lru_cache(maxsize=4096)
def window_for(cadence: Cadence, fire_at: datetime) -> Window:
    """The half-open window a fire covers. Without lookback_days, windows tile: each starts where the
    previous fire's window ended (one day, one week, or the days since the last monthly or cron fire),
    so no day is covered twice or never. With lookback_days, each window is that many days long."""
    tz = cadence.tz
    fire_date = fire_at.astimezone(tz).date()
    lag = timedelta(days=cadence.data_lag_days)
    end_date = fire_date - lag
    if cadence.lookback_days is not None:
        start_date = end_date - timedelta(days=cadence.lookback_days)
    else:
        start_date = _previous_fire_date(cadence, fire_date) - lag
    start_local, end_local = datetime.combine(start_date, time()), datetime.combine(end_date, time())
    return Window(
        start_local=start_local,
        end_local=end_local,
        timezone=cadence.timezone,
        start=to_instant(start_local, tz),
        end=to_instant(end_local, tz),
    )


def parse_time_of_day(text: str) -> time:
    """'HH:MM' → time; anything else is refused with what is allowed."""
    parts = text.strip().split(":")
    if len(parts) == 2 and all(p.isdigit() for p in parts):
        hour, minute = int(parts[0]), int(parts[1])
        if 0 <= hour <= 23 and 0 <= minute <= 59:
            return time(hour, minute)
    raise InvalidSchedule(f"time_of_day: {text!r} is not a time; use HH:MM, from 00:00 to 23:59")


def parse_weekday(text: str) -> int:
    lowered = text.strip().lower()
    if lowered.isdigit() and 0 <= int(lowered) <= 6:
        return int(lowered)
    for index, name in enumerate(WEEKDAYS):
        if lowered in (name, name[:3]):
            return index
    raise InvalidSchedule(f"day_of_week: {text!r} is not a weekday; use monday..sunday, mon..sun, or 0 (Monday)..6")


# --- the grid: every window a schedule's fires cover ---------------------------------------------------------

MAX_FIRE_GAP = timedelta(days=32)  # no preset fires less often than monthly


def latest_fire(cadence: Cadence, now: datetime) -> datetime | None:
    """The last fire at or before `now`: cheap whatever the downtime (no walk over missed ticks)."""
    if cadence.preset is Preset.CUSTOM:
        assert cadence.cron_expression is not None
        tz = cadence.tz
        local = now.astimezone(tz).replace(tzinfo=None, second=0, microsecond=0) + timedelta(minutes=1)
        iterator = croniter(cadence.cron_expression, local)
        for _ in range(8):  # a DST gap can push a candidate past now: step back again
            try:
                candidate = iterator.get_prev(datetime)
            except CroniterBadDateError:
                return None
            instant = to_instant(candidate, tz)
            if instant <= now:
                return instant
        return None
    latest: datetime | None = None
    for instant in fires_after(cadence, now - MAX_FIRE_GAP - timedelta(days=1)):
        if instant > now:
            return latest
        latest = instant
    return latest


def fire_for_window_start(cadence: Cadence, start: date) -> datetime | None:
    """The first fire whose window starts on local date `start`, or None when `start` is not on the grid."""
    lookback = timedelta(days=cadence.lookback_days) if cadence.lookback_days else timedelta(days=31)
    begin = datetime.combine(start + timedelta(days=cadence.data_lag_days) - timedelta(days=1), time())
    limit = start + timedelta(days=cadence.data_lag_days) + lookback + timedelta(days=2)
    for fire in fires_after(cadence, to_instant(begin, cadence.tz)):
        fire_date = fire.astimezone(cadence.tz).date()
        if fire_date > limit:
            return None
        window = window_for(cadence, fire)
        if window.start_local.date() == start:
            return fire
        if window.start_local.date() > start:
            return None
    return None


def windows_between(cadence: Cadence, first: date, last: date) -> list[tuple[datetime, Window]]:
    """Every grid window that starts within [first, last] (local dates), oldest first, each once."""
    begin = datetime.combine(first + timedelta(days=cadence.data_lag_days) - timedelta(days=1), time())
    found: list[tuple[datetime, Window]] = []
    seen: set[date] = set()
    for fire in fires_after(cadence, to_instant(begin, cadence.tz)):
        window = window_for(cadence, fire)
        start = window.start_local.date()
        if start > last:
            break
        if start >= first and start not in seen:
            seen.add(start)
            found.append((fire, window))
    return found


def nearest_window_starts(cadence: Cadence, near: date) -> list[date]:
    """The grid's window starts just before and just after `near`: what to offer for an off-grid start."""
    span = timedelta(days=(cadence.lookback_days or 31) + 40)
    starts = [w.start_local.date() for _, w in windows_between(cadence, near - span, near + span)]
    before = [d for d in starts if d < near]
    after = [d for d in starts if d > near]
    return [*before[-1:], *after[:1]]


def cadence_seconds(cadence: Cadence, after: datetime) -> float:
    """The usual time between two fires (for alerts on a schedule without success for twice its cadence)."""
    fires = []
    for fire in fires_after(cadence, after):
        fires.append(fire)
        if len(fires) == 3:
            break
    if len(fires) < 2:
        return 0.0
    return max((b - a).total_seconds() for a, b in itertools.pairwise(fires))


def windows_overlap(cadence: Cadence, after: datetime, sample: int = 12) -> tuple[Window, Window] | None:
    """Two consecutive windows that overlap without being the same window, if the grid has any."""
    windows: list[Window] = []
    for fire in fires_after(cadence, after):
        window = window_for(cadence, fire)
        if windows and window.start == windows[-1].start and window.end == windows[-1].end:
            continue
        windows.append(window)
        if len(windows) > sample:
            break
    for earlier, later in itertools.pairwise(windows):
        if later.start < earlier.end and (later.start, later.end) != (earlier.start, earlier.end):
            return earlier, later
    return None

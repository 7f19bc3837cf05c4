"""When a schedule fires and which time window a firing covers. Pure functions over plain values.

Every schedule lives in its own IANA timezone. Fire times are wall-clock times there, turned into
instants with two DST rules:
- a wall time that does not exist (spring forward) fires at the first valid instant after it, which is
  the moment the clocks jump;
- a wall time that happens twice (fall back) fires once, at its first occurrence.

The window of a firing on local date D is half-open, [start, end), in the schedule's timezone:
end = the start of day (D - data_lag_days); start = end - lookback_days days (or one calendar month,
for a monthly schedule with no lookback set).
"""

from __future__ import annotations

import calendar
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
    iterator = croniter(cadence.cron_expression, start_local - timedelta(days=1))
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


def next_fire(cadence: Cadence, after: datetime) -> datetime:
    for instant in fires_after(cadence, after):
        return instant
    raise InvalidSchedule("cron_expression: it never fires")


@dataclass(frozen=True)
class Catchup:
    """What a poll does with a due schedule: one run for `fire_at`, skipping `skipped` missed fires."""

    fire_at: datetime
    skipped: int
    next_run_at: datetime


MAX_COUNTED_MISSES = 100_000


def catch_up(cadence: Cadence, due_at: datetime, now: datetime) -> Catchup:
    """Missed fires after downtime are coalesced into one run, for the latest fire at or before `now`."""
    latest = due_at
    for skipped, instant in enumerate(fires_after(cadence, due_at)):
        if instant > now:
            return Catchup(fire_at=latest, skipped=skipped, next_run_at=instant)
        latest = instant
        if skipped + 1 >= MAX_COUNTED_MISSES:
            # Years of a per-minute cron: stop counting and take the next fire from now.
            return Catchup(fire_at=latest, skipped=skipped + 1, next_run_at=next_fire(cadence, now))
    raise InvalidSchedule("cron_expression: it never fires again")


@dataclass(frozen=True)
class Window:
    """A run's time window: half-open [start, end), as wall-clock times in `timezone` and as instants."""

    start_local: datetime
    end_local: datetime
    timezone: str
    start: datetime
    end: datetime


def _months_before(day: date, months: int) -> date:
    month_index = day.year * 12 + day.month - 1 - months
    year, month = divmod(month_index, 12)
    return date(year, month + 1, min(day.day, calendar.monthrange(year, month + 1)[1]))


def window_for(cadence: Cadence, fire_at: datetime) -> Window:
    tz = cadence.tz
    fire_date = fire_at.astimezone(tz).date()
    end_date = fire_date - timedelta(days=cadence.data_lag_days)
    if cadence.lookback_days is not None:
        start_date = end_date - timedelta(days=cadence.lookback_days)
    elif cadence.preset is Preset.MONTHLY:
        start_date = _months_before(end_date, 1)
    else:
        start_date = end_date - timedelta(days=7 if cadence.preset is Preset.WEEKLY else 1)
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

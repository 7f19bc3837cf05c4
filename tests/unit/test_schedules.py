"""Fire times and windows: pure, no server."""

from __future__ import annotations

import itertools
from datetime import UTC, date, datetime, time
from itertools import islice
from zoneinfo import ZoneInfo

import pytest

from recomamp.domain.misfires import MAX_RECORDED_SKIPS, MisfirePolicy, plan_due
from recomamp.domain.schedules import (
    Cadence,
    InvalidSchedule,
    Preset,
    fire_for_window_start,
    fires_after,
    latest_fire,
    nearest_window_starts,
    next_fire,
    parse_time_of_day,
    parse_weekday,
    window_for,
    windows_between,
    windows_overlap,
)

NY, LONDON, LORD_HOWE = ZoneInfo("America/New_York"), ZoneInfo("Europe/London"), ZoneInfo("Australia/Lord_Howe")


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def local(tz: ZoneInfo, instant: datetime) -> str:
    return instant.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z")


def daily(at: str, tz: str) -> Cadence:
    return Cadence(Preset.DAILY, tz, time_of_day=parse_time_of_day(at))


def test_daily_fires_at_local_time() -> None:
    fires = list(islice(fires_after(daily("06:00", "America/New_York"), utc(2026, 11, 28, 12)), 2))
    assert [local(NY, f) for f in fires] == ["2026-11-29 06:00 EST", "2026-11-30 06:00 EST"]


def test_new_york_spring_forward_fires_at_the_jump_once() -> None:
    # 2026-03-08 02:30 does not exist in New York: clocks go from 02:00 EST to 03:00 EDT.
    fires = list(islice(fires_after(daily("02:30", "America/New_York"), utc(2026, 3, 6, 12)), 3))
    assert [local(NY, f) for f in fires] == ["2026-03-07 02:30 EST", "2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT"]


def test_new_york_fall_back_fires_once_at_the_first_occurrence() -> None:
    # 2026-11-01 01:30 happens twice in New York; the first is EDT.
    fires = list(islice(fires_after(daily("01:30", "America/New_York"), utc(2026, 10, 31, 12)), 2))
    assert [local(NY, f) for f in fires] == ["2026-11-01 01:30 EDT", "2026-11-02 01:30 EST"]
    assert fires[0] == utc(2026, 11, 1, 5, 30)


def test_london_both_transitions() -> None:
    spring = list(islice(fires_after(daily("01:15", "Europe/London"), utc(2026, 3, 28, 12)), 2))
    assert [local(LONDON, f) for f in spring] == ["2026-03-29 02:00 BST", "2026-03-30 01:15 BST"]
    autumn = list(islice(fires_after(daily("01:15", "Europe/London"), utc(2026, 10, 24, 12)), 2))
    assert autumn[0] == utc(2026, 10, 25, 0, 15)  # the BST 01:15, not the GMT one an hour later
    assert local(LONDON, autumn[1]) == "2026-10-26 01:15 GMT"


def test_lord_howe_half_hour_shift() -> None:
    # Lord Howe moves by 30 minutes: 02:00 → 02:30 on 2026-10-04, and 02:00 → 01:30 on 2026-04-05.
    spring = list(islice(fires_after(daily("02:10", "Australia/Lord_Howe"), utc(2026, 10, 2)), 3))
    assert [f.astimezone(LORD_HOWE).strftime("%m-%d %H:%M") for f in spring] == [
        "10-03 02:10",
        "10-04 02:30",
        "10-05 02:10",
    ]
    autumn = list(islice(fires_after(daily("01:45", "Australia/Lord_Howe"), utc(2026, 4, 3)), 3))
    assert [f.astimezone(LORD_HOWE).strftime("%m-%d %H:%M") for f in autumn] == [
        "04-04 01:45",
        "04-05 01:45",
        "04-06 01:45",
    ]
    assert autumn[1].astimezone(LORD_HOWE).utcoffset().total_seconds() == 11 * 3600  # type: ignore[union-attr]


def test_monthly_day_31_falls_back_to_the_last_day() -> None:
    cadence = Cadence(Preset.MONTHLY, "UTC", time_of_day=time(3), day_of_month=31)
    fires = list(islice(fires_after(cadence, utc(2027, 12, 31, 12)), 4))
    assert [f.date().isoformat() for f in fires] == ["2028-01-31", "2028-02-29", "2028-03-31", "2028-04-30"]


def test_monthly_day_29_in_february_of_a_common_year() -> None:
    cadence = Cadence(Preset.MONTHLY, "UTC", time_of_day=time(3), day_of_month=29)
    fires = list(islice(fires_after(cadence, utc(2026, 1, 30)), 2))
    assert [f.date().isoformat() for f in fires] == ["2026-02-28", "2026-03-29"]


def test_weekly_fires_on_its_weekday() -> None:
    cadence = Cadence(Preset.WEEKLY, "Europe/London", time_of_day=time(7), day_of_week=parse_weekday("mon"))
    fires = list(islice(fires_after(cadence, utc(2026, 11, 28)), 2))
    assert [f.astimezone(LONDON).strftime("%a %d %H:%M") for f in fires] == ["Mon 30 07:00", "Mon 07 07:00"]


def test_cron_uses_local_time_and_the_same_dst_rules() -> None:
    cadence = Cadence(Preset.CUSTOM, "America/New_York", cron_expression="30 2 * * *")
    fires = list(islice(fires_after(cadence, utc(2026, 3, 7, 12)), 2))
    assert [local(NY, f) for f in fires] == ["2026-03-08 03:00 EDT", "2026-03-09 02:30 EDT"]
    every_half_hour = Cadence(Preset.CUSTOM, "America/New_York", cron_expression="*/30 * * * *")
    fall_back = list(islice(fires_after(every_half_hour, utc(2026, 11, 1, 4, 45)), 4))
    # 01:00 and 01:30 EDT fire; their EST repeats do not; then 02:00 EST.
    assert [local(NY, f) for f in fall_back] == [
        "2026-11-01 01:00 EDT",
        "2026-11-01 01:30 EDT",
        "2026-11-01 02:00 EST",
        "2026-11-01 02:30 EST",
    ]


def test_leap_day_window_and_cron() -> None:
    cadence = Cadence(Preset.CUSTOM, "UTC", cron_expression="0 0 29 2 *", lookback_days=1, data_lag_days=0)
    fire = next_fire(cadence, utc(2026, 6, 1))
    assert fire == utc(2028, 2, 29)
    window = window_for(cadence, fire)
    assert (window.start_local, window.end_local) == (datetime(2028, 2, 28), datetime(2028, 2, 29))


def test_window_is_half_open_in_local_time_with_lag_and_lookback() -> None:
    cadence = Cadence(Preset.DAILY, "America/New_York", time_of_day=time(6))
    window = window_for(cadence, utc(2026, 11, 28, 11))  # 06:00 EST on the 28th
    assert (window.start_local, window.end_local) == (datetime(2026, 11, 13), datetime(2026, 11, 14))
    assert window.start == utc(2026, 11, 13, 5)
    weekly = Cadence(Preset.WEEKLY, "UTC", time_of_day=time(6), day_of_week=0, data_lag_days=0)
    assert window_for(weekly, utc(2026, 11, 30, 6)).start_local == datetime(2026, 11, 23)
    monthly = Cadence(Preset.MONTHLY, "UTC", time_of_day=time(6), day_of_month=1, data_lag_days=0)
    w = window_for(monthly, utc(2026, 3, 1, 6))
    assert (w.start_local, w.end_local) == (datetime(2026, 2, 1), datetime(2026, 3, 1))
    # With the default lag, a monthly window runs from the previous fire's window end: no gap, no overlap.
    lagged = Cadence(Preset.MONTHLY, "UTC", time_of_day=time(6), day_of_month=1)
    w = window_for(lagged, utc(2026, 3, 1, 6))
    assert (w.start_local, w.end_local) == (datetime(2026, 1, 18), datetime(2026, 2, 15))


def test_a_window_across_a_dst_change_keeps_local_midnights() -> None:
    cadence = Cadence(Preset.WEEKLY, "America/New_York", time_of_day=time(6), day_of_week=0, data_lag_days=0)
    window = window_for(cadence, utc(2026, 3, 9, 10))
    assert (window.end - window.start).total_seconds() == 7 * 86400 - 3600  # one hour short: spring forward


def test_missed_fires_are_coalesced_into_the_latest_and_the_others_recorded_as_skipped() -> None:
    cadence = daily("06:00", "UTC")
    plan = plan_due(cadence, utc(2026, 11, 20, 6), utc(2026, 11, 28, 12), MisfirePolicy.COALESCE, limit=31)
    assert [run.fire_at for run in plan.runs] == [utc(2026, 11, 28, 6)]
    assert [s.fire_at for s in plan.skipped] == [utc(2026, 11, d, 6) for d in range(20, 28)]
    assert plan.next_run_at == utc(2026, 11, 29, 6)
    on_time = plan_due(cadence, utc(2026, 11, 28, 6), utc(2026, 11, 28, 6, 0, 1), MisfirePolicy.COALESCE, limit=31)
    assert ([r.fire_at for r in on_time.runs], on_time.skipped) == ([utc(2026, 11, 28, 6)], [])


def test_catch_up_runs_every_missed_window_oldest_first_up_to_its_limit() -> None:
    cadence = daily("06:00", "UTC")
    plan = plan_due(cadence, utc(2026, 11, 25, 6), utc(2026, 11, 28, 12), MisfirePolicy.CATCH_UP, limit=31)
    assert [r.fire_at for r in plan.runs] == [utc(2026, 11, d, 6) for d in (25, 26, 27, 28)]
    assert plan.skipped == []
    limited = plan_due(cadence, utc(2026, 11, 20, 6), utc(2026, 11, 28, 12), MisfirePolicy.CATCH_UP, limit=3)
    assert [r.fire_at for r in limited.runs] == [utc(2026, 11, d, 6) for d in (26, 27, 28)]
    assert [s.fire_at for s in limited.skipped] == [utc(2026, 11, d, 6) for d in range(20, 26)]


def test_a_long_downtime_of_a_per_minute_cron_plans_a_bounded_amount() -> None:
    cadence = Cadence(Preset.CUSTOM, "UTC", cron_expression="* * * * *")
    plan = plan_due(cadence, utc(2026, 9, 20), utc(2026, 11, 28, 12), MisfirePolicy.COALESCE, limit=31)
    assert plan.more_skipped
    assert len(plan.runs) == 1 and plan.runs[0].fire_at == utc(2026, 11, 28, 12)
    assert len(plan.skipped) <= MAX_RECORDED_SKIPS
    assert plan.next_run_at == utc(2026, 11, 28, 12, 1)


@pytest.mark.parametrize(
    "cadence",
    [
        Cadence(Preset.MONTHLY, "UTC", time_of_day=time(6), day_of_month=31),
        Cadence(Preset.MONTHLY, "America/New_York", time_of_day=time(6), day_of_month=1),
        Cadence(Preset.CUSTOM, "Europe/London", cron_expression="30 6 * * 1-5"),
        Cadence(Preset.CUSTOM, "UTC", cron_expression="0 * * * *", data_lag_days=0),
        Cadence(Preset.WEEKLY, "Australia/Lord_Howe", time_of_day=time(2, 15), day_of_week=6),
    ],
)
def test_windows_without_a_lookback_tile_the_calendar(cadence: Cadence) -> None:
    """No day is covered twice or never: each window starts where the one before ended."""
    windows = [w for _, w in windows_between(cadence, date(2026, 1, 1), date(2027, 1, 1))]
    assert len(windows) > 10
    for earlier, later in itertools.pairwise(windows):
        assert later.start_local == earlier.end_local
    assert windows_overlap(cadence, utc(2026, 1, 1)) is None


def test_a_lookback_longer_than_the_cadence_makes_windows_overlap() -> None:
    cadence = Cadence(Preset.DAILY, "UTC", time_of_day=time(6), lookback_days=7)
    overlap = windows_overlap(cadence, utc(2026, 1, 1))
    assert overlap is not None and overlap[1].start < overlap[0].end


def test_a_window_start_is_on_the_grid_or_the_nearest_starts_are_offered() -> None:
    weekly = Cadence(Preset.WEEKLY, "UTC", time_of_day=time(7), day_of_week=0)  # Mondays, 14 days' lag
    fire = latest_fire(weekly, utc(2026, 11, 29, 12))
    assert fire == utc(2026, 11, 23, 7)
    window = window_for(weekly, fire)
    assert (window.start_local, window.end_local) == (datetime(2026, 11, 2), datetime(2026, 11, 9))
    assert fire_for_window_start(weekly, date(2026, 11, 2)) == fire
    assert fire_for_window_start(weekly, date(2026, 11, 4)) is None
    assert nearest_window_starts(weekly, date(2026, 11, 4)) == [date(2026, 11, 2), date(2026, 11, 9)]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"preset": Preset.DAILY, "timezone": "Mars/Olympus"}, "timezone: 'Mars/Olympus' is not an IANA timezone"),
        (
            {"preset": Preset.CUSTOM, "timezone": "UTC", "cron_expression": "61 * * * *"},
            "cron_expression: '61 * * * *'",
        ),
        ({"preset": Preset.CUSTOM, "timezone": "UTC", "cron_expression": "* * *"}, "has 3 fields; use 5"),
        ({"preset": Preset.MONTHLY, "timezone": "UTC", "time_of_day": time(1), "day_of_month": 32}, "day_of_month"),
        ({"preset": Preset.WEEKLY, "timezone": "UTC", "time_of_day": time(1)}, "day_of_week"),
    ],
)
def test_invalid_cadences_name_the_field(kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message.replace("*", r"\*")):
        Cadence(**kwargs)  # type: ignore[arg-type]


def test_time_of_day_parsing() -> None:
    assert parse_time_of_day("06:30") == time(6, 30)
    with pytest.raises(InvalidSchedule, match="time_of_day: '25:00' is not a time; use HH:MM"):
        parse_time_of_day("25:00")

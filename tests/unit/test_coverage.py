"""Coverage and freshness as pure functions: a fixed history of 30 daily windows gets one state per window,
its plain calendar is compared line by line, and lateness is decided at the fire that should load more."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

from recomamp.cli.coverage import render_grid
from recomamp.domain.coverage import (
    DEFAULT_GRACE,
    MISSING_LOOKBACK,
    FreshnessChange,
    RunFact,
    WindowState,
    complete,
    cover,
    episode_change,
    freshness,
    lookback_spans,
    missing_in_lookback,
    next_load_due,
)
from recomamp.domain.schedules import Cadence, Preset, windows_between

DAILY = Cadence(preset=Preset.DAILY, timezone="UTC", time_of_day=time(6, 0), data_lag_days=2)
NOW = datetime(2026, 11, 2, 12, tzinfo=UTC)


def _day(d: int) -> datetime:
    return datetime(2026, 10, d, tzinfo=UTC)


def history() -> list[RunFact]:
    """Oct 1-10 loaded, 11 failed, 12 loaded, 13 skipped (misfire), 14-20 never run (paused a week), 21 failed
    then loaded, 22-26 loaded, 27 cancelled, 28 running, 29 waiting for quota, 30 loaded."""
    runs: list[RunFact] = []
    ids = iter(range(1, 100))

    def run(d: int, status: str, **fields: object) -> None:
        runs.append(RunFact(next(ids), _day(d), _day(d) + timedelta(days=1), status, **fields))  # type: ignore[arg-type]

    for d in [*range(1, 11), 12, *range(22, 27), 30]:
        run(d, "succeeded", rows=100 + d, loaded_at=_day(d) + timedelta(days=2, hours=6, minutes=5))
    run(11, "failed", error_kind="amc_query_failed")
    run(13, "skipped")
    run(21, "failed", error_kind="snowflake_unreachable")
    run(21, "succeeded", rows=121, loaded_at=_day(24))
    run(27, "cancelled", error_kind="cancelled")
    run(28, "running")
    run(29, "pending", wait_reason="amc_quota")
    # A run of a window that is not on today's grid (recorded before an edit of the grid): counted apart.
    runs.append(RunFact(next(ids), _day(5) + timedelta(hours=7), _day(6) + timedelta(hours=7), "succeeded"))
    return runs


def test_each_window_of_a_mixed_history_gets_its_state() -> None:
    grid = complete(windows_between(DAILY, date(2026, 10, 1), date(2026, 10, 30)), NOW)
    assert len(grid) == 30
    coverage = cover(grid, history())
    states = {w.window.start_local.day: w.state for w in coverage.windows}
    assert states[11] is WindowState.FAILED
    assert states[13] is WindowState.SKIPPED
    assert [states[d] for d in range(14, 21)] == [WindowState.NEVER_RUN] * 7
    assert states[21] is WindowState.LOADED  # a later success wins over the earlier failure
    assert states[27] is WindowState.CANCELLED
    assert states[28] is WindowState.RUNNING
    assert states[29] is WindowState.WAITING_QUOTA
    assert coverage.counts() == {
        "loaded": 18,
        "failed": 1,
        "running": 1,
        "queued": 0,
        "waiting_quota": 1,
        "cancelled": 1,
        "skipped": 1,
        "never_run": 7,
    }
    assert [w.window.start_local.day for w in coverage.missing] == [11, 13, 14, 15, 16, 17, 18, 19, 20, 27]
    assert coverage.off_grid_runs == 1
    by_day = {w.window.start_local.day: w for w in coverage.windows}
    assert (by_day[21].rows, by_day[21].runs, by_day[21].loaded_at) == (121, 2, _day(24))
    assert by_day[11].error_kind == "amc_query_failed" and by_day[11].rows is None
    newest = coverage.newest_loaded
    assert newest is not None and newest.window.start == _day(30)


def test_a_window_whose_fire_is_ahead_is_not_owed() -> None:
    grid = windows_between(DAILY, date(2026, 10, 30), date(2026, 11, 2))
    # [Oct 30, Oct 31) fired Nov 2 06:00, before NOW; [Oct 31, Nov 1) fires Nov 3.
    assert [w.start_local.day for _, w in complete(grid, NOW)] == [30]


def test_the_plain_grid_of_the_fixed_history_line_by_line() -> None:
    grid = complete(windows_between(DAILY, date(2026, 10, 1), date(2026, 10, 30)), NOW)
    lines = render_grid(cover(grid, history()).windows, colour=False)
    assert lines == [
        "week of     Mo Tu We Th Fr Sa Su",
        "2026-09-28           L  L  L  L",
        "2026-10-05  L  L  L  L  L  L  F",
        "2026-10-12  L  S  -  -  -  -  -",
        "2026-10-19  -  -  L  L  L  L  L",
        "2026-10-26  L  C  R  W  L",
        "legend: L loaded  F failed  R running  Q queued  W waiting for AMC quota  C cancelled  "
        "S skipped (misfire)  - never run",
    ]


def test_the_coloured_grid_has_the_same_cells_in_colour() -> None:
    grid = complete(windows_between(DAILY, date(2026, 10, 27), date(2026, 10, 28)), NOW)
    lines = render_grid(cover(grid, history()).windows, colour=True)
    assert lines[1] == "2026-10-26     \x1b[35mC\x1b[0m  \x1b[34mR\x1b[0m"


def test_a_weekly_grid_puts_one_cell_in_each_week_row() -> None:
    weekly = Cadence(preset=Preset.WEEKLY, timezone="America/New_York", time_of_day=time(6), day_of_week=0)
    grid = complete(windows_between(weekly, date(2026, 9, 1), date(2026, 9, 30)), NOW)
    lines = render_grid(cover(grid, []).windows)
    # Weekly windows tile from Monday to Monday: each row has its one window on Monday, never run.
    assert lines[1:-1] == ["2026-09-07  -", "2026-09-14  -", "2026-09-21  -", "2026-09-28  -"]


def test_late_only_past_the_fire_that_should_load_newer_data_plus_the_grace() -> None:
    newest_end = datetime(2026, 10, 31, tzinfo=UTC)  # the window [Oct 30, Oct 31) is loaded
    # The window after it ends Nov 1 and is fired Nov 3 at 06:00 (two days of lag).
    assert next_load_due(DAILY, newest_end) == datetime(2026, 11, 3, 6, tzinfo=UTC)
    created = datetime(2026, 9, 1, tzinfo=UTC)
    on_time = freshness(DAILY, newest_end, created, NOW)
    assert (on_time.late, on_time.deadline) == (False, datetime(2026, 11, 3, 12, tzinfo=UTC))
    just_before = freshness(DAILY, newest_end, created, datetime(2026, 11, 3, 11, 59, tzinfo=UTC))
    assert not just_before.late
    after = freshness(DAILY, newest_end, created, datetime(2026, 11, 3, 12, 1, tzinfo=UTC))
    assert after.late and after.late_by(datetime(2026, 11, 3, 13, tzinfo=UTC)) == timedelta(hours=1)
    # A grace of its own: a day.
    assert not freshness(DAILY, newest_end, created, datetime(2026, 11, 4, 5, tzinfo=UTC), timedelta(days=1)).late


def test_a_schedule_that_fires_late_in_the_day_is_not_late_every_evening() -> None:
    evening = Cadence(preset=Preset.DAILY, timezone="UTC", time_of_day=time(23, 0), data_lag_days=2)
    newest_end = datetime(2026, 10, 31, tzinfo=UTC)  # loaded by the fire of Nov 2, 23:00
    # Nov 3 at 22:00: the next fire (23:00) has not happened: not late, though more than cadence + lag passed.
    assert not freshness(evening, newest_end, newest_end, datetime(2026, 11, 3, 22, tzinfo=UTC)).late
    assert freshness(evening, newest_end, newest_end, datetime(2026, 11, 4, 5, 1, tzinfo=UTC)).late


def test_nothing_loaded_yet_is_late_after_the_first_fire_and_the_grace() -> None:
    created = datetime(2026, 11, 1, 7, tzinfo=UTC)  # after the day's 06:00: the first fire is Nov 2 06:00
    assert not freshness(DAILY, None, created, datetime(2026, 11, 2, 11, tzinfo=UTC)).late
    late = freshness(DAILY, None, created, datetime(2026, 11, 2, 12, 1, tzinfo=UTC))
    assert late.late and late.deadline == datetime(2026, 11, 2, 6, tzinfo=UTC) + DEFAULT_GRACE


def test_one_event_per_lateness_episode() -> None:
    since = datetime(2026, 11, 3, tzinfo=UTC)
    assert episode_change(True, None) is FreshnessChange.BECAME_LATE
    assert episode_change(True, since) is None
    assert episode_change(False, since) is FreshnessChange.RECOVERED
    assert episode_change(False, None) is None


def test_the_gauges_missing_count_is_covers_over_the_look_back() -> None:
    # Fired within the 14 days before NOW (Nov 2 12:00): the windows starting Oct 17 to Oct 30.
    spans = lookback_spans(DAILY, NOW.date())
    assert missing_in_lookback(spans, history(), NOW) == 5  # Oct 17-20 never run, Oct 27 cancelled
    grid = complete(windows_between(DAILY, date(2026, 10, 1), date(2026, 11, 2)), NOW)
    in_lookback = [(f, w) for f, w in grid if f > NOW - MISSING_LOOKBACK]
    assert [w.start_local.day for _, w in in_lookback] == list(range(17, 31))
    assert len(cover(in_lookback, history()).missing) == 5
    # Nothing recorded: every window of the look-back is missing; a day later the look-back moves on.
    assert missing_in_lookback(spans, [], NOW) == 14
    later = NOW + timedelta(days=1)
    assert missing_in_lookback(lookback_spans(DAILY, later.date()), history(), later) == 5  # Oct 17 out, Oct 31 in

"""The CLI's output layer as pure functions: JSON types, windows in local dates, tables that fit."""

from __future__ import annotations

from datetime import UTC, date, datetime, time
from decimal import Decimal
from zoneinfo import ZoneInfo

from recomamp.cli.output import Column, jsonable, render_table, shorten, window_text
from recomamp.cli.status import instance_labels

BERLIN = ZoneInfo("Europe/Berlin")


def test_json_has_one_timestamp_shape_and_numbers_as_numbers() -> None:
    value = {
        "at": datetime(2026, 11, 17, 6, 0, 0, 123456, tzinfo=BERLIN),
        "day": date(2026, 11, 17),
        "time_of_day": time(6, 30),
        "seconds": Decimal("7.316958"),
        "count": Decimal("3"),
        "nested": [{"at": datetime(2026, 3, 29, 1, 0, tzinfo=UTC)}],
    }
    assert jsonable(value) == {
        "at": "2026-11-17T05:00:00Z",
        "day": "2026-11-17",
        "time_of_day": "06:30",
        "seconds": 7.316958,
        "count": 3,
        "nested": [{"at": "2026-03-29T01:00:00Z"}],
    }


def test_a_window_is_written_in_its_own_dates_end_excluded() -> None:
    # A Berlin daily window, as stored (UTC instants): the UTC dates would read 2026-11-16..2026-11-17.
    start = datetime(2026, 11, 16, 23, 0, tzinfo=UTC)
    end = datetime(2026, 11, 17, 23, 0, tzinfo=UTC)
    assert window_text(start, end, "Europe/Berlin") == "[2026-11-17, 2026-11-18)"
    # Wall-clock times without a zone are the schedule's already; across the spring-forward night too.
    assert window_text(datetime(2026, 3, 29), datetime(2026, 3, 30), "Europe/Berlin") == "[2026-03-29, 2026-03-30)"
    # A boundary that is not midnight keeps its time, so two windows never read alike.
    assert (
        window_text(datetime(2026, 3, 29, 6), datetime(2026, 3, 30, 6), None) == "[2026-03-29 06:00, 2026-03-30 06:00)"
    )


def test_a_cut_keeps_the_command_at_the_end_of_a_message() -> None:
    message = "Amazon refused the refresh token after 3 attempts; sign in again: `recomamp users authorize ada@x.com`"
    cut = shorten(message, 60)
    assert len(cut) == 60 and cut.endswith("`recomamp users authorize ada@x.com`") and "…" in cut
    assert shorten("short", 60) == "short"


def test_a_table_fits_its_width_by_cutting_the_flexible_columns_first() -> None:
    rows = [
        {"id": 1, "name": "n" * 80, "state": "succeeded", "message": "m" * 200},
        {"id": 22, "name": "short", "state": "waiting (quota)", "message": None},
    ]
    columns = [Column("id"), Column("name", flexible=True), Column("state"), Column("message", flexible=True)]
    cut: set[tuple[int, str]] = set()
    text = render_table(rows, columns, width=120, cut=cut)
    lines = text.splitlines()
    assert max(len(line) for line in lines) <= 120
    assert "waiting (quota)" in text  # a fixed column is whole
    assert cut == {(0, "name"), (0, "message")}
    wide = render_table(rows, columns, width=None)
    assert "m" * 200 in wide


def test_quota_is_shown_by_instance_id_and_by_host_only_where_two_hosts_share_one() -> None:
    quota = {"https://a.example/amc1": 3, "https://a.example/amc2": 1, "https://b.example/amc2": 2}
    assert instance_labels(quota) == {"amc1": 3, "https://a.example/amc2": 1, "https://b.example/amc2": 2}


def test_a_denied_consent_at_the_simulator_says_how_to_approve_and_at_amazon_says_nothing_more() -> None:
    from recomamp.cli.users import simulator_hint

    denied = "Amazon says the user denied access (access_denied): nothing stored"
    hint = simulator_hint(denied, "http://127.0.0.1:8900/ap/oa?client_id=x", "me@example.com")
    assert "curl -s -XPOST http://127.0.0.1:8900/_sandbox/consent" in hint and '"email": "me@example.com"' in hint
    assert simulator_hint(denied, "https://www.amazon.com/ap/oa?client_id=x", "me@example.com") == ""
    assert simulator_hint("Amazon answered server_error", "http://127.0.0.1:8900/ap/oa", "me@example.com") == ""

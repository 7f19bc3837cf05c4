"""The fleet file's pure parts: validation over in-memory documents, the output columns of a query, the diff."""

from __future__ import annotations

import tomllib
from datetime import time
from typing import Any

import pytest

from recomamp.domain.fleet import (
    Document,
    FleetInvalid,
    Problem,
    Stored,
    StoredSchedule,
    diff,
    schedule_fields,
    select_output_columns,
    validate,
)
from recomamp.services.fleet import _schedule_lines, _toml

USERS = """
[[users]]
email = "ana@example.com"
region = "eu"
[[users.instances]]
instance_id = "amc1"
advertiser_id = "E1"
marketplace_id = "M1"
"""


def fleet_of(text: str, sql_files: dict[str, str] | None = None) -> Any:
    files = sql_files or {}

    def read_sql(path: str) -> str | Problem:
        return files[path] if path in files else Problem("", "", f"{path!r} does not exist")

    return validate([Document("fleet.toml", tomllib.loads(text))], read_sql)


def problems_of(text: str) -> list[str]:
    with pytest.raises(FleetInvalid) as caught:
        fleet_of(text)
    return [f"{p.path}: {p.message}" for p in caught.value.problems]


@pytest.mark.parametrize(
    ("sql", "columns"),
    [
        ("SELECT a, b AS c FROM t", ["a", "c"]),
        ("select distinct t.a, sum(x) as total from t group by 1", ["a", "total"]),
        ("WITH w AS (SELECT q AS z FROM t) SELECT z, COUNT(*) AS n FROM w", ["z", "n"]),
        ("SELECT a, -- a comment, with commas\n f(b, c) AS d FROM t", ["a", "d"]),
        ("SELECT 'x, y' AS s, a FROM t", ["s", "a"]),
        ("SELECT * FROM t", None),  # cannot tell: nothing is checked
        ("SELECT a + 1 FROM t", None),
        ("SELECT a, b FROM t UNION ALL SELECT c, d FROM u", ["a", "b"]),
    ],
)
def test_the_output_columns_of_a_query_where_the_sql_says_so(sql: str, columns: list[str] | None) -> None:
    assert select_output_columns(sql) == columns


def test_every_problem_of_a_schedule_is_reported_at_once() -> None:
    found = problems_of(
        USERS
        + """
[[schedules]]
user = "ana@example.com"
name = "s"
instance = "nope"
preset = "weekly"
timezone = "Mars/Olympus"
sql = "SELECT a FROM t"
workflow_id = "w"
"""
    )
    assert found == [
        'schedules[0].day_of_week: required with preset = "weekly"; e.g. day_of_week = "monday"',
        "schedules[0].instance: ana@example.com declares no instance 'nope'; add it to their instances, or use one "
        "of: amc1",
        'schedules[0].time: required with preset = "weekly"; e.g. time = "06:00"',
        "schedules[0].timezone: 'Mars/Olympus' is not an IANA timezone; use a name such as America/New_York, "
        "Europe/London or UTC",
        'schedules[0].workflow_id: give exactly one of sql = "…", sql_file = "sql/name.sql" or workflow_id = '
        '"…" (found sql, workflow_id)',
    ]


def test_the_domain_rules_of_schedules_create_apply_in_the_files_terms() -> None:
    found = problems_of(
        USERS
        + """
[[schedules]]
user = "ana@example.com"
name = "s"
instance = "amc1"
time = "06:00"
sql = "SELECT a FROM t"
data_lag_days = 300
lookback_days = 200
"""
    )
    assert found == [
        "schedules[0].lookback_days: 500 days back is beyond AMC's retention of about 400 days; shorten one of them"
    ]


def _row(**changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "instance_id": "amc1",
        "preset": "daily",
        "time_of_day": time(6, 0),
        "day_of_week": None,
        "day_of_month": None,
        "cron_expression": None,
        "timezone": "UTC",
        "sql_query": "SELECT a FROM t",
        "workflow_id": None,
        "parameter_values": {},
        "lookback_days": None,
        "data_lag_days": 14,
        "is_active": True,
        "misfire_policy": "coalesce",
        "catch_up_limit": 31,
        "auto_pause_on_failure": False,
        "failure_threshold": 3,
        "allow_overlap": False,
        "snowflake_enabled": False,
        "snowflake_table_name": None,
        "snowflake_schema_name": None,
        "snowflake_key_columns": None,
    }
    return row | changes


SCHEDULE = """
[[schedules]]
user = "ana@example.com"
name = "s"
instance = "amc1"
time = "06:00"
sql = "SELECT a FROM t"
"""


def _stored(*rows: dict[str, Any]) -> Stored:
    return Stored(
        {"ana@example.com": {"email": "ana@example.com", "region": "eu"}},
        {("ana@example.com", "amc1"): {"advertiser_id": "E1", "marketplace_id": "M1", "region": "eu", "name": None}},
        {},
        {("ana@example.com", "s"): [StoredSchedule(7 + i, schedule_fields(row), None) for i, row in enumerate(rows)]},
    )


def test_a_stored_schedule_equal_to_the_file_is_no_change_and_one_edit_is_exactly_that_edit() -> None:
    assert diff(fleet_of(USERS + SCHEDULE), _stored(_row()), prune=True) == []
    (change,) = diff(fleet_of(USERS + SCHEDULE.replace("06:00", "07:15")), _stored(_row()), prune=False)
    assert (change.op, change.name, change.schedule_id) == ("~", "s", 7)
    assert [(f.key, f.old, f.new) for f in change.fields] == [("time", "06:00", "07:15")]
    assert change.notes == ["moves the grid (time): the next fire is computed again"]


def test_another_instance_or_preset_is_refused_in_place_and_duplicate_stored_names_are_named() -> None:
    (moved,) = diff(
        fleet_of(USERS + SCHEDULE), _stored(_row(preset="custom", cron_expression="0 6 * * *")), prune=False
    )
    assert moved.refused is not None and moved.refused.startswith("preset: a schedule cannot move to another preset")
    (twice,) = diff(fleet_of(USERS + SCHEDULE), _stored(_row(), _row()), prune=False)
    assert twice.refused is not None and "(ids 7, 8)" in twice.refused


def test_prune_archives_only_the_files_users_schedules() -> None:
    stored = _stored(_row())
    assert diff(fleet_of(USERS), stored, prune=False) == []
    (archived,) = diff(fleet_of(USERS), stored, prune=True)
    assert (archived.op, archived.schedule_id) == ("-", 7)
    other = USERS.replace("ana@", "zoe@")
    assert [c.kind for c in diff(fleet_of(other), stored, prune=True)] == ["user", "instance"]


@pytest.mark.parametrize(
    "text",
    ["SELECT a\nFROM t\n", "SELECT 'it''s'\nFROM t", "no newline", "ends with a quote\n'", "tab\tand ''' quotes\n"],
)
def test_exported_strings_read_back_as_they_were(text: str) -> None:
    assert tomllib.loads(f"v = {_toml(text)}")["v"] == text


def test_an_exported_schedule_validates_back_to_the_same_fields() -> None:
    row = _row(
        preset="weekly",
        day_of_week=2,
        sql_query="SELECT a AS x,\n  b\nFROM t\n",
        snowflake_enabled=False,
        snowflake_table_name="T",
        snowflake_key_columns=["x"],
        is_active=False,
    )
    # A Snowflake target for the user, so the schedule's table is allowed.
    target = '[users.snowflake]\naccount = "a"\nuser = "L"\ndatabase = "D"\npassword = { file = "/x" }\n\n'
    text = USERS + target + "\n".join(_schedule_lines("ana@example.com", "s", schedule_fields(row)))
    (schedule,) = fleet_of(text).schedules
    assert schedule.fields == schedule_fields(row)


def test_the_shipped_example_fleet_is_valid() -> None:
    from importlib.resources import files

    text = files("recomamp").joinpath("example-fleet.toml").read_text(encoding="utf-8")
    fleet = validate([Document("example-fleet.toml", tomllib.loads(text))], lambda path: Problem("", "", "no files"))
    assert (len(fleet.users), len(fleet.instances), len(fleet.snowflake), len(fleet.schedules)) == (2, 3, 2, 3)

from __future__ import annotations

import pytest

from recomamp.domain.columns import VARCHAR, ColumnType, Kind, TypeTracker, combine, fits, from_snowflake, infer_value
from recomamp.domain.identifiers import (
    InvalidIdentifier,
    column_name,
    quote,
    validate_identifier,
)
from recomamp.snowflake.errors import classify
from recomamp.snowflake.loader import result_columns


@pytest.mark.parametrize("name", ["results", "_x", "AMC_Daily$2", "a" * 255])
def test_good_identifiers_pass(name: str) -> None:
    assert validate_identifier(name, "snowflake_table_name") == name


@pytest.mark.parametrize(
    "name",
    ['my"table', "t;DROP TABLE users", "has space", "1starts_with_digit", "a" * 256, "", "db.table", "naïve"],
)
def test_bad_identifiers_say_what_is_allowed(name: str) -> None:
    with pytest.raises(InvalidIdentifier) as excinfo:
        validate_identifier(name, "snowflake_table_name")
    message = str(excinfo.value)
    assert message.startswith("snowflake_table_name: ")
    assert "letters, digits, _ and $" in message


def test_quoting_doubles_quotes() -> None:
    assert quote('we"ird') == '"we""ird"'


def test_result_column_names_are_cleaned_and_unique() -> None:
    assert column_name("campaign id", 0) == "CAMPAIGN_ID"
    assert column_name("  ", 3) == "COLUMN_4"
    assert column_name("7day_clicks", 0) == "_7DAY_CLICKS"
    assert result_columns(["a", "A", "uploaded_at", "x-y"]) == ["A", "A_2", "UPLOADED_AT_2", "X_Y"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("", None),
        ("true", ColumnType(Kind.BOOLEAN)),
        ("FALSE", ColumnType(Kind.BOOLEAN)),
        ("-42", ColumnType(Kind.INTEGER)),
        ("12.34", ColumnType(Kind.DECIMAL, 2)),
        ("0.0123456789012345", ColumnType(Kind.FLOAT)),
        ("1.5e-05", ColumnType(Kind.FLOAT)),
        ("1" * 39, ColumnType(Kind.FLOAT)),
        ("2026-11-01", ColumnType(Kind.DATE)),
        ("2026-11-01 10:00:00", ColumnType(Kind.TIMESTAMP)),
        ("2026-11-01T10:00:00.123Z", ColumnType(Kind.TIMESTAMP)),
        ("2026-11-01T10:00:00+02:00", VARCHAR),
        ("Campaign 7, brand", VARCHAR),
    ],
)
def test_value_inference(value: str, expected: ColumnType | None) -> None:
    assert infer_value(value) == expected


def test_types_combine_to_the_narrowest_that_holds_both() -> None:
    integer, dec2, dec4 = ColumnType(Kind.INTEGER), ColumnType(Kind.DECIMAL, 2), ColumnType(Kind.DECIMAL, 4)
    assert combine(integer, dec2) == dec2
    assert combine(dec2, dec4) == dec4
    assert combine(dec2, ColumnType(Kind.FLOAT)) == ColumnType(Kind.FLOAT)
    assert combine(ColumnType(Kind.DATE), ColumnType(Kind.TIMESTAMP)) == ColumnType(Kind.TIMESTAMP)
    assert combine(integer, ColumnType(Kind.BOOLEAN)) == VARCHAR
    assert combine(None, integer) == integer


def test_fits_decides_when_a_column_must_widen() -> None:
    assert fits(ColumnType(Kind.DECIMAL, 4), ColumnType(Kind.INTEGER))
    assert fits(ColumnType(Kind.FLOAT), ColumnType(Kind.DECIMAL, 2))
    assert fits(VARCHAR, ColumnType(Kind.DATE))
    assert not fits(ColumnType(Kind.INTEGER), VARCHAR)
    assert not fits(ColumnType(Kind.DECIMAL, 2), ColumnType(Kind.DECIMAL, 4))
    assert from_snowflake("NUMBER", 0) == ColumnType(Kind.INTEGER)
    assert from_snowflake("TEXT", None) == VARCHAR


def test_tracker_folds_rows() -> None:
    tracker = TypeTracker(3)
    for row in (["1", "2026-01-01", ""], ["2.5", "2026-01-02 00:00:00", ""], ["3", "2026-01-01", ""]):
        tracker.observe(row)
    assert tracker.types == [ColumnType(Kind.DECIMAL, 1), ColumnType(Kind.TIMESTAMP), None]


class FakeConnectorError(Exception):
    def __init__(self, msg: str, errno: int) -> None:
        super().__init__(msg)
        self.msg = msg
        self.errno = errno


class OperationalError(FakeConnectorError):
    pass


def test_snowflake_error_classes() -> None:
    assert not classify(FakeConnectorError("Incorrect username or password", 390100)).transient
    missing = classify(FakeConnectorError("Table 'X' does not exist or not authorized.", 2003))
    assert not missing.transient
    assert "the role's grants" in missing.message
    assert classify(OperationalError("HTTP 503: Service Unavailable", 250003)).transient
    assert classify(FakeConnectorError("Warehouse 'LOAD_WH' is resuming", 0)).transient
    assert classify(TimeoutError()).transient
    assert not classify(FakeConnectorError("SQL compilation error", 1003)).transient


@pytest.mark.parametrize(
    "column",
    [
        ["1", "-2", "+3"],
        ["1", "2.50", "3.125"],
        ["1" * 27 + ".5"],  # too wide for the fast path: the slow path decides
        ["1.5e-05", "2"],
        ["true", "FALSE"],
        ["2026-01-01", "2026-01-02"],
        ["2026-01-01", "2026-01-02 10:00:00"],
        ["2026-01-01T10:00:00.123Z"],
        ["12\n34", "5"],  # a value with its own newline must not pass as two integers
        ["1", "x"],
        ["0.1234567890123"],
    ],
)
def test_column_inference_agrees_with_value_by_value(column: list[str]) -> None:
    from recomamp.domain.columns import infer_column

    expected = None
    for value in column:
        expected = combine(expected, infer_value(value))
    assert infer_column(column) == expected

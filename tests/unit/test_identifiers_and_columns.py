from __future__ import annotations

import pytest

from recomamp.domain.columns import (
    VARCHAR,
    ColumnType,
    Kind,
    combine,
    fits,
    from_snowflake,
    infer_value,
    resolve,
    widened,
)
from recomamp.domain.identifiers import (
    InvalidIdentifier,
    column_name,
    quote,
    validate_identifier,
)
from recomamp.snowflake.errors import classify
from recomamp.snowflake.staging import result_columns


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


def test_widening_keeps_numbers_numbers() -> None:
    assert widened(ColumnType(Kind.INTEGER), ColumnType(Kind.DECIMAL, 2)) == ColumnType(Kind.DECIMAL, 2)
    assert widened(ColumnType(Kind.DECIMAL, 2), ColumnType(Kind.DECIMAL, 4)) == ColumnType(Kind.DECIMAL, 4)
    assert widened(ColumnType(Kind.INTEGER), ColumnType(Kind.FLOAT)) == ColumnType(Kind.FLOAT)
    assert widened(ColumnType(Kind.DATE), ColumnType(Kind.TIMESTAMP)) == ColumnType(Kind.TIMESTAMP)
    assert widened(ColumnType(Kind.INTEGER), ColumnType(Kind.DATE)) == VARCHAR


def test_resolve_takes_the_declared_type_unless_the_values_break_it() -> None:
    assert resolve(None, ColumnType(Kind.INTEGER)) == ColumnType(Kind.INTEGER)
    assert resolve(VARCHAR, ColumnType(Kind.INTEGER)) == VARCHAR
    assert resolve(ColumnType(Kind.FLOAT), ColumnType(Kind.INTEGER)) == ColumnType(Kind.FLOAT)
    assert resolve(ColumnType(Kind.DECIMAL, 0), ColumnType(Kind.DECIMAL, 3)) == ColumnType(Kind.DECIMAL, 3)
    assert resolve(ColumnType(Kind.INTEGER), None) == ColumnType(Kind.INTEGER)
    assert resolve(ColumnType(Kind.BOOLEAN), ColumnType(Kind.INTEGER)) == VARCHAR


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

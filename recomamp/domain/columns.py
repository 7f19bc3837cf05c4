"""Column types inferred from result values, and how types combine and widen. No I/O.

The lattice: BOOLEAN, INTEGER, DECIMAL(scale), FLOAT, DATE, TIMESTAMP, else VARCHAR. Combining two types
gives the narrowest type that holds both: INTEGER + DECIMAL → DECIMAL, any number + FLOAT → FLOAT,
DATE + TIMESTAMP → TIMESTAMP, anything else → VARCHAR. Empty values are NULL and fit every type.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Kind(StrEnum):
    BOOLEAN = "BOOLEAN"
    INTEGER = "INTEGER"
    DECIMAL = "DECIMAL"
    FLOAT = "FLOAT"
    DATE = "DATE"
    TIMESTAMP = "TIMESTAMP"
    VARCHAR = "VARCHAR"


MAX_DECIMAL_SCALE = 12
MAX_NUMBER_DIGITS = 38


@dataclass(frozen=True)
class ColumnType:
    kind: Kind
    scale: int = 0  # DECIMAL only

    def sql(self) -> str:
        """The Snowflake type to create the column with."""
        return {
            Kind.BOOLEAN: "BOOLEAN",
            Kind.INTEGER: "NUMBER(38,0)",
            Kind.DECIMAL: f"NUMBER(38,{self.scale})",
            Kind.FLOAT: "FLOAT",
            Kind.DATE: "DATE",
            Kind.TIMESTAMP: "TIMESTAMP_NTZ",
            Kind.VARCHAR: "VARCHAR",
        }[self.kind]


VARCHAR = ColumnType(Kind.VARCHAR)
_INTEGER = re.compile(r"^[+-]?\d+$")
_DECIMAL = re.compile(r"^[+-]?(\d+)\.(\d+)$")
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_TIMESTAMP = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z?$")
_BOOLEANS = frozenset({"true", "false"})


def infer_value(value: str) -> ColumnType | None:
    """The narrowest type that holds `value`; None for an empty value (NULL)."""
    if value == "":
        return None
    if value.lower() in _BOOLEANS:
        return ColumnType(Kind.BOOLEAN)
    if _INTEGER.match(value):
        digits = len(value.lstrip("+-"))
        return ColumnType(Kind.INTEGER) if digits <= MAX_NUMBER_DIGITS else ColumnType(Kind.FLOAT)
    if match := _DECIMAL.match(value):
        whole, fraction = match.groups()
        if len(fraction) <= MAX_DECIMAL_SCALE and len(whole) + len(fraction) <= MAX_NUMBER_DIGITS:
            return ColumnType(Kind.DECIMAL, scale=len(fraction))
        return ColumnType(Kind.FLOAT)
    if _FLOAT.match(value):
        return ColumnType(Kind.FLOAT)
    if _DATE.match(value):
        return ColumnType(Kind.DATE)
    if _TIMESTAMP.match(value):
        return ColumnType(Kind.TIMESTAMP)
    return VARCHAR


_NUMERIC = frozenset({Kind.INTEGER, Kind.DECIMAL, Kind.FLOAT})


def combine(a: ColumnType | None, b: ColumnType | None) -> ColumnType | None:
    if a is None:
        return b
    if b is None or a == b:
        return a
    kinds = {a.kind, b.kind}
    if kinds <= _NUMERIC:
        if Kind.FLOAT in kinds:
            return ColumnType(Kind.FLOAT)
        return ColumnType(Kind.DECIMAL, scale=max(a.scale, b.scale))
    if kinds == {Kind.DATE, Kind.TIMESTAMP}:
        return ColumnType(Kind.TIMESTAMP)
    return VARCHAR


def fits(existing: ColumnType, incoming: ColumnType | None) -> bool:
    """Whether values of type `incoming` load into a column of type `existing` without loss."""
    if incoming is None or existing == incoming or existing.kind is Kind.VARCHAR:
        return True
    if existing.kind is Kind.FLOAT:
        return incoming.kind in _NUMERIC
    if existing.kind is Kind.DECIMAL:
        return incoming.kind is Kind.INTEGER or (incoming.kind is Kind.DECIMAL and incoming.scale <= existing.scale)
    if existing.kind is Kind.TIMESTAMP:
        return incoming.kind is Kind.DATE
    return False


def from_snowflake(data_type: str, scale: int | None) -> ColumnType:
    """An existing column's type, from information_schema.columns."""
    upper = data_type.upper()
    if upper in ("NUMBER", "DECIMAL", "NUMERIC", "INT", "INTEGER", "BIGINT"):
        return ColumnType(Kind.INTEGER) if not scale else ColumnType(Kind.DECIMAL, scale=scale)
    if upper in ("FLOAT", "DOUBLE", "REAL", "FLOAT8", "DOUBLE PRECISION"):
        return ColumnType(Kind.FLOAT)
    if upper == "BOOLEAN":
        return ColumnType(Kind.BOOLEAN)
    if upper == "DATE":
        return ColumnType(Kind.DATE)
    if upper.startswith("TIMESTAMP") or upper == "DATETIME":
        return ColumnType(Kind.TIMESTAMP)
    return VARCHAR


# AMC's outputColumns dataType → the column type to create. STRING stays text whatever its values look like
# (a zip code keeps its leading zero). DECIMAL's scale comes from the values.
_AMC_TYPES: dict[str, ColumnType] = {
    "STRING": VARCHAR,
    "VARCHAR": VARCHAR,
    "LONG": ColumnType(Kind.INTEGER),
    "INTEGER": ColumnType(Kind.INTEGER),
    "INT": ColumnType(Kind.INTEGER),
    "BIGINT": ColumnType(Kind.INTEGER),
    "SHORT": ColumnType(Kind.INTEGER),
    "DOUBLE": ColumnType(Kind.FLOAT),
    "FLOAT": ColumnType(Kind.FLOAT),
    "DECIMAL": ColumnType(Kind.DECIMAL, scale=0),
    "BOOLEAN": ColumnType(Kind.BOOLEAN),
    "DATE": ColumnType(Kind.DATE),
    "TIMESTAMP": ColumnType(Kind.TIMESTAMP),
}


def from_amc(data_type: str | None) -> ColumnType | None:
    """A column type from AMC's outputColumns dataType; None when AMC did not say (or said something new)."""
    return _AMC_TYPES.get((data_type or "").upper())


def resolve(declared: ColumnType | None, observed: ColumnType | None) -> ColumnType | None:
    """The column's type for this result: what AMC declared, unless the values do not fit it (then the
    narrowest type holding both); what the values show when AMC declared nothing."""
    if declared is None:
        return observed
    if declared.kind is Kind.VARCHAR:
        return VARCHAR
    if declared.kind is Kind.DECIMAL and observed is not None and observed.kind in (Kind.INTEGER, Kind.DECIMAL):
        return ColumnType(Kind.DECIMAL, scale=max(declared.scale, observed.scale))
    if observed is None or fits(declared, observed):
        return declared
    return combine(declared, observed)


def widened(existing: ColumnType, incoming: ColumnType) -> ColumnType:
    """What a column whose new values do not fit becomes: a number stays a number (NUMBER with more scale, or
    FLOAT), a DATE becomes a TIMESTAMP; anything else becomes text. Every existing value is kept."""
    result = combine(existing, incoming)
    return result if result is not None else VARCHAR

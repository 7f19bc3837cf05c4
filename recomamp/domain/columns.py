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


def _repeated(pattern: str) -> re.Pattern[str]:
    """`pattern`, one or more times, separated by newlines: a whole column checked in one regex pass."""
    return re.compile(rf"(?:{pattern})(?:\n(?:{pattern}))*")


# Conservative fast paths: a column whose every value matches one of these has exactly the type that
# value-by-value inference would give. Anything else takes the slow path, value by value.
_ALL_BOOLEAN = _repeated(r"(?i:true|false)")
_ALL_NUMBER = _repeated(r"[+-]?\d{1,26}(?:\.\d{1,12})?")  # integers, or decimals within NUMBER(38, 12)
_ALL_INTEGER = _repeated(r"[+-]?\d{1,38}")
_ALL_DATE_OR_TIMESTAMP = _repeated(r"\d{4}-\d{2}-\d{2}(?:[T ]\d{2}:\d{2}:\d{2}(?:\.\d{1,9})?Z?)?")
_FRACTION = re.compile(r"\.(\d+)")


def infer_column(values: list[str]) -> ColumnType | None:
    """The type of a batch of one column's values (empties already removed)."""
    if not values:
        return None
    joined = "\n".join(values)
    if joined.count("\n") == len(values) - 1:  # no value holds a newline of its own
        if _ALL_INTEGER.fullmatch(joined):
            return ColumnType(Kind.INTEGER)
        if _ALL_NUMBER.fullmatch(joined):
            scale = max(len(fraction) for fraction in _FRACTION.findall(joined))
            return ColumnType(Kind.DECIMAL, scale=scale)
        if _ALL_BOOLEAN.fullmatch(joined):
            return ColumnType(Kind.BOOLEAN)
        if _ALL_DATE_OR_TIMESTAMP.fullmatch(joined):
            return ColumnType(Kind.TIMESTAMP) if (" " in joined or "T" in joined) else ColumnType(Kind.DATE)
    result: ColumnType | None = None
    for value in set(values):
        result = combine(result, infer_value(value))
        if result == VARCHAR:
            break
    return result


class TypeTracker:
    """Folds every value of every column into its inferred type, batch by batch."""

    def __init__(self, width: int) -> None:
        self.types: list[ColumnType | None] = [None] * width

    def observe(self, row: list[str]) -> None:
        self.observe_batch([row])

    def observe_batch(self, rows: list[list[str]]) -> None:
        if not rows:
            return
        for index, column in enumerate(zip(*rows, strict=True)):
            current = self.types[index]
            if current == VARCHAR:
                continue  # nothing is wider: no need to look
            self.types[index] = combine(current, infer_column([value for value in column if value]))

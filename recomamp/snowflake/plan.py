"""What the target table needs before a run's rows go in: pure, from its columns (DESC TABLE) and the run's types.

Every statement here is DDL (or the UPDATE that copies a column into its wider twin), so all of it runs before
the load's transaction: DDL commits any open transaction in Snowflake.
- No table: CREATE it with the result's columns and the time-series columns.
- A table made before recomamp loaded it: ADD the time-series columns.
- A new result column: ADD COLUMN IF NOT EXISTS (two loads adding one column at once must not fail).
- A column whose new values no longer fit (a number wider, a DATE becoming a TIMESTAMP, anything becoming text):
  Snowflake cannot change a NUMBER's scale or a NUMBER or DATE to text in place, so the column is copied into a
  wider twin, dropped, and the twin renamed; a load that died midway left the twin, and the next one finishes it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from recomamp.domain.columns import ColumnType, fits, from_snowflake, widened
from recomamp.domain.identifiers import qualified, quote

WIDENING_SUFFIX = "__RECOMAMP_WIDEN"
LEGACY_WIDENING_SUFFIX = "__RECOMAMP_TEXT"  # what earlier releases left behind when a widening was cut short
METADATA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("UPLOADED_AT", "TIMESTAMP_NTZ"),
    ("RECOMAMP_SCHEDULE_ID", "NUMBER(38,0)"),
    ("RECOMAMP_RUN_ID", "NUMBER(38,0)"),
    ("RECOMAMP_WINDOW_START", "TIMESTAMP_NTZ"),
    ("RECOMAMP_WINDOW_END", "TIMESTAMP_NTZ"),
)
_DESC_TYPE = re.compile(r"^\s*([A-Za-z_ ]+?)\s*(?:\(\s*(\d+)\s*(?:,\s*(\d+)\s*)?\))?\s*$")


def desc_type(text: str) -> ColumnType:
    """A column's type as DESC TABLE writes it: NUMBER(38,2), VARCHAR(16777216), TIMESTAMP_NTZ(9), FLOAT…"""
    match = _DESC_TYPE.match(text)
    if match is None:
        return from_snowflake(text, None)
    base, _, scale = match.groups()
    return from_snowflake(base, int(scale) if scale is not None else None)


def columns_from_desc(rows: list[tuple[object, ...]]) -> dict[str, ColumnType]:
    """DESC TABLE's rows (name, type, kind, …) → each column's type, upper-cased names, in table order."""
    return {str(row[0]).upper(): desc_type(str(row[1])) for row in rows if len(row) < 3 or row[2] == "COLUMN"}


@dataclass(frozen=True)
class Step:
    kind: str  # "ddl", or "dml" for the copy into a wider twin
    sql: str


@dataclass
class TablePlan:
    steps: list[Step] = field(default_factory=list)
    # Each result column's type in the table once the steps ran.
    final: dict[str, ColumnType] = field(default_factory=dict)
    created: bool = False
    added: list[str] = field(default_factory=list)
    widened: list[str] = field(default_factory=list)


def plan_table(
    parts: tuple[str, str, str], existing: Mapping[str, ColumnType] | None, incoming: Mapping[str, ColumnType]
) -> TablePlan:
    """`existing`: the table's columns, or None when it does not exist. `incoming`: the run's column types."""
    name = qualified(*parts)
    plan = TablePlan()
    if not existing:
        definitions = [f"{quote(c)} {t.sql()}" for c, t in incoming.items()]
        definitions += [f"{quote(c)} {sql_type}" for c, sql_type in METADATA_COLUMNS]
        plan.steps.append(Step("ddl", f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(definitions)})"))
        plan.created = True
        plan.final = dict(incoming)
        return plan
    current = dict(existing)
    for twin in [c for c in current if c.endswith((WIDENING_SUFFIX, LEGACY_WIDENING_SUFFIX))]:
        column = twin.removesuffix(WIDENING_SUFFIX).removesuffix(LEGACY_WIDENING_SUFFIX)
        if column in current:  # died before DROP: copy again (the copy may be partial), then swap
            plan.steps.append(_copy_into_twin(name, column, twin, current[twin].sql()))
            plan.steps.append(Step("ddl", f"ALTER TABLE {name} DROP COLUMN {quote(column)}"))
        plan.steps.append(Step("ddl", f"ALTER TABLE {name} RENAME COLUMN {quote(twin)} TO {quote(column)}"))
        current[column] = current.pop(twin)
    for column, sql_type in METADATA_COLUMNS:
        if column not in current:  # a table made before recomamp loaded it: give it the time-series columns
            plan.steps.append(Step("ddl", f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote(column)} {sql_type}"))
    for column, wanted in incoming.items():
        have = current.get(column)
        if have is None:
            plan.steps.append(
                Step("ddl", f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote(column)} {wanted.sql()}")
            )
            plan.added.append(column)
            plan.final[column] = wanted
        elif fits(have, wanted):
            plan.final[column] = have
        else:
            to = widened(have, wanted)
            twin = f"{column}{WIDENING_SUFFIX}"
            plan.steps += [
                Step("ddl", f"ALTER TABLE {name} ADD COLUMN IF NOT EXISTS {quote(twin)} {to.sql()}"),
                _copy_into_twin(name, column, twin, to.sql()),
                Step("ddl", f"ALTER TABLE {name} DROP COLUMN {quote(column)}"),
                Step("ddl", f"ALTER TABLE {name} RENAME COLUMN {quote(twin)} TO {quote(column)}"),
            ]
            plan.widened.append(column)
            plan.final[column] = to
    return plan


def _copy_into_twin(table: str, column: str, twin: str, sql_type: str) -> Step:
    return Step("dml", f"UPDATE {table} SET {quote(twin)} = CAST({quote(column)} AS {sql_type})")

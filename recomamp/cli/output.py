"""The one output layer of the CLI: JSON for scripts, tables and fields for people.

JSON: one timestamp format (ISO 8601 in UTC with a `Z`, to the second), dates as YYYY-MM-DD,
numbers as JSON numbers (a Postgres NUMERIC arrives as Decimal and would otherwise print as a string),
durations as seconds. Tables: they fit the terminal (120 columns when it cannot be asked, at most 120
unless `--wide`), and a cell that must be cut keeps its start and its tail, because the tail of a message
is where the command that fixes it is. Windows are written in the schedule's own dates as `[start, end)`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from enum import Enum
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

DEFAULT_WIDTH = 120
GAP = "  "
ELLIPSIS = "…"


# --- JSON ---------------------------------------------------------------------------------------------


def utc_text(value: datetime) -> str:
    """2026-11-17T06:00:00Z: always this shape, to the second (durations are given as seconds of their own)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def jsonable(value: Any) -> Any:
    """A value as plain JSON types, recursively: the one place the CLI decides how a type is written."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return utc_text(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, time):
        return value.strftime("%H:%M")
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return jsonable(value.value)
    if isinstance(value, UUID | Path | ZoneInfo):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(item) for item in value]
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump())
    if hasattr(value, "__dataclass_fields__"):
        return jsonable({name: getattr(value, name) for name in value.__dataclass_fields__})
    if hasattr(value, "get_secret_value"):
        return "********"
    return str(value)


def print_json(value: Any) -> None:
    print(json.dumps(jsonable(value), indent=2))


def print_json_line(value: Any) -> None:
    """One JSON object per line, for streams (`runs watch --json`)."""
    print(json.dumps(jsonable(value)), flush=True)


# --- dates and windows --------------------------------------------------------------------------------


def zone(name: str | None) -> tzinfo:
    return ZoneInfo(name) if name else UTC


def when(value: datetime | None, *, seconds: bool = False, timezone: str | None = None) -> str:
    """A moment for a person: `2026-11-17 06:00 UTC` (or in a schedule's zone, with its abbreviation)."""
    if value is None:
        return "-"
    local = value.astimezone(zone(timezone))
    return local.strftime(f"%Y-%m-%d %H:%M{':%S' if seconds else ''} %Z")


def window_text(start: datetime, end: datetime, timezone: str | None) -> str:
    """`[2026-11-17, 2026-11-18)` in the schedule's own dates: what `--window-start` takes, end excluded.
    A window boundary that is not local midnight keeps its time, so no two windows read alike."""
    tz = zone(timezone)

    def local(moment: datetime) -> datetime:
        # A wall-clock time without a zone (a Window's start_local) is already the schedule's; astimezone
        # would read it as this machine's local time and shift it.
        return moment.replace(tzinfo=tz) if moment.tzinfo is None else moment.astimezone(tz)

    local_start, local_end = local(start), local(end)

    def one(moment: datetime) -> str:
        if (moment.hour, moment.minute, moment.second) == (0, 0, 0):
            return f"{moment:%Y-%m-%d}"
        return f"{moment:%Y-%m-%d %H:%M}"

    return f"[{one(local_start)}, {one(local_end)})"


def duration(seconds: float | None) -> str:
    """3.2 s, 4 min 05 s, 2 h 03 min."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


# --- tables -------------------------------------------------------------------------------------------


def terminal_width(wide: bool) -> int | None:
    """None: no limit (`--wide`). Else $COLUMNS, the terminal's width, or 120, never more than 120."""
    if wide:
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        width = int(columns)
    elif sys.stdout.isatty():
        width = shutil.get_terminal_size((DEFAULT_WIDTH, 24)).columns
    else:
        width = DEFAULT_WIDTH
    return min(width, DEFAULT_WIDTH)


def shorten(text: str, width: int) -> str:
    """Cut to `width` keeping the start and the tail: `run 7 failed: … \\`recomamp users authorize ada\\``."""
    if len(text) <= width:
        return text
    if width <= 1:
        return text[:width]
    if width < 24:
        return text[: width - 1] + ELLIPSIS
    # The tail carries the fix (`recomamp …` in backticks) when there is one: keep it whole if it fits.
    tick = text.rfind("`", 0, text.rfind("`")) if text.endswith("`") else -1
    tail_len = len(text) - tick if tick > 0 and len(text) - tick <= width - 12 else (width - 1) // 2
    head_len = width - 1 - tail_len
    return text[:head_len].rstrip() + ELLIPSIS + text[len(text) - tail_len :]


def plain(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, Decimal):
        return str(jsonable(value))
    if isinstance(value, list | tuple):
        return ",".join(plain(item) for item in value) or "-"
    return " ".join(str(value).split())  # one line: a newline in a message would break the table


@dataclass(frozen=True)
class Column:
    key: str
    title: str = ""
    flexible: bool = False  # this column gives up width first (a message, a name)
    minimum: int = 8

    @property
    def heading(self) -> str:
        return self.title or self.key.upper()


FIX = re.compile(r"`(recomamp [^`]+)`")


def table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column | str],
    *,
    wide: bool = False,
    label: Callable[[Mapping[str, Any]], str] | None = None,
) -> None:
    """Print a table. A cut cell that held a command to run (`recomamp …` in backticks) has it listed under
    the table, whole, labelled by `label(row)`: the fix is the part of a message a person needs."""
    cut: set[tuple[int, str]] = set()
    print(render_table(rows, columns, width=terminal_width(wide), cut=cut))
    fixes = []
    for index, key in sorted(cut):
        commands = FIX.findall(str(rows[index].get(key) or ""))
        if commands:
            fixes.append(f"  {label(rows[index]) + ': ' if label else ''}`{commands[-1]}`")
    if fixes:
        print("to fix:", *dict.fromkeys(fixes), sep="\n")


def render_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[Column | str],
    *,
    width: int | None,
    cut: set[tuple[int, str]] | None = None,
) -> str:
    if not rows:
        return "(none)"
    cols = [c if isinstance(c, Column) else Column(c) for c in columns]
    cells = [[plain(row.get(c.key)) for c in cols] for row in rows]
    widths = [max(len(c.heading), *(len(line[i]) for line in cells)) for i, c in enumerate(cols)]
    if width is not None:
        excess = sum(widths) + len(GAP) * (len(cols) - 1) - width
        # Flexible columns shrink first, the widest first, down to their minimum; then any column.
        for only_flexible in (True, False):
            while excess > 0:
                candidates = [
                    i
                    for i, c in enumerate(cols)
                    if (c.flexible or not only_flexible) and widths[i] > max(c.minimum, len(c.heading))
                ]
                if not candidates:
                    break
                widest = max(candidates, key=lambda i: widths[i])
                floor = max(cols[widest].minimum, len(cols[widest].heading))
                others = sorted((widths[i] for i in candidates if i != widest), reverse=True)
                target = max(floor, others[0] if others else floor, widths[widest] - excess)
                if target >= widths[widest]:
                    target = widths[widest] - 1
                excess -= widths[widest] - target
                widths[widest] = target
    lines = [GAP.join(c.heading.ljust(widths[i]) for i, c in enumerate(cols)).rstrip()]
    for index, line in enumerate(cells):
        if cut is not None:
            cut.update((index, cols[i].key) for i, text in enumerate(line) if len(text) > widths[i])
        lines.append(GAP.join(shorten(text, widths[i]).ljust(widths[i]) for i, text in enumerate(line)).rstrip())
    return "\n".join(lines)


def fields(values: Mapping[str, Any], *, indent: str = "  ") -> list[str]:
    """`key: value` lines, keys right-aligned; values whole (a detail view never cuts)."""
    width = max((len(key) for key in values), default=0)
    return [
        f"{indent}{key:>{width}}: {value if isinstance(value, str) else plain(value)}" for key, value in values.items()
    ]


def section(title: str, values: Mapping[str, Any]) -> list[str]:
    shown = {key: value for key, value in values.items() if value is not None and value != ""}
    return [title, *fields(shown)] if shown else []

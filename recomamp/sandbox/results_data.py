"""The simulator's result data: ten columns of the types a loader must handle, deterministic per window.

Rows depend on the execution's window and the instance's restatement counter, so a re-run of a window
gives the same keys (event_date, campaign_id) and tests can compare what was loaded with what AMC served.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date, datetime, timedelta
from typing import Protocol

# (name, AMC dataType, columnType), as AMC's outputColumns describe them.
RESULT_SCHEMA: tuple[tuple[str, str, str], ...] = (
    ("event_date", "DATE", "DIMENSION"),
    ("campaign_id", "LONG", "DIMENSION"),
    ("campaign_name", "STRING", "DIMENSION"),
    ("impressions", "LONG", "METRIC"),
    ("clicks", "LONG", "METRIC"),
    ("spend", "DECIMAL", "METRIC"),
    ("ctr", "DOUBLE", "METRIC"),
    ("is_branded", "BOOLEAN", "DIMENSION"),
    ("first_seen_at", "TIMESTAMP", "DIMENSION"),
    ("audience", "STRING", "DIMENSION"),
)
RESULT_COLUMNS = tuple(name for name, _, _ in RESULT_SCHEMA)
_AUDIENCES = ("in-market", "lifestyle", 'say "hi", then buy', "")
_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


class ResultSource(Protocol):
    window_start: str | None  # the window as sent: local wall time
    window_end: str | None

    @property
    def restatement(self) -> int: ...


def _window_days(source: ResultSource) -> tuple[date, int]:
    if source.window_start and source.window_end:
        start = datetime.strptime(source.window_start, _TIME_FORMAT).date()
        end = datetime.strptime(source.window_end, _TIME_FORMAT).date()
        return start, max(1, (end - start).days)
    return date(2026, 1, 1), 1


def result_row(source: ResultSource, index: int) -> tuple[str, ...]:
    """Row `index` of a result. Keys (event_date, campaign_id) depend only on the window."""
    first_day, days = _window_days(source)
    day = first_day + timedelta(days=index % days)
    campaign = 1000 + index // days
    seed = index * 7919 + source.restatement * 104729
    impressions = 1000 + seed % 50_000
    clicks = seed % 997
    return (
        day.isoformat(),
        str(campaign),
        f"Campaign {campaign}, {'brand' if campaign % 2 else 'generic'}",
        str(impressions),
        str(clicks),
        f"{(seed % 100_000) / 100:.2f}",
        repr(round(clicks / impressions, 6)),
        "true" if campaign % 3 == 0 else "false",
        f"{day.isoformat()} {index % 24:02d}:{index % 60:02d}:00",
        _AUDIENCES[index % len(_AUDIENCES)],
    )


def csv_line(values: tuple[str, ...]) -> str:
    cells = []
    for value in values:
        if any(c in value for c in ',"\n\r'):
            value = '"' + value.replace('"', '""') + '"'
        cells.append(value)
    return ",".join(cells) + "\n"


def generate_csv(
    source: ResultSource, start: int, end: int, *, header: bool, chunk_rows: int = 2000
) -> Iterator[bytes]:
    if header:
        yield csv_line(RESULT_COLUMNS).encode()
    for chunk_start in range(start, end, chunk_rows):
        lines = [csv_line(result_row(source, i)) for i in range(chunk_start, min(end, chunk_start + chunk_rows))]
        yield "".join(lines).encode()


def part_bounds(rows: int, files: int) -> Iterator[tuple[int, int]]:
    files = max(1, files)
    size, extra = divmod(rows, files)
    start = 0
    for index in range(files):
        end = start + size + (1 if index < extra else 0)
        yield start, end
        start = end


def expected_rows(source: ResultSource, rows: int) -> list[tuple[str, ...]]:
    """Every row of a result, for tests to compare against what was loaded."""
    return [result_row(source, i) for i in range(rows)]

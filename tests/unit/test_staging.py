"""The staging reader: pyarrow must read AMC's CSV exactly as the csv module does, type columns exactly as
value-by-value inference does, and write batches that read back to the same rows."""

from __future__ import annotations

import csv
import gzip
import io
import random
import threading
from datetime import date, datetime
from decimal import Decimal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from recomamp.domain.columns import VARCHAR, ColumnType, Kind, combine, infer_value
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.snowflake.staging import (
    SEQ_COLUMN,
    TypeTracker,
    infer_arrow_column,
    read_batches,
    result_columns,
    result_header,
    stage_files,
    staged_file_producer,
)

AWKWARD = [
    ["plain", "1", "2.5"],
    ["with, comma", "", "x"],
    ['say "hi"', '""', "end"],
    ["line\nbreak", "two\nbreaks\nhere", "z"],
    ["", "", ""],
    ["trailing space ", " lead", "ünïcode"],
    ['"', ",", "\n"],
]


def _write(path: Path, header: list[str], rows: list[list[str]], line_ending: str = "\n") -> Path:
    text = io.StringIO(newline="")
    writer = csv.writer(text, lineterminator=line_ending)
    writer.writerow(header)
    writer.writerows(rows)
    data = text.getvalue().encode()
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


def _cells(tables: list[pa.Table], columns: list[str]) -> list[list[str]]:
    rows: list[list[str]] = []
    for table in tables:
        data = [table.column(c).to_pylist() for c in columns]
        rows.extend([value or "" for value in row] for row in zip(*data, strict=True))
    return rows


@pytest.mark.parametrize("line_ending", ["\n", "\r\n"])
@pytest.mark.parametrize("name", ["r.csv", "r.csv.gz"])
def test_cells_match_the_csv_module(tmp_path: Path, line_ending: str, name: str) -> None:
    path = _write(tmp_path / name, ["a", "b", "c"], AWKWARD, line_ending)
    header = result_header([path])
    columns = result_columns(header)
    assert _cells(list(read_batches([path], header, columns, batch_rows=3)), columns) == AWKWARD


def test_random_rows_survive_batches_and_parquet_in_order(tmp_path: Path) -> None:
    generator = random.Random(7)
    alphabet = ["a", "b", ",", '"', "\n", " ", "1", ".", "é"]
    rows = [
        ["".join(generator.choice(alphabet) for _ in range(generator.randint(0, 6))) for _ in range(4)]
        for _ in range(2000)
    ]
    paths = [
        _write(tmp_path / "p0.csv.gz", list("abcd"), rows[:1200]),
        _write(tmp_path / "p1.csv.gz", list("abcd"), rows[1200:]),
    ]
    header = result_header(paths)
    columns = result_columns(header)
    staged = list(
        stage_files(read_batches(paths, header, columns, batch_rows=333), TypeTracker(columns, text=True), tmp_path)
    )
    assert len(staged) == 1 and (staged[0].rows, staged[0].batches) == (2000, 7)
    parquet = pq.ParquetFile(staged[0].path)
    assert [parquet.metadata.row_group(n).num_rows for n in range(parquet.num_row_groups)] == [333] * 6 + [2]
    tables = [parquet.read_row_group(n) for n in range(parquet.num_row_groups)]
    assert _cells(tables, columns) == rows
    sequence = [n for t in tables for n in t.column(SEQ_COLUMN).to_pylist()]
    assert sequence == list(range(2000))


def test_a_kept_part_cut_short_is_an_error_naming_it(tmp_path: Path) -> None:
    whole = _write(tmp_path / "whole.csv.gz", ["a", "b"], [[str(n), "x" * 50] for n in range(20_000)])
    cut = tmp_path / "part-00003.csv.gz"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(SnowflakeLoadError, match=r"part-00003\.csv\.gz"):
        list(read_batches([cut], ["a", "b"], ["A", "B"], batch_rows=1000))


@pytest.mark.parametrize(
    ("content", "what"),
    [
        (b"\x1f\x8b\x08\x00" + b"garbage" * 100, "a damaged deflate stream"),
        (b"plain text, not gzip" * 10, "not gzip at all"),
    ],
)
def test_a_damaged_part_is_an_error_naming_it(tmp_path: Path, content: bytes, what: str) -> None:
    damaged = tmp_path / "part-00001.csv.gz"
    damaged.write_bytes(content)
    with pytest.raises(SnowflakeLoadError, match=r"part-00001\.csv\.gz.*running the window again"):
        list(read_batches([damaged], ["a"], ["A"], batch_rows=10))


def test_a_header_only_file_has_no_batches(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("a,b\n")
    assert list(read_batches([path], ["a", "b"], ["A", "B"], batch_rows=10)) == []


def test_parts_with_different_headers_are_refused(tmp_path: Path) -> None:
    first = _write(tmp_path / "p0.csv", ["a", "b"], [["1", "2"]])
    second = _write(tmp_path / "p1.csv", ["a", "c"], [["1", "2"]])
    with pytest.raises(SnowflakeLoadError, match=r"p1\.csv has different columns"):
        result_header([first, second])


def _value_by_value(values: list[str]) -> ColumnType | None:
    expected = None
    for value in values:
        if value:
            expected = combine(expected, infer_value(value))
    return expected


@pytest.mark.parametrize(
    "column",
    [
        ["1", "-2", "+3"],
        ["1", "2.50", "3.125"],
        ["1" * 27 + ".5"],
        ["1.5e-05", "2"],
        ["true", "FALSE"],
        ["2026-01-01", "2026-01-02"],
        ["2026-01-01", "2026-01-02 10:00:00"],
        ["2026-01-01T10:00:00.123Z"],
        ["12\n34", "5"],  # a value with its own newline must not pass as two integers
        ["1", "x"],
        ["0.1234567890123"],
        ["", "", "7"],
        ["", ""],
    ],
)
def test_column_inference_agrees_with_value_by_value(column: list[str]) -> None:
    array = pa.array([value or None for value in column], pa.string())
    assert infer_arrow_column(array) == _value_by_value(column)


HINTS = [
    ColumnType(Kind.INTEGER),
    ColumnType(Kind.DECIMAL, 2),
    ColumnType(Kind.FLOAT),
    ColumnType(Kind.BOOLEAN),
    ColumnType(Kind.DATE),
    ColumnType(Kind.TIMESTAMP),
    VARCHAR,
]


def test_column_inference_agrees_on_random_mixes() -> None:
    generator = random.Random(11)
    pieces = [
        lambda: str(generator.randint(-(10**12), 10**12)),
        lambda: f"{generator.randint(0, 10**6)}.{generator.randint(0, 10**6):0{generator.randint(1, 13)}d}",
        lambda: f"{generator.random():e}",
        lambda: generator.choice(["true", "False", "TRUE"]),
        lambda: f"2026-0{generator.randint(1, 9)}-1{generator.randint(0, 9)}",
        lambda: "2026-01-02" + generator.choice(["T", " "]) + "10:00:01" + generator.choice(["", ".5", "Z"]),
        lambda: generator.choice(["x", "12 ", "1,5", "-", "1e", "0x1F", "", "9" * 39]),
    ]
    mismatches = []
    for _ in range(3000):
        chosen = generator.sample(pieces, generator.randint(1, 3))
        column = [generator.choice(chosen)() for _ in range(generator.randint(1, 6))]
        array = pa.array([v or None for v in column], pa.string())
        exact = _value_by_value(column)
        if infer_arrow_column(array) != exact:
            mismatches.append(column)
        # With a hint (the column's type so far), the one-pass answer agrees once combined with the hint.
        hint = generator.choice(HINTS)
        if combine(hint, infer_arrow_column(array, hint)) != combine(hint, exact):
            mismatches.append([f"hint {hint}", *column])
    assert mismatches == []


def test_declared_types_win_where_values_fit() -> None:
    tracker = TypeTracker(
        ["ZIP", "CLICKS", "SPEND", "DAY", "NOTE"], {"ZIP": "STRING", "CLICKS": "LONG", "SPEND": "DECIMAL"}
    )
    tracker.observe(
        pa.table(
            {
                "ZIP": ["01234", "99501"],
                "CLICKS": ["3", None],
                "SPEND": ["1.25", "2"],
                "DAY": ["2026-01-01", "2026-01-01 10:00:00"],
                "NOTE": [None, None],
            }
        )
    )
    assert tracker.types == {
        "ZIP": VARCHAR,  # digits, but AMC says text: the leading zero stays
        "CLICKS": ColumnType(Kind.INTEGER),
        "SPEND": ColumnType(Kind.DECIMAL, 2),
        "DAY": ColumnType(Kind.TIMESTAMP),
        "NOTE": VARCHAR,  # never a value: text, which anything fits later
    }


def test_a_declared_type_the_values_break_is_widened_not_trusted() -> None:
    tracker = TypeTracker(["CLICKS"], {"CLICKS": "LONG"})
    tracker.observe(pa.table({"CLICKS": ["3", "4.5"]}))
    assert tracker.types == {"CLICKS": ColumnType(Kind.DECIMAL, 1)}


def test_the_producer_stops_cleanly_when_the_consumer_leaves_early(tmp_path: Path) -> None:
    tracker = TypeTracker(["A"])
    # A file a batch: the second batch's "x" makes the column text there, a schema of its own.
    rows = [[str(n)] for n in range(100)] + [["x"]] + [[str(n)] for n in range(99)] + [[str(n)] for n in range(4800)]
    path = _write(tmp_path / "r.csv", ["a"], rows)
    with staged_file_producer([path], ["a"], ["A"], 100, tracker, tmp_path) as staged:
        first = next(staged)
    assert first.rows == 100
    # Staged typed: integers as int64, which NUMBER(38,0) takes.
    assert pq.read_table(first.path).column("A").to_pylist()[:2] == [0, 1]
    assert [t.name for t in threading.enumerate() if t.name.startswith("snowflake-")] == []


def test_a_file_is_closed_when_a_batch_stages_a_column_with_another_type(tmp_path: Path) -> None:
    batches = [
        pa.table({"A": ["1", "2"], SEQ_COLUMN: pa.array([0, 1], pa.int64())}),
        pa.table({"A": ["3", "4"], SEQ_COLUMN: pa.array([2, 3], pa.int64())}),
        pa.table({"A": ["99999999999999999999", "5"], SEQ_COLUMN: pa.array([4, 5], pa.int64())}),  # past int64
        pa.table({"A": ["6", "7"], SEQ_COLUMN: pa.array([6, 7], pa.int64())}),
    ]
    staged = list(stage_files(iter(batches), TypeTracker(["A"]), tmp_path))
    assert [(s.rows, s.batches) for s in staged] == [(4, 2), (2, 1), (2, 1)]
    types = [pq.read_schema(s.path).field("A").type for s in staged]
    assert types == [pa.int64(), pa.decimal128(38, 0), pa.int64()]
    assert pq.read_table(staged[1].path).column("A").to_pylist() == [Decimal("99999999999999999999"), Decimal(5)]


def test_a_disk_that_cannot_take_the_staged_file_is_a_clear_transient_error(tmp_path: Path) -> None:
    gone = tmp_path / "removed"  # a directory that is not there fails as a full or read-only disk does
    batches = [pa.table({"A": ["1"], SEQ_COLUMN: pa.array([0], pa.int64())})]
    with pytest.raises(SnowflakeLoadError, match=r"cannot be written in .*removed.*Free space there") as raised:
        list(stage_files(iter(batches), TypeTracker(["A"]), gone))
    assert raised.value.transient and raised.value.step == "stage"


def test_files_for_the_table_carry_the_time_series_columns_and_only_they_are_dictionary_encoded(
    tmp_path: Path,
) -> None:
    batches = [
        pa.table({"A": [str(n), f"x{n}"], SEQ_COLUMN: pa.array([2 * n, 2 * n + 1], pa.int64())}) for n in range(3)
    ]
    constants = {"UPLOADED_AT": (datetime(2026, 11, 29, 6), "timestamp"), "RECOMAMP_RUN_ID": (42, "int64")}
    (staged,) = stage_files(iter(batches), TypeTracker(["A"]), tmp_path, constants, sequence=False)
    table = pq.read_table(staged.path)
    assert table.column_names == ["A", "UPLOADED_AT", "RECOMAMP_RUN_ID"]  # no sequence number
    assert set(table.column("RECOMAMP_RUN_ID").to_pylist()) == {42} and table.num_rows == 6
    chunks = pq.ParquetFile(staged.path).metadata.row_group(0)
    encodings = {chunks.column(n).path_in_schema: chunks.column(n).encodings for n in range(chunks.num_columns)}
    assert "RLE_DICTIONARY" in encodings["RECOMAMP_RUN_ID"] and "RLE_DICTIONARY" not in encodings["A"]


def test_a_file_is_closed_past_its_size_and_the_rest_go_to_the_next(tmp_path: Path) -> None:
    batches = [pa.table({"A": [f"row {n}-{m}" for m in range(200)]}) for n in range(5)]
    (tmp_path / "small").mkdir()
    (tmp_path / "large").mkdir()
    staged = list(stage_files(iter(batches), TypeTracker(["A"]), tmp_path / "small", file_bytes=1))
    assert [(s.rows, s.batches) for s in staged] == [(200, 1)] * 5
    staged_once = list(stage_files(iter(batches), TypeTracker(["A"]), tmp_path / "large"))
    assert [(s.rows, s.batches) for s in staged_once] == [(1000, 5)]


def test_each_batch_is_staged_typed_where_its_values_allow_and_text_elsewhere() -> None:
    tracker = TypeTracker(["N", "D", "T", "B", "F", "S", "E"], {"S": "STRING"})
    staged = tracker.observe(
        pa.table(
            {
                "N": ["7", "-12"],
                "D": ["2026-11-01", None],
                "T": ["2026-11-01T10:00:00Z", "2026-11-02 11:30:00.5"],
                "B": ["TRUE", "false"],
                "F": ["1.5e3", "2.25"],
                "S": ["007", "8"],  # AMC says text: its spelling is kept
                "E": pa.array([None, None], pa.string()),
            }
        )
    )
    assert staged.column("N").to_pylist() == [7, -12]
    assert staged.column("D").to_pylist() == [date(2026, 11, 1), None]
    assert staged.column("T").to_pylist() == [datetime(2026, 11, 1, 10), datetime(2026, 11, 2, 11, 30, 0, 500000)]
    assert staged.column("B").to_pylist() == [True, False]
    assert staged.column("F").to_pylist() == [1500.0, 2.25]
    assert staged.column("S").to_pylist() == ["007", "8"]
    assert staged.column("E").type == pa.string()
    assert not tracker.restage_as_text


def test_a_column_that_turns_text_after_a_typed_batch_asks_for_a_restage_as_text() -> None:
    tracker = TypeTracker(["CODE"])
    tracker.observe(pa.table({"CODE": ["007", "8"]}))  # numbers so far: staged as such, "007" as 7
    tracker.observe(pa.table({"CODE": ["A12"]}))  # now text: the first batch's spelling must come back
    assert tracker.types == {"CODE": VARCHAR}
    assert tracker.restage_as_text
    again = TypeTracker(["CODE"], text=True)
    assert again.observe(pa.table({"CODE": ["007"]})).column("CODE").to_pylist() == ["007"]
    assert not again.restage_as_text

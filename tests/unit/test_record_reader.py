"""The loader re-emits AMC's records as they came: its reader must agree with the csv module exactly."""

from __future__ import annotations

import csv
import gzip
import io
import random
from pathlib import Path

import pytest

from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.snowflake.loader import _BatchFile, read_records

AWKWARD = [
    ["plain", "1", "2.5"],
    ["with, comma", "", "x"],
    ['say "hi"', '""', "end"],
    ["line\nbreak", "two\nbreaks\nhere", "z"],
    ["", "", ""],
    ["trailing space ", " lead", "ünïcode"],
    ['"', ",", "\n"],
]


def _write(path: Path, rows: list[list[str]], line_ending: str = "\n") -> None:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator=line_ending)
        writer.writerow(["a", "b", "c"])
        writer.writerows(rows)


@pytest.mark.parametrize("line_ending", ["\n", "\r\n"])
def test_cells_match_the_csv_module(tmp_path: Path, line_ending: str) -> None:
    path = tmp_path / "r.csv"
    _write(path, AWKWARD, line_ending)
    assert [cells for cells, _ in read_records(path)] == AWKWARD


def test_random_rows_round_trip_through_a_batch_file(tmp_path: Path) -> None:
    generator = random.Random(7)
    alphabet = ["a", "b", ",", '"', "\n", " ", "1", ".", "é"]
    rows = [
        ["".join(generator.choice(alphabet) for _ in range(generator.randint(0, 6))) for _ in range(4)]
        for _ in range(2000)
    ]
    path = tmp_path / "r.csv"
    _write(path, rows)
    records = list(read_records(path))
    assert [cells for cells, _ in records] == rows
    batch = _BatchFile(["A", "B", "C", "D"])
    batch.write(100, [text for _, text in records])
    reread = list(csv.reader(io.StringIO(gzip.decompress(batch.finish()).decode())))
    assert reread[0] == ["_RECOMAMP_SEQ", "A", "B", "C", "D"]
    assert [row[1:] for row in reread[1:]] == rows
    assert [int(row[0]) for row in reread[1:]] == list(range(100, 2100))


def test_a_file_cut_inside_a_quoted_field_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "cut.csv"
    path.write_text('a,b\n1,"unfinished\n')
    with pytest.raises(SnowflakeLoadError, match="ends inside a quoted field"):
        list(read_records(path))


def test_a_header_only_file_has_no_records(tmp_path: Path) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("a,b\n")
    assert list(read_records(path)) == []

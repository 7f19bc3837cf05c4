"""Parquet read as Snowflake reads it, not as DuckDB does.

[published] Without `USE_LOGICAL_TYPE = TRUE` (the default is FALSE), a Parquet TIMESTAMP column is read as a
timestamp only when it carries a legacy ConvertedType; one with the logical type alone (what pyarrow writes for
a naive `timestamp("us")`), and every NANOS column, is read as an INTEGER, and COPY does not validate the
conversion. DuckDB always honours the logical type, so fakesnow alone loads such a file right.

Here, during a COPY without that option, each staged file whose timestamp columns lack a ConvertedType is read
through a copy in which those columns are the raw integers Snowflake would see. Loaded into a VARCHAR column they
land as digits, into a NUMBER as the integer; into a TIMESTAMP column Snowflake takes the integer as seconds
(microseconds read as seconds: dates around the year 55 million, as ingestr found), which the emulator cannot
store, so that COPY fails and says why.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class LegacyRead:
    """One COPY's legacy reads: the copies made, and the columns read as integers."""

    directory: str
    integer_columns: set[str] = field(default_factory=set)
    copies: dict[str, str] = field(default_factory=dict)


_current: contextvars.ContextVar[LegacyRead | None] = contextvars.ContextVar("legacy_parquet_read", default=None)


@contextlib.contextmanager
def legacy_parquet_read() -> Iterator[LegacyRead]:
    """Within this block (and the threads it hands work to), Parquet is read without logical types."""
    with tempfile.TemporaryDirectory(prefix="emulator_parquet_") as directory:
        read = LegacyRead(directory)
        token = _current.set(read)
        try:
            yield read
        finally:
            _current.reset(token)


def timestamps_without_converted_type(path: str) -> list[str]:
    schema = pq.ParquetFile(path).schema
    names = []
    for index in range(len(schema)):
        column = schema.column(index)
        logical = str(column.logical_type)
        if logical.startswith("Timestamp") and (column.converted_type == "NONE" or "nanoseconds" in logical):
            names.append(column.name)
    return names


def path_as_snowflake_reads_it(url: str) -> str:
    """The file to read for `url`: itself, or (during a legacy COPY) a copy with such columns as integers."""
    read = _current.get()
    if read is None or not os.path.isfile(url):
        return url
    if url in read.copies:
        return read.copies[url]
    columns = timestamps_without_converted_type(url)
    if not columns:
        read.copies[url] = url
        return url
    table = pq.read_table(url)
    for name in columns:
        position = table.schema.get_field_index(name)
        table = table.set_column(position, name, table.column(name).cast(pa.int64()))
    copy = os.path.join(read.directory, f"{len(read.copies)}.parquet")
    pq.write_table(table, copy)
    read.copies[url] = copy
    read.integer_columns.update(columns)
    return copy


def install() -> None:
    """Route fakesnow's Parquet reads through path_as_snowflake_reads_it."""
    from fakesnow import copy_into

    original = copy_into.ReadParquet.read_expression
    if getattr(original, "_emulator", False):
        return

    def read_expression(self: copy_into.ReadParquet, url: str) -> object:
        return original(self, path_as_snowflake_reads_it(url))

    read_expression._emulator = True  # type: ignore[attr-defined]
    copy_into.ReadParquet.read_expression = read_expression  # type: ignore[method-assign,assignment]

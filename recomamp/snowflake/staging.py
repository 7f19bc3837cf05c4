"""Turning a run's result files into staged Parquet files, in C: pyarrow reads the gzip CSV parts, checks
types with vectorized casts and regular expressions, and appends each batch to a Parquet file on local disk
as one row group. Memory follows the batch, not the result: the reader streams blocks, one producer thread
holds one batch, and the encoded rows go to disk, not to memory.

One file, not one per batch: a COPY reads a file's row groups in parallel, and the emulator's COPY costs
0.07 s a file besides (1M rows: 10 files PUT and COPYed in 1.7 s, one file in 0.7 s). A file is closed at
STAGED_FILE_BYTES (Snowflake's advice: 100 to 250 MB compressed) or when a batch stages a column with
another type than the file's earlier batches, as a Parquet file has one schema.

Each batch is staged typed: a column whose values in that batch all are numbers, dates, timestamps or
booleans is written as that Parquet type (the check that found the type guarantees the conversion), the
rest as text. Typed Parquet is smaller and loads in about half the time of text. The table takes each
column's type over the whole result, so a later batch may widen an earlier one's (an integer column
that turns decimal, a date that turns timestamp: Snowflake's COPY converts those without loss). Only a
column that ends as text after an earlier batch staged it typed would lose its original spelling ("007"
as 7); the loader then stages the whole result again as text (`TypeTracker.restage_as_text`).
"""

from __future__ import annotations

import contextlib
import queue
import tempfile
import threading
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar, cast

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from isal import igzip, isal_zlib

from recomamp.domain.columns import VARCHAR, ColumnType, Kind, combine, from_amc, resolve
from recomamp.domain.identifiers import column_name
from recomamp.snowflake.errors import SnowflakeLoadError

SEQ_COLUMN = "_RECOMAMP_SEQ"
RESERVED_COLUMNS = frozenset(
    {
        "UPLOADED_AT",
        "RECOMAMP_SCHEDULE_ID",
        "RECOMAMP_RUN_ID",
        "RECOMAMP_WINDOW_START",
        "RECOMAMP_WINDOW_END",
        SEQ_COLUMN,
    }
)
_READ_BLOCK_BYTES = 1 << 20
# How long Arrow's allocator keeps freed pages before handing them back to the system.
ARROW_DECAY_MS = 0

# domain.columns.infer_value's rules, as regular expressions (RE2) applied to whole columns at once.
_INTEGER = r"^[+-]?\d{1,38}$"
# A decimal fits NUMBER(38, s) when its scale is at most 12 and all its digits at most 38; the digit count
# is checked apart (_matches), as one pattern per scale made this the slowest check of all.
_DECIMAL = r"^[+-]?\d+\.\d{1,12}$"
_FLOAT = r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$"
_BOOLEAN = r"^(?i:true|false)$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z?$"
# In infer_value's order: the first pattern a value matches is its type.
_PATTERNS: tuple[tuple[Kind, str], ...] = (
    (Kind.BOOLEAN, _BOOLEAN),
    (Kind.INTEGER, _INTEGER),
    (Kind.DECIMAL, _DECIMAL),
    (Kind.FLOAT, _FLOAT),
    (Kind.DATE, _DATE),
    (Kind.TIMESTAMP, _TIMESTAMP),
)


def configure_arrow_memory() -> None:
    """jemalloc for Arrow, handing freed pages back at once. A daemon stages a batch at a time and then
    idles: measured at 1M rows, Arrow's default (mimalloc) kept 100 MB resident after a 40 MB peak of live
    data; jemalloc with no decay keeps 60 MB, at a cost of a few percent in time. Where the wheel has no
    jemalloc, Arrow's default stays."""
    try:
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(ARROW_DECAY_MS)
    except (NotImplementedError, pa.ArrowNotImplementedError):
        return
    pa.set_memory_pool(pool)


def result_columns(header: Sequence[str]) -> list[str]:
    """Snowflake names for a result's CSV header: cleaned, unique, and clear of recomamp's own columns."""
    names: list[str] = []
    taken: set[str] = set(RESERVED_COLUMNS)
    for position, raw in enumerate(header):
        base = column_name(raw, position)
        candidate, counter = base, 1
        while candidate in taken:
            counter += 1
            candidate = f"{base}_{counter}"
        taken.add(candidate)
        names.append(candidate)
    return names


def read_header(path: Path) -> list[str]:
    """The first row of a kept result part (every part starts with its header)."""
    import csv
    import gzip

    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rt", newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle), [])


def result_header(files: Sequence[Path]) -> list[str]:
    if not files:
        raise SnowflakeLoadError("the AMC result has no files", transient=False, step="read")
    header: list[str] | None = None
    for path in files:
        first = read_header(path)
        if not first:
            continue
        if header is None:
            header = first
        elif [c.strip().lower() for c in first] != [c.strip().lower() for c in header]:
            raise SnowflakeLoadError(
                f"result file {path.name} has different columns from the first file", transient=False, step="read"
            )
    if header is None:
        raise SnowflakeLoadError("the AMC result files are empty: not even a header", transient=False, step="read")
    return header


_PATTERN_OF = dict(_PATTERNS)


def _matches(values: pa.Array, kind: Kind) -> pa.Array:
    mask = pc.match_substring_regex(values, _PATTERN_OF[kind])
    if kind is Kind.DECIMAL:  # at most 38 digits: the length less the point and any sign
        signs = pc.cast(pc.match_substring_regex(values, r"^[+-]"), pa.int32())
        digits = pc.subtract(pc.subtract(pc.utf8_length(values), 1), signs)
        mask = pc.and_(mask, pc.less_equal(digits, 38))
    return mask


def _decimal(values: pa.Array) -> ColumnType:
    fractions = pc.struct_field(pc.extract_regex(values, r"\.(?P<f>\d+)$"), [0])
    return ColumnType(Kind.DECIMAL, scale=int(pc.max(pc.utf8_length(fractions)).as_py()))


def infer_arrow_column(values: pa.ChunkedArray | pa.Array, hint: ColumnType | None = None) -> ColumnType | None:
    """The narrowest type that holds every non-empty value of a text column (None: all empty): what folding
    domain.columns.infer_value over each value with combine() gives, computed column-wise in C.

    With a `hint` (the type the column had so far, or AMC's declared type), one pass checks whether every
    value fits it; the answer then agrees with the exact one once combined with the hint, and a column
    that keeps its type costs one regular expression per batch instead of up to six."""
    remaining = pc.drop_null(values)
    if isinstance(remaining, pa.ChunkedArray):
        remaining = remaining.combine_chunks()
    if len(remaining) == 0:
        return None
    if hint is not None and hint.kind in _PATTERN_OF and pc.all(_matches(remaining, hint.kind)).as_py():
        return _decimal(remaining) if hint.kind is Kind.DECIMAL else ColumnType(hint.kind)
    result: ColumnType | None = None
    for kind, _ in _PATTERNS:
        if len(remaining) == 0:
            break
        mask = _matches(remaining, kind)
        if not pc.any(mask).as_py():
            continue
        found = _decimal(pc.filter(remaining, mask)) if kind is Kind.DECIMAL else ColumnType(kind)
        result = combine(result, found)
        if result == VARCHAR:
            return VARCHAR
        remaining = pc.filter(remaining, pc.invert(mask))
    return VARCHAR if len(remaining) else result


def _arrow_type(column_type: ColumnType) -> pa.DataType | None:
    """The Parquet (Arrow) type a batch's column is staged as; None: text. An integer column is staged as
    int64 when every value fits (NUMBER(38,0)'s 128-bit twin otherwise): both load into NUMBER(38,0), and
    int64 converts and loads in a quarter of the time."""
    return {
        Kind.BOOLEAN: pa.bool_(),
        Kind.INTEGER: pa.int64(),
        Kind.DECIMAL: pa.decimal128(38, column_type.scale),
        Kind.FLOAT: pa.float64(),
        Kind.DATE: pa.date32(),
        Kind.TIMESTAMP: pa.timestamp("us"),
    }.get(column_type.kind)


def _same(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return values


def _without_zulu(values: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.replace_substring_regex(values, r"Z$", "")


class TypeTracker:
    """Folds each batch's values into each column's type; AMC's declared types win where the values fit."""

    def __init__(
        self,
        columns: Sequence[str],
        declared: Mapping[str, str] | None = None,
        *,
        text: bool = False,
        text_columns: Collection[str] = (),
    ) -> None:
        self.columns = list(columns)
        # A column the target table already has as text is text here too, whatever its values look like.
        self._declared = [VARCHAR if c in text_columns else from_amc((declared or {}).get(c)) for c in self.columns]
        self._observed: list[ColumnType | None] = [None] * len(self.columns)
        self._staged_typed = [False] * len(self.columns)
        self._text = text  # stage every column as text (after a restage)

    def observe(self, batch: pa.Table) -> pa.Table:
        """Fold the batch into the types, and return it as it is staged: each column typed where it can be."""
        staged: list[pa.ChunkedArray | pa.Array] = []
        for index, name in enumerate(self.columns):
            values = batch.column(name)
            declared = self._declared[index]
            current = self._observed[index]
            if (declared is not None and declared.kind is Kind.VARCHAR) or current == VARCHAR:
                staged.append(values)  # text whatever it looks like: no need to look
                continue
            hint = current if current is not None else declared
            if not self._text and hint is not None and (typed := self._converted(values, hint)) is not None:
                # The batch converts to the type it had so far (or AMC declared): that conversion is both
                # the check and what is staged, so a column that keeps its type costs one pass.
                self._observed[index] = combine(current, hint)
                self._staged_typed[index] = True
                staged.append(typed)
                continue
            found = infer_arrow_column(values, hint)
            self._observed[index] = combine(current, found)
            typed = None if self._text or found is None else self._converted(values, found)
            if typed is not None:
                self._staged_typed[index] = True
            staged.append(values if typed is None else typed)
        names = list(self.columns)
        if SEQ_COLUMN in batch.column_names:
            staged.append(batch.column(SEQ_COLUMN))
            names.append(SEQ_COLUMN)
        return pa.table(staged, names=names)

    @staticmethod
    def _converted(values: pa.ChunkedArray, column_type: ColumnType) -> pa.ChunkedArray | None:
        """The values as the Parquet type of `column_type`, or None when one of them does not convert exactly
        (Arrow refuses a decimal that would lose digits, a date that is not one, …). Arrow's casts accept
        true/false in any case, and timestamps with a space or a T; the slower fallbacks run only when the
        direct cast refuses (an integer past int64, a timestamp with a trailing Z)."""
        target = _arrow_type(column_type)
        if target is None:
            return None
        attempts: list[tuple[pa.DataType, Callable[[pa.ChunkedArray], pa.ChunkedArray]]] = [(target, _same)]
        if column_type.kind is Kind.INTEGER:
            attempts.append((pa.decimal128(38, 0), _same))
        elif column_type.kind is Kind.TIMESTAMP:  # "…Z": UTC wall time
            attempts.append((target, _without_zulu))
        for arrow_type, prepare in attempts:
            try:
                return pc.cast(prepare(values), arrow_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        return None

    @property
    def restage_as_text(self) -> bool:
        """A column ends as text after an earlier batch staged it typed: its spelling would not survive."""
        return bool(self.staged_typed_but_text(self.types))

    def staged_typed_but_text(self, final: Mapping[str, ColumnType]) -> list[str]:
        """The columns some batch staged typed whose final type (here, or the table's after widening) is text."""
        return [
            name
            for name, staged in zip(self.columns, self._staged_typed, strict=True)
            if staged and final[name].kind is Kind.VARCHAR
        ]

    @property
    def types(self) -> dict[str, ColumnType]:
        return {
            name: resolve(declared, observed) or VARCHAR
            for name, declared, observed in zip(self.columns, self._declared, self._observed, strict=True)
        }


def read_batches(
    files: Sequence[Path], header: Sequence[str], columns: Sequence[str], batch_rows: int
) -> Iterator[pa.Table]:
    """The result as tables of `batch_rows` rows (text columns named for Snowflake, plus the sequence number)."""
    schema = pa.schema([pa.field(c, pa.string()) for c in columns])
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    sequence = 0
    counting = pa.array(range(batch_rows), pa.int64())  # made once: a Python range per batch cost 0.1 s at 1M

    def emit(batches: list[pa.RecordBatch]) -> pa.Table:
        nonlocal sequence
        table = pa.Table.from_batches(batches, schema=schema)
        numbers = pc.add(counting.slice(0, table.num_rows), pa.scalar(sequence, pa.int64()))
        table = table.append_column(SEQ_COLUMN, numbers)
        sequence += table.num_rows
        return table

    # Positional names: a header may repeat a name, and the Snowflake names are applied afterwards.
    positional = [f"c{index}" for index in range(len(header))]
    for path in files:
        try:
            stream = _open_result(path)
            reader = pacsv.open_csv(
                stream,
                read_options=pacsv.ReadOptions(
                    column_names=positional, skip_rows=1, block_size=_READ_BLOCK_BYTES, use_threads=False
                ),
                parse_options=pacsv.ParseOptions(newlines_in_values=True),
                # Only an empty field is no value: pyarrow's default markers would make a campaign or
                # region called NA (Amazon's code for North America), N/A, null, nan or #N/A a NULL.
                convert_options=pacsv.ConvertOptions(
                    column_types=dict.fromkeys(positional, pa.string()),
                    null_values=[""],
                    strings_can_be_null=True,
                ),
            )
        except _UNREADABLE as exc:
            raise _unreadable(path, exc) from exc
        try:
            for block in reader:
                block = pa.RecordBatch.from_arrays(block.columns, schema=schema)
                while block.num_rows:
                    take = min(block.num_rows, batch_rows - pending_rows)
                    pending.append(block.slice(0, take))
                    pending_rows += take
                    block = block.slice(take)
                    if pending_rows >= batch_rows:
                        yield emit(pending)
                        pending, pending_rows = [], 0
        except _UNREADABLE as exc:
            raise _unreadable(path, exc) from exc
        finally:
            stream.close()
    if pending_rows:
        yield emit(pending)


# A file that is gone or not gzip (OSError), cut short (EOFError), damaged (ISA-L's error), or not CSV.
# isal's stub declares its error class as an instance of Exception; it is a class.
_ISAL_ERROR = cast(type[Exception], isal_zlib.error)
_UNREADABLE: tuple[type[Exception], ...] = (pa.ArrowInvalid, OSError, EOFError, _ISAL_ERROR)


def _open_result(path: Path) -> pa.NativeFile:
    """A result part as a stream. gzip is inflated by ISA-L (isal's igzip), at 3.7 times zlib's speed
    (1M rows: 0.11 s against 0.39 s): inflating was the largest single cost of reading."""
    if not path.name.endswith(".gz"):
        return pa.OSFile(str(path), "rb")
    inflated = igzip.open(path, "rb")  # type: ignore[no-untyped-call]  # isal's igzip.py has no annotations
    return pa.PythonFile(inflated, mode="r")


def _unreadable(path: Path, exc: BaseException) -> SnowflakeLoadError:
    return SnowflakeLoadError(
        f"result file {path} cannot be read ({exc}): it is missing, cut short or damaged. Download it again "
        "by running the window again (`recomamp schedules run-now SCHEDULE_ID --window-start DATE`)",
        transient=False,
        step="read",
    )


_CONSTANT_TYPES = {"timestamp": pa.timestamp("us"), "int64": pa.int64(), "string": pa.string()}
# A staged file is closed at this size and the next batch starts another: Snowflake loads files of 100 to
# 250 MB compressed best, and files load in parallel. Below it a result is one file of one row group per
# batch, which a COPY reads in parallel by row group (the emulator takes 0.07 s a file besides).
STAGED_FILE_BYTES = 128 << 20


def with_constants(table: pa.Table, constants: Mapping[str, tuple[object, str]]) -> pa.Table:
    for name, (value, kind) in constants.items():
        table = table.append_column(name, pa.repeat(pa.scalar(value, _CONSTANT_TYPES[kind]), table.num_rows))
    return table


def parquet_writer(path: Path, schema: pa.Schema, constant_columns: Collection[str] = ()) -> pq.ParquetWriter:
    """Snappy (what Snowflake's own unloads write). Dictionaries only for the columns of one value (the
    time-series columns: a dictionary of one entry, the rest run-length encoded; the emulator's COPY of 1M
    rows 0.35 s → 0.32 s): over the result's own columns they made writing a third slower for files a fifth
    smaller."""
    return pq.ParquetWriter(path, schema, compression="snappy", use_dictionary=list(constant_columns) or False)


def _unwritable(directory: Path, exc: OSError) -> SnowflakeLoadError:
    return SnowflakeLoadError(
        f"the staged copy of the result cannot be written in {directory} ({exc}): the disk that holds the "
        "kept results is full or not writable. Free space there; the run's load is tried again",
        transient=True,
        step="stage",
    )


@contextlib.contextmanager
def staging_directory(beside: Path) -> Iterator[Path]:
    """A directory for a load's staged files beside the kept result (on disk, where the result already
    fits; not /tmp, which may be memory), removed with what is left in it."""
    try:
        made = tempfile.TemporaryDirectory(prefix=".staging-", dir=beside)
    except OSError as exc:
        raise _unwritable(beside, exc) from exc
    with made as directory:
        yield Path(directory)


@dataclass(frozen=True)
class StagedFile:
    """A Parquet file ready to PUT: one row group per batch, all of one schema."""

    path: Path
    rows: int
    batches: int


def stage_files(
    tables: Iterable[pa.Table],
    tracker: TypeTracker,
    directory: Path,
    constants: Mapping[str, tuple[object, str]] | None = None,
    file_bytes: int = STAGED_FILE_BYTES,
    *,
    sequence: bool = True,
) -> Iterator[StagedFile]:
    """Each batch typed by `tracker` and appended to the open file as a row group. A file is handed on when
    it reaches `file_bytes`, or when a batch stages a column differently from the file's earlier batches (a
    Parquet file has one schema; the COPY converts each file to the table's types).

    `constants`: columns every row carries (name → (value, Parquet type)): the time-series columns, for
    files COPYed straight into the table. `sequence`: keep each row's position in the result (the keyed
    load's "last row of a key wins"); a COPY by column name into a table without it ignores it."""
    writer: pq.ParquetWriter | None = None
    path, rows, batches, made = directory, 0, 0, 0  # the open file, and how many files were made
    try:
        for table in tables:
            staged = tracker.observe(table)
            if not sequence:
                staged = staged.drop_columns([SEQ_COLUMN])
            if constants is not None:
                staged = with_constants(staged, constants)
            if writer is not None and (not staged.schema.equals(writer.schema) or path.stat().st_size >= file_bytes):
                writer.close()
                writer = None
                yield StagedFile(path, rows, batches)
            if writer is None:
                path, rows, batches = directory / f"s{made:06d}.parquet", 0, 0
                made += 1
                writer = parquet_writer(path, staged.schema, list(constants or ()))
            writer.write_table(staged, row_group_size=max(staged.num_rows, 1))
            rows, batches = rows + staged.num_rows, batches + 1
            del table, staged
            # Arrow's allocator keeps freed pages for reuse; hand them back so the peak follows one batch.
            pa.default_memory_pool().release_unused()
        if writer is not None:
            writer.close()
            writer = None
            yield StagedFile(path, rows, batches)
    except OSError as exc:  # reading failures arrive as SnowflakeLoadError: this is the disk we write to
        raise _unwritable(directory, exc) from exc
    finally:
        if writer is not None:
            writer.close()


T = TypeVar("T")


class ThreadedIterator(Generic[T]):
    """Runs an iterator on a thread of its own, at most `depth` items ahead of the consumer; an exception
    the iterator raises is raised to the consumer. Leaving the `with` block early stops the thread and
    closes the iterator (so one nested inside stops too)."""

    _DONE = object()

    def __init__(self, source: Callable[[], Iterator[T]], *, name: str, depth: int = 1) -> None:
        self._source = source
        self._queue: queue.Queue[object] = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name=name, daemon=True)

    def __enter__(self) -> Iterator[T]:
        self._thread.start()
        return self._consume()

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        while self._thread.is_alive():  # unblock a producer waiting for room in the queue
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self._thread.join()

    def _put(self, item: object) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
            except queue.Full:
                continue
            return True
        return False

    def _produce(self) -> None:
        iterator: Iterator[T] | None = None
        try:
            iterator = self._source()
            for item in iterator:
                if not self._put(item):
                    return
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._put(exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    def _consume(self) -> Iterator[T]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield cast(T, item)


def staged_file_producer(
    files: Sequence[Path],
    header: Sequence[str],
    columns: Sequence[str],
    batch_rows: int,
    tracker: TypeTracker,
    directory: Path,
    constants: Mapping[str, tuple[object, str]] | None = None,
    file_bytes: int = STAGED_FILE_BYTES,
    *,
    sequence: bool = True,
) -> ThreadedIterator[StagedFile]:
    """The staged files of a result, made on a thread of its own while the caller PUTs the previous ones.
    Memory follows the batch, not the result. Reading and encoding on two threads held 25 MB more at 1M rows
    and was no faster beyond the noise, on two cores the load's other work shares."""

    def staged() -> Iterator[StagedFile]:
        tables = read_batches(files, header, columns, batch_rows)
        return stage_files(tables, tracker, directory, constants, file_bytes, sequence=sequence)

    return ThreadedIterator(staged, name="snowflake-stage", depth=1)

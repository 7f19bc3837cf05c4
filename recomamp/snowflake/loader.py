"""The Snowflake write: staged UPSERT of a run's result, in a worker thread.

How a run lands (the way dlt, Airbyte and Fivetran load):
1. Open one session; create the schema if missing; `USE SCHEMA` (temporary objects are created unqualified).
2. Create a temporary stage and a temporary all-VARCHAR staging table. A staging table of text never
   rejects a value; types are applied on the way into the target, where they are known to fit.
3. Rows are read from the downloaded CSV files in batches of `batch_rows`. Each batch is written as a
   gzip CSV in memory, PUT under a new name for every attempt, and COPYed into the staging table. Every
   row carries its sequence number, so a batch loaded twice (a COPY whose answer was lost) is
   deduplicated before it reaches the target.
4. DDL first (DDL commits any open transaction): create the table, add new columns, and widen a column
   whose new values no longer fit its type to VARCHAR (its values are kept, as text).
5. One transaction applies the run: either DELETE the schedule's rows for this window and INSERT the
   new ones (a re-run replaces its window), or, when the schedule names key columns, MERGE on them with
   the source deduplicated first (Snowflake rejects a nondeterministic MERGE).
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import io
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol, TextIO, TypeVar

from recomamp.domain.columns import VARCHAR, ColumnType, Kind, TypeTracker, fits, from_snowflake
from recomamp.domain.identifiers import column_name, qualified, quote, validate_identifier
from recomamp.logs import get_logger
from recomamp.snowflake.errors import SnowflakeLoadError, classify

log = get_logger(__name__)

T = TypeVar("T")

SEQ_COLUMN = "_RECOMAMP_SEQ"
WIDENING_SUFFIX = "__RECOMAMP_TEXT"
METADATA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("UPLOADED_AT", "TIMESTAMP_NTZ"),
    ("RECOMAMP_SCHEDULE_ID", "NUMBER(38,0)"),
    ("RECOMAMP_RUN_ID", "NUMBER(38,0)"),
    ("RECOMAMP_WINDOW_START", "TIMESTAMP_NTZ"),
    ("RECOMAMP_WINDOW_END", "TIMESTAMP_NTZ"),
)
_RESERVED = frozenset(name for name, _ in METADATA_COLUMNS) | {SEQ_COLUMN}
COPY_FILE_FORMAT = (
    "FILE_FORMAT=(TYPE=CSV SKIP_HEADER=1 FIELD_OPTIONALLY_ENCLOSED_BY='\"' EMPTY_FIELD_AS_NULL=TRUE COMPRESSION=GZIP)"
)


def _connector_errors() -> tuple[type[BaseException], ...]:
    from snowflake.connector.errors import Error

    return (Error, OSError, TimeoutError)


# Failures of the connector or the network are classified; anything else is a bug and propagates.
RETRYABLE_ERRORS = _connector_errors()


class Cursor(Protocol):
    def execute(self, command: str, params: Any = None, **kwargs: Any) -> Any: ...
    def fetchall(self) -> list[tuple[Any, ...]]: ...
    def fetchone(self) -> tuple[Any, ...] | None: ...
    def close(self) -> Any: ...


class Connection(Protocol):
    def cursor(self) -> Any: ...
    def close(self) -> None: ...


@dataclass(frozen=True)
class LoadTarget:
    database: str
    schema: str
    table: str
    key_columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        validate_identifier(self.database, "snowflake database")
        validate_identifier(self.schema, "snowflake_schema_name")
        validate_identifier(self.table, "snowflake_table_name")
        for key in self.key_columns or ():
            validate_identifier(key, "snowflake_key_columns")

    @property
    def parts(self) -> tuple[str, str, str]:
        return self.database.upper(), self.schema.upper(), self.table.upper()

    @property
    def display(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class RunMetadata:
    schedule_id: int
    run_id: int
    window_start: datetime  # UTC, naive or aware
    window_end: datetime
    uploaded_at: datetime


@dataclass(frozen=True)
class LoadPolicy:
    batch_rows: int
    max_attempts: int
    waits: tuple[float, ...]
    sleep: Callable[[float], None] = time.sleep

    def wait(self, attempt: int) -> float:
        return self.waits[min(attempt, len(self.waits)) - 1] if self.waits else 0.0


@dataclass
class LoadResult:
    table: str
    rows: int
    batches: int
    created_table: bool = False
    added_columns: list[str] = field(default_factory=list)
    widened_columns: list[str] = field(default_factory=list)
    stage_names: list[str] = field(default_factory=list)


StatementHook = Callable[[str, str], None]
# Called in the loading thread immediately before the statement that commits rows (the COMMIT of the
# window replace, or the MERGE): it raises when the run's claim is gone or the load was cut off, so a
# late thread never writes after the lease moved.
Fence = Callable[[], None]


class LoadCancelled(Exception):
    """The load was cut off (its deadline passed, or the run stopped): nothing was committed."""


def _utc_text(value: datetime) -> str:
    """A timestamp for a TIMESTAMP_NTZ column, in UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


class Loader:
    """Loads one run's result files into one table, on the calling thread."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        policy: LoadPolicy,
        *,
        after_statement: StatementHook | None = None,
        fence: Fence | None = None,
        cancelled: Callable[[], bool] = lambda: False,
    ) -> None:
        self._connect = connect
        self._policy = policy
        # A seam for fault injection: called after each statement ran, with (kind, sql).
        self._after_statement = after_statement
        self._fence = fence
        self._cancelled = cancelled

    def _run(self, cursor: Cursor, kind: str, sql: str, params: Any = None, **kwargs: Any) -> Any:
        if self._cancelled():
            raise LoadCancelled("the load was cut off before it finished")
        result = cursor.execute(sql, params, **kwargs)
        if self._after_statement is not None:
            self._after_statement(kind, sql)
        return result

    # --- the load ------------------------------------------------------------------------------------

    def load(self, target: LoadTarget, metadata: RunMetadata, files: Sequence[Path]) -> LoadResult:
        """The whole load; a transient failure starts it again on a fresh connection (the dead one is dropped)."""
        header = _read_header(files)
        columns = result_columns(header)
        if target.key_columns:
            missing = [k for k in target.key_columns if k.upper() not in columns]
            if missing:
                raise SnowflakeLoadError(
                    f"snowflake_key_columns {', '.join(missing)} are not in the result; its columns are "
                    f"{', '.join(columns)}. Fix the schedule's key columns.",
                    transient=False,
                    step="validate",
                )
        attempt = 0
        while True:
            attempt += 1
            step = ["connect"]
            try:
                return self._load_once(target, metadata, files, columns, step)
            except (SnowflakeLoadError, LoadCancelled):
                raise
            except RETRYABLE_ERRORS as exc:
                failure = classify(exc)
                if not failure.transient or attempt >= self._policy.max_attempts:
                    raise SnowflakeLoadError(failure.message, transient=failure.transient, step=step[0]) from exc
                wait = self._policy.wait(attempt)
                log.warning(
                    "snowflake_retry",
                    step=step[0],
                    attempt=attempt,
                    error_code=failure.code,
                    exception_class=type(exc).__name__,
                    wait_seconds=wait,
                    detail="starting the load again on a fresh connection",
                )
                self._policy.sleep(wait)

    def _load_once(
        self, target: LoadTarget, metadata: RunMetadata, files: Sequence[Path], columns: list[str], step: list[str]
    ) -> LoadResult:
        database, schema, table = target.parts
        if self._cancelled():
            raise LoadCancelled("the load was cut off before it started")
        connection = self._connect()
        try:
            cursor = connection.cursor()
            suffix = f"{metadata.run_id}_{uuid.uuid4().hex[:8]}".upper()
            stage, staging = f"RECOMAMP_STAGE_{suffix}", f"RECOMAMP_STAGING_{suffix}"
            step[0] = "prepare"
            self._run(cursor, "ddl", f"CREATE SCHEMA IF NOT EXISTS {qualified(database, schema)}")
            self._run(cursor, "ddl", f"USE SCHEMA {qualified(database, schema)}")
            self._run(cursor, "ddl", f"CREATE TEMPORARY STAGE IF NOT EXISTS {quote(stage)}")
            staging_columns = ", ".join(
                [f"{quote(SEQ_COLUMN)} NUMBER(38,0)", *(f"{quote(c)} VARCHAR" for c in columns)]
            )
            self._run(cursor, "ddl", f"CREATE TEMPORARY TABLE IF NOT EXISTS {quote(staging)} ({staging_columns})")
            tracker = TypeTracker(len(columns))
            result = LoadResult(table=target.display, rows=0, batches=0)
            with _BatchProducer(files, columns, self._policy.batch_rows, tracker) as batches:
                for batch_number, (row_count, payload) in enumerate(batches):
                    step[0] = f"stage batch {batch_number + 1}"
                    self._stage_batch(cursor, stage, staging, batch_number, payload, result)
                    result.rows += row_count
                    result.batches += 1
            types = {name: inferred or VARCHAR for name, inferred in zip(columns, tracker.types, strict=True)}
            step[0] = "prepare table"
            target_types = self._ensure_table(cursor, (database, schema, table), types, result)
            step[0] = "apply"
            self._apply(cursor, (database, schema, table), staging, columns, target_types, target, metadata)
            log.info(
                "snowflake_load_completed",
                table=target.display,
                rows=result.rows,
                batches=result.batches,
                created_table=result.created_table,
                added_columns=result.added_columns,
                widened_columns=result.widened_columns,
            )
            return result
        finally:
            try:
                connection.close()
            except Exception as exc:  # the load's outcome stands; a failed close loses nothing
                log.warning("snowflake_close_failed", exception_class=type(exc).__name__)

    def _stage_batch(
        self,
        cursor: Cursor,
        stage: str,
        staging: str,
        batch_number: int,
        payload: bytes,
        result: LoadResult,
    ) -> None:
        # A new name on every attempt: reusing a staged name on retry is how other loaders duplicated rows.
        prefix = f"b{batch_number:06d}_{uuid.uuid4().hex[:12]}"
        result.stage_names.append(prefix)
        self._run(
            cursor,
            "put",
            f"PUT file://{prefix}.csv.gz @{quote(stage)}/{prefix}/ AUTO_COMPRESS=FALSE OVERWRITE=TRUE",
            file_stream=io.BytesIO(payload),
        )
        # Positional: the staging table was created from this very column list, in this order.
        self._run(
            cursor,
            "copy",
            f"COPY INTO {quote(staging)} FROM @{quote(stage)}/{prefix}/ {COPY_FILE_FORMAT} PURGE=TRUE",
        )

    def _existing_columns(self, cursor: Cursor, database: str, schema: str, table: str) -> dict[str, ColumnType]:
        self._run(
            cursor,
            "select",
            f"SELECT column_name, data_type, numeric_scale FROM {quote(database)}.information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s ORDER BY ordinal_position",
            (schema, table),
        )
        return {
            str(name).upper(): from_snowflake(str(data_type), scale) for name, data_type, scale in cursor.fetchall()
        }

    def _ensure_table(
        self,
        cursor: Cursor,
        parts: tuple[str, str, str],
        types: dict[str, ColumnType],
        result: LoadResult,
    ) -> dict[str, ColumnType]:
        """Create, extend or widen the target table. Returns each result column's type in the table."""
        database, schema, table = parts
        name = qualified(*parts)
        existing = self._existing_columns(cursor, database, schema, table)
        if any(column.endswith(WIDENING_SUFFIX) for column in existing):
            self._finish_interrupted_widening(cursor, name, existing)
            existing = self._existing_columns(cursor, database, schema, table)
        if not existing:
            definitions = [f"{quote(c)} {t.sql()}" for c, t in types.items()]
            definitions += [f"{quote(c)} {sql_type}" for c, sql_type in METADATA_COLUMNS]
            self._run(cursor, "ddl", f"CREATE TABLE IF NOT EXISTS {name} ({', '.join(definitions)})")
            result.created_table = True
            return dict(types)
        for column, sql_type in METADATA_COLUMNS:
            if column not in existing:
                # A table made before recomamp loaded it: give it the time-series columns.
                self._run(cursor, "ddl", f"ALTER TABLE {name} ADD COLUMN {quote(column)} {sql_type}")
        final: dict[str, ColumnType] = {}
        for column, incoming in types.items():
            current = existing.get(column)
            if current is None:
                self._run(cursor, "ddl", f"ALTER TABLE {name} ADD COLUMN {quote(column)} {incoming.sql()}")
                result.added_columns.append(column)
                final[column] = incoming
            elif fits(current, incoming):
                final[column] = current
            else:
                self._widen_to_text(cursor, name, column)
                result.widened_columns.append(column)
                final[column] = VARCHAR
        return final

    def _finish_interrupted_widening(self, cursor: Cursor, table: str, existing: dict[str, ColumnType]) -> None:
        """A load that died while widening a column left its text copy behind: complete that widening."""
        for temporary in [c for c in existing if c.endswith(WIDENING_SUFFIX)]:
            column = temporary.removesuffix(WIDENING_SUFFIX)
            log.warning("snowflake_widening_resumed", column=column)
            if column in existing:  # died before DROP: copy again (the copy may be partial), then swap
                self._run(cursor, "dml", f"UPDATE {table} SET {quote(temporary)} = CAST({quote(column)} AS VARCHAR)")
                self._run(cursor, "ddl", f"ALTER TABLE {table} DROP COLUMN {quote(column)}")
            self._run(cursor, "ddl", f"ALTER TABLE {table} RENAME COLUMN {quote(temporary)} TO {quote(column)}")

    def _widen_to_text(self, cursor: Cursor, table: str, column: str) -> None:
        """Snowflake cannot ALTER a NUMBER or DATE column to VARCHAR: copy it into a new text column.

        Four statements, as DDL cannot share a transaction; a load that dies between them is finished
        by the next load (_finish_interrupted_widening), so no value is lost either way.
        """
        temporary = f"{column}{WIDENING_SUFFIX}"
        log.warning("snowflake_column_widened", column=column, to="VARCHAR")
        self._run(cursor, "ddl", f"ALTER TABLE {table} ADD COLUMN {quote(temporary)} VARCHAR")
        self._run(cursor, "dml", f"UPDATE {table} SET {quote(temporary)} = CAST({quote(column)} AS VARCHAR)")
        self._run(cursor, "ddl", f"ALTER TABLE {table} DROP COLUMN {quote(column)}")
        self._run(cursor, "ddl", f"ALTER TABLE {table} RENAME COLUMN {quote(temporary)} TO {quote(column)}")

    def _check_fence(self) -> None:
        if self._cancelled():
            raise LoadCancelled("the load was cut off before its commit")
        if self._fence is not None:
            self._fence()

    def _apply(
        self,
        cursor: Cursor,
        parts: tuple[str, str, str],
        staging: str,
        columns: list[str],
        types: dict[str, ColumnType],
        target: LoadTarget,
        metadata: RunMetadata,
    ) -> None:
        name = qualified(*parts)
        casts = [_cast(c, types[c]) for c in columns]
        meta_values = (
            _utc_text(metadata.uploaded_at),
            metadata.schedule_id,
            metadata.run_id,
            _utc_text(metadata.window_start),
            _utc_text(metadata.window_end),
        )
        meta_casts = [f"CAST(%s AS {sql_type}) AS {quote(c)}" for c, sql_type in METADATA_COLUMNS]
        all_columns = [*columns, *(c for c, _ in METADATA_COLUMNS)]
        # One row per sequence number: a batch staged twice counts once.
        source = (
            f"SELECT {quote(SEQ_COLUMN)}, {', '.join([*casts, *meta_casts])} FROM {quote(staging)} "
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {quote(SEQ_COLUMN)} ORDER BY {quote(SEQ_COLUMN)}) = 1"
        )
        if target.key_columns:
            keys = [k.upper() for k in target.key_columns]
            partition = ", ".join(quote(k) for k in keys)
            deduplicated = (
                f"SELECT * FROM ({source}) "
                f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {quote(SEQ_COLUMN)} DESC) = 1"
            )
            matches = " AND ".join(f"t.{quote(k)} IS NOT DISTINCT FROM s.{quote(k)}" for k in keys)
            updates = ", ".join(f"{quote(c)} = s.{quote(c)}" for c in all_columns if c not in keys)
            inserted = ", ".join(quote(c) for c in all_columns)
            values = ", ".join(f"s.{quote(c)}" for c in all_columns)
            # One statement is one transaction (autocommit): readers see all of the run or none of it.
            self._check_fence()
            self._run(
                cursor,
                "dml",
                f"MERGE INTO {name} AS t USING ({deduplicated}) AS s ON {matches} "
                f"WHEN MATCHED THEN UPDATE SET {updates} "
                f"WHEN NOT MATCHED THEN INSERT ({inserted}) VALUES ({values})",
                meta_values,
            )
            return
        # Two statements: one explicit transaction, so readers never see the window half replaced.
        self._run(cursor, "txn", "BEGIN")
        try:
            self._run(
                cursor,
                "dml",
                f"DELETE FROM {name} WHERE {quote('RECOMAMP_SCHEDULE_ID')} = %s "
                f"AND {quote('RECOMAMP_WINDOW_START')} = CAST(%s AS TIMESTAMP_NTZ) "
                f"AND {quote('RECOMAMP_WINDOW_END')} = CAST(%s AS TIMESTAMP_NTZ)",
                (metadata.schedule_id, meta_values[3], meta_values[4]),
            )
            inserted = ", ".join(quote(c) for c in all_columns)
            self._run(cursor, "dml", f"INSERT INTO {name} ({inserted}) SELECT {inserted} FROM ({source})", meta_values)
            # Inside the transaction, before the COMMIT: a claim that was lost commits nothing.
            self._check_fence()
            self._run(cursor, "txn", "COMMIT")
        except BaseException:
            try:
                cursor.execute("ROLLBACK")
            except Exception as rollback_error:  # the original error is the one to report
                log.warning("snowflake_rollback_failed", exception_class=type(rollback_error).__name__)
            raise


def _cast(column: str, column_type: ColumnType) -> str:
    if column_type.kind is Kind.VARCHAR:
        return quote(column)
    return f"CAST({quote(column)} AS {column_type.sql()}) AS {quote(column)}"


def open_result(path: Path) -> TextIO:
    """A result file as text: gzip (as the spool keeps them) or plain."""
    if path.name.endswith(".gz"):
        return gzip.open(path, "rt", newline="", encoding="utf-8")
    return path.open(newline="", encoding="utf-8")


def result_columns(header: Sequence[str]) -> list[str]:
    """Snowflake names for a result's CSV header: cleaned, unique, and clear of recomamp's own columns."""
    names: list[str] = []
    taken: set[str] = set(_RESERVED)
    for position, raw in enumerate(header):
        base = column_name(raw, position)
        candidate, counter = base, 1
        while candidate in taken:
            counter += 1
            candidate = f"{base}_{counter}"
        taken.add(candidate)
        names.append(candidate)
    return names


def _read_header(files: Sequence[Path]) -> list[str]:
    if not files:
        raise SnowflakeLoadError("the AMC result has no files", transient=False, step="read")
    header: list[str] | None = None
    for path in files:
        with open_result(path) as handle:
            first = next(csv.reader(handle), None)
        if first is None:
            continue
        if header is None:
            header = first
        elif first != header:
            raise SnowflakeLoadError(
                f"result file {path.name} has different columns from the first file", transient=False, step="read"
            )
    if header is None:
        raise SnowflakeLoadError("the AMC result files are empty: not even a header", transient=False, step="read")
    return header


def read_records(path: Path) -> Iterator[tuple[list[str], str]]:
    """(cells, the record's own text) for each record after the header, as AMC wrote it.

    A record with no quote character is split on commas, which is exact for CSV. One with quotes is
    parsed by the csv module, joining the following lines while a quoted field is still open. The text
    is passed on unchanged (CRLF normalised to LF), so a batch is re-written without re-quoting.
    """
    with open_result(path) as handle:
        handle.readline()  # the header
        pending = ""
        for line in handle:
            if pending:
                line = pending + line
                pending = ""
            if '"' not in line:
                text = line.rstrip("\r\n")
                yield text.split(","), text
                continue
            if line.count('"') % 2:  # a quoted field runs on to the next line
                pending = line
                continue
            text = line.rstrip("\r\n")
            yield next(csv.reader([text])), text
        if pending:
            raise SnowflakeLoadError(
                f"result file {path.name} ends inside a quoted field: it is cut short", transient=False, step="read"
            )


_CHUNK_ROWS = 5_000


def _chunks(
    files: Sequence[Path], width: int, batch_rows: int
) -> Iterator[tuple[int, list[list[str]], list[str], bool]]:
    """(first sequence number, cells, record texts, whether the batch ends here), in chunks of a few
    thousand rows that never cross a batch boundary: memory follows the chunk, not the batch."""
    cells: list[list[str]] = []
    texts: list[str] = []
    sequence = first = in_batch = 0
    for path in files:
        for number, (row, text) in enumerate(read_records(path), start=2):
            if len(row) != width:
                raise SnowflakeLoadError(
                    f"result file {path.name}, record {number}: {len(row)} values where the header has {width}",
                    transient=False,
                    step="read",
                )
            cells.append(row)
            texts.append(text)
            sequence += 1
            in_batch += 1
            ends_batch = in_batch >= batch_rows
            if ends_batch or len(cells) >= _CHUNK_ROWS:
                yield first, cells, texts, ends_batch
                cells, texts, first = [], [], sequence
                if ends_batch:
                    in_batch = 0
    if cells:
        yield first, cells, texts, True


class _BatchFile:
    """One batch's gzip CSV, written chunk by chunk: the sequence number, then the record as it came."""

    def __init__(self, columns: list[str]) -> None:
        self._buffer = io.BytesIO()
        # Level 1: the network is the bottleneck, not the bytes; higher levels cost CPU for little gain.
        self._gzip = gzip.GzipFile(fileobj=self._buffer, mode="wb", compresslevel=1)
        header = io.StringIO()
        csv.writer(header, lineterminator="\n").writerow([SEQ_COLUMN, *columns])
        self._gzip.write(header.getvalue().encode("utf-8"))
        self.rows = 0

    def write(self, first_sequence: int, texts: list[str]) -> None:
        lines = "".join(f"{first_sequence + offset},{text}\n" for offset, text in enumerate(texts))
        self._gzip.write(lines.encode("utf-8"))
        self.rows += len(texts)

    def finish(self) -> bytes:
        self._gzip.close()
        return self._buffer.getvalue()


class _BatchProducer:
    """Reads, type-checks and gzips batches on a thread of its own, while the caller stages the previous one.

    The queue holds at most two encoded batches, so memory stays flat however large the result is.
    """

    _DONE = object()

    def __init__(self, files: Sequence[Path], columns: list[str], batch_rows: int, tracker: TypeTracker) -> None:
        self._files = files
        self._columns = columns
        self._batch_rows = batch_rows
        self._tracker = tracker
        self._queue: queue.Queue[object] = queue.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="snowflake-batches", daemon=True)

    def __enter__(self) -> Iterator[tuple[int, bytes]]:
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
        try:
            batch: _BatchFile | None = None
            for first, cells, texts, ends_batch in _chunks(self._files, len(self._columns), self._batch_rows):
                self._tracker.observe_batch(cells)
                batch = batch or _BatchFile(self._columns)
                batch.write(first, texts)
                if ends_batch:
                    if not self._put((batch.rows, batch.finish())):
                        return
                    batch = None
            self._put(self._DONE)
        except BaseException as exc:  # handed to the consuming thread, which raises it
            self._put(exc)

    def _consume(self) -> Iterator[tuple[int, bytes]]:
        while True:
            item = self._queue.get()
            if item is self._DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item  # type: ignore[misc]

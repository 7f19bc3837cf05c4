"""The Snowflake write: staged UPSERT of a run's result, on the calling (worker) thread.

How a run lands (the way dlt, Airbyte and Fivetran load):
1. One session; create the schema if missing; `USE SCHEMA`; a temporary stage.
2. staging.staged_file_producer reads the result files in C (pyarrow), checks types, and appends each batch
   of `batch_rows` rows to a typed Parquet file on local disk as a row group, on a thread of its own; each
   file (one, unless the result passes 128 MB or a column's staged type changes) is PUT under the attempt's
   own prefix while the next is made. Every file carries the time-series columns. With key columns it
   carries each row's position too, and one COPY loads the keys of every file into a transient staging
   table (named with its creation time, so one a crashed load left behind is dropped later).
3. DDL first (DDL commits any open transaction): create the table, add new columns, and widen a column whose
   new values no longer fit (a number to a wider number or FLOAT, a DATE to a TIMESTAMP, else to VARCHAR;
   every value is kept). With key columns, the keys are counted in the staging table; only when one
   repeats are all the staged rows COPYed into a table of their own, to load the last row of each key.
4. The run applies at once, in one transaction: the load ledger's row for the run first (ledger.py: it
   orders this run's claims inside Snowflake), then DELETE the schedule's rows for this window (with key
   columns: the rows of the keys the run brings; dbt's delete+insert, as MERGE cannot share a transaction
   with the ledger on the emulator) and one COPY of every file straight into the table (or, when keys
   repeat, an INSERT of the last row of each). The fence (the run's lease in Postgres) is checked inside
   the transaction, immediately before the COMMIT.
A transient failure starts the whole load again on a fresh connection, with new stage and table names.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from recomamp.domain.columns import ColumnType, Kind, fits, from_snowflake, widened
from recomamp.domain.identifiers import qualified, quote, validate_identifier
from recomamp.logs import get_logger
from recomamp.snowflake.errors import SnowflakeLoadError, classify, is_lock_conflict
from recomamp.snowflake.ledger import AlreadyLoaded, Ledger, LedgerEntry, LedgerSuperseded, decide
from recomamp.snowflake.staging import (
    SEQ_COLUMN,
    TypeTracker,
    result_columns,
    result_header,
    staged_file_producer,
    staging_directory,
)

log = get_logger(__name__)

WIDENING_SUFFIX = "__RECOMAMP_WIDEN"
LEGACY_WIDENING_SUFFIX = "__RECOMAMP_TEXT"  # what earlier releases left behind when a widening was cut short
STAGING_PREFIX = "RECOMAMP_STAGING_"
# How long a load waits for another claim's open transaction on the run's ledger row, and how often it asks.
LEDGER_PATIENCE_SECONDS = 10.0
LEDGER_RETRY_SECONDS = 0.5
ORPHAN_STAGING_SECONDS = 86_400  # a staging table older than this belongs to a load that died
METADATA_COLUMNS: tuple[tuple[str, str], ...] = (
    ("UPLOADED_AT", "TIMESTAMP_NTZ"),
    ("RECOMAMP_SCHEDULE_ID", "NUMBER(38,0)"),
    ("RECOMAMP_RUN_ID", "NUMBER(38,0)"),
    ("RECOMAMP_WINDOW_START", "TIMESTAMP_NTZ"),
    ("RECOMAMP_WINDOW_END", "TIMESTAMP_NTZ"),
)
PARQUET_COPY = "FILE_FORMAT=(TYPE=PARQUET USE_LOGICAL_TYPE=TRUE BINARY_AS_TEXT=FALSE) MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE"


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
    # The claim that loads (the run's claim count, which only grows) and the AMC execution it loads: the
    # load ledger orders claims by it, and knows a result that another claim already committed.
    claim: int = 0
    amc_execution_id: str = ""
    # An adopted run whose result another claim committed is not loaded again; an operator's
    # retry-upload loads it again (replace_loaded=True).
    replace_loaded: bool = False
    # Unix time until which a load waits for another claim's open transaction on the ledger row; None: the
    # full LEDGER_PATIENCE_SECONDS. Counted from the run's first download, so the claims that follow one
    # that died mid-transaction do not each wait anew (and burn an attempt apiece when they are cut short).
    ledger_wait_until: float | None = None


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
    # Another claim of this run had committed this execution's rows: nothing was written this time.
    already_loaded: bool = False


StatementHook = Callable[[str, str], None]
# Called in the loading thread immediately before the statement that commits rows (the COMMIT of the
# window replace, or the MERGE): it raises when the run's claim is gone or the load was cut off, so a
# late thread never writes after the lease moved.
Fence = Callable[[], None]


class LoadCancelled(Exception):
    """The load was cut off (its deadline passed, or the run stopped): nothing was committed."""


class _StageAsText(Exception):
    """A column ended as text after earlier batches staged it typed: stage the result again, all as text."""


class LoadSuperseded(LoadCancelled):
    """A later claim of the run wrote to Snowflake first: this claim commits nothing."""


def _utc_text(value: datetime) -> str:
    """A timestamp for a TIMESTAMP_NTZ column, in UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")


def staging_table_name(run_id: int, now: float | None = None) -> str:
    """Unique, and saying when it was made: a later load drops it if its own load died."""
    return f"{STAGING_PREFIX}{int(now if now is not None else time.time())}_{run_id}_{uuid.uuid4().hex[:8].upper()}"


def metadata_constants(metadata: RunMetadata) -> dict[str, tuple[object, str]]:
    """The time-series columns every staged file carries when it is COPYed straight into the table:
    name → (value, Parquet type)."""
    return {
        "UPLOADED_AT": (_naive_utc(metadata.uploaded_at), "timestamp"),
        "RECOMAMP_SCHEDULE_ID": (metadata.schedule_id, "int64"),
        "RECOMAMP_RUN_ID": (metadata.run_id, "int64"),
        "RECOMAMP_WINDOW_START": (_naive_utc(metadata.window_start), "timestamp"),
        "RECOMAMP_WINDOW_END": (_naive_utc(metadata.window_end), "timestamp"),
    }


def file_uri(path: Path) -> str:
    """A local file for PUT, quoted: a path may hold spaces or quotes."""
    escaped = str(path.resolve()).replace("\\", "\\\\").replace("'", "\\'")
    return f"'file://{escaped}'"


def _naive_utc(value: datetime) -> datetime:
    return value.astimezone(UTC).replace(tzinfo=None) if value.tzinfo is not None else value


def keyed_table_name(staging: str) -> str:
    """Every staged row of a keyed load whose keys repeat, to load the last row of each key from; dropped
    with the staging table."""
    return f"{staging}_KEYED"


def orphaned(name: str, now: float) -> bool:
    try:
        made = int(name.removeprefix(STAGING_PREFIX).split("_", 1)[0])
    except ValueError:
        return False
    return made < now - ORPHAN_STAGING_SECONDS


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

    def load(
        self,
        target: LoadTarget,
        metadata: RunMetadata,
        files: Sequence[Path],
        declared_types: Mapping[str, str] | None = None,
    ) -> LoadResult:
        """The whole load; a transient failure starts it again on a fresh connection (the dead one is dropped).

        `declared_types` maps the result's column names (as in its header) to AMC's outputColumns dataType."""
        header = result_header(files)
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
        by_raw = {raw.strip().lower(): name for raw, name in zip(header, columns, strict=True)}
        declared = {
            by_raw[raw.strip().lower()]: kind
            for raw, kind in (declared_types or {}).items()
            if raw.strip().lower() in by_raw
        }
        attempt = 0
        as_text = False
        while True:
            attempt += 1
            step = ["connect"]
            try:
                return self._load_once(target, metadata, files, header, columns, declared, step, as_text)
            except _StageAsText:
                log.info("snowflake_restaged_as_text", detail="a column turned text after batches staged it typed")
                as_text, attempt = True, attempt - 1  # not a failure: the same load, staged as text
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
        self,
        target: LoadTarget,
        metadata: RunMetadata,
        files: Sequence[Path],
        header: list[str],
        columns: list[str],
        declared: Mapping[str, str],
        step: list[str],
        as_text: bool = False,
    ) -> LoadResult:
        database, schema, table = target.parts
        if self._cancelled():
            raise LoadCancelled("the load was cut off before it started")
        connection = self._connect()
        staging: str | None = None
        cursor: Cursor | None = None
        try:
            cursor = connection.cursor()
            stage = f"RECOMAMP_STAGE_{metadata.run_id}_{uuid.uuid4().hex[:8]}".upper()
            step[0] = "prepare"
            self._run(cursor, "ddl", f"CREATE SCHEMA IF NOT EXISTS {qualified(database, schema)}")
            self._run(cursor, "ddl", f"USE SCHEMA {qualified(database, schema)}")
            self._drop_orphaned_staging(cursor, database, schema)
            live = cursor
            ledger = Ledger(
                lambda kind, sql, params: self._run(live, kind, sql, params),
                database,
                schema,
                table,
                metadata.run_id,
            )
            ledger.ensure_row()
            # Before any work: a result another claim committed is not staged again.
            self._decide(ledger.read(), metadata)
            self._run(cursor, "ddl", f"CREATE TEMPORARY STAGE IF NOT EXISTS {quote(stage)}")
            # A column the table already has as text stays text: staged typed, "007" would come back as "7".
            existing = self._existing_columns(cursor, database, schema, table)
            text_columns = [c for c in columns if c in existing and existing[c].kind is Kind.VARCHAR]
            tracker = TypeTracker(columns, declared, text=as_text, text_columns=text_columns)
            result = LoadResult(table=target.display, rows=0, batches=0)
            # A new prefix on every attempt: reusing a staged name on retry is how other loaders duplicated rows.
            prefix = f"a{uuid.uuid4().hex[:12]}"
            location = f"@{quote(stage)}/{prefix}/"
            # Every file carries the time-series columns and is COPYed straight into the table. With key columns
            # it keeps each row's position in the result too, and its keys are COPYed first into a staging
            # table: which rows of the table the run replaces, and whether a key repeats.
            keys = [k.upper() for k in target.key_columns or ()]
            # Each staged file is PUT while the next is made, and removed once PUT.
            with (
                staging_directory(files[0].parent) as directory,
                staged_file_producer(
                    files,
                    header,
                    columns,
                    self._policy.batch_rows,
                    tracker,
                    directory,
                    metadata_constants(metadata),
                    sequence=bool(keys),
                ) as staged_files,
            ):
                for file_number, staged in enumerate(staged_files, start=1):
                    step[0] = f"stage file {file_number}"
                    self._run(
                        cursor, "put", f"PUT {file_uri(staged.path)} {location} AUTO_COMPRESS=FALSE OVERWRITE=TRUE"
                    )
                    staged.path.unlink()
                    result.rows += staged.rows
                    result.batches += staged.batches
            if tracker.restage_as_text:
                raise _StageAsText
            if keys:
                step[0] = "copy keys"
                staging = staging_table_name(metadata.run_id)
                self._create_staging(cursor, staging, {k: tracker.types[k].sql() for k in keys})
                if result.batches:  # the files stay on the stage: the apply COPYs them into the table
                    self._run(cursor, "copy", f"COPY INTO {quote(staging)} FROM {location} {PARQUET_COPY}")
            step[0] = "prepare table"
            target_types = self._ensure_table(cursor, (database, schema, table), tracker.types, result)
            if tracker.staged_typed_but_text(target_types):
                # The table's column is (or was just widened to) text, and these files hold it typed: stage
                # again, now that the table says text ("007" must not land as "7").
                raise _StageAsText
            step[0] = "apply"
            if staging is None:
                self._replace_window(cursor, (database, schema, table), location, metadata, ledger, result)
            else:
                self._upsert_keys(
                    cursor,
                    (database, schema, table),
                    staging,
                    location,
                    keys,
                    (tracker.types, target_types),
                    metadata,
                    ledger,
                    result,
                )
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
        except AlreadyLoaded as done:
            rows = done.entry.rows or 0
            log.info(
                "snowflake_load_already_committed",
                table=target.display,
                rows=rows,
                loaded_by_claim=done.entry.loaded_claim,
                claim=metadata.claim,
                detail="another claim of this run committed this AMC execution's rows; nothing written again",
            )
            return LoadResult(table=target.display, rows=rows, batches=0, already_loaded=True)
        finally:
            if staging is not None and cursor is not None:
                for table_name in (staging, keyed_table_name(staging)):
                    try:
                        cursor.execute(f"DROP TABLE IF EXISTS {quote(table_name)}")
                    except Exception as exc:  # a later load drops it as an orphan
                        log.warning(
                            "snowflake_staging_not_dropped", table=table_name, exception_class=type(exc).__name__
                        )
            try:
                connection.close()
            except Exception as exc:  # the load's outcome stands; a failed close loses nothing
                log.warning("snowflake_close_failed", exception_class=type(exc).__name__)

    def _drop_orphaned_staging(self, cursor: Cursor, database: str, schema: str) -> None:
        self._run(
            cursor,
            "select",
            f"SELECT table_name FROM {quote(database)}.information_schema.tables "
            "WHERE table_schema = %s AND table_name LIKE %s",
            (schema, f"{STAGING_PREFIX}%"),
        )
        now = time.time()
        for (name,) in cursor.fetchall():
            if orphaned(str(name), now):
                log.warning("snowflake_orphaned_staging_dropped", table=str(name))
                self._run(cursor, "ddl", f"DROP TABLE IF EXISTS {quote(str(name))}")

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
        # Read again, not reused from before staging: another run may have added or widened columns since.
        existing = self._existing_columns(cursor, database, schema, table)
        if any(column.endswith((WIDENING_SUFFIX, LEGACY_WIDENING_SUFFIX)) for column in existing):
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
                to = widened(current, incoming)
                self._widen(cursor, name, column, to)
                result.widened_columns.append(column)
                final[column] = to
        return final

    def _finish_interrupted_widening(self, cursor: Cursor, table: str, existing: dict[str, ColumnType]) -> None:
        """A load that died while widening a column left its wider copy behind: complete that widening."""
        for temporary in [c for c in existing if c.endswith((WIDENING_SUFFIX, LEGACY_WIDENING_SUFFIX))]:
            column = temporary.removesuffix(WIDENING_SUFFIX).removesuffix(LEGACY_WIDENING_SUFFIX)
            log.warning("snowflake_widening_resumed", column=column)
            if column in existing:  # died before DROP: copy again (the copy may be partial), then swap
                to = existing[temporary].sql()
                self._run(cursor, "dml", f"UPDATE {table} SET {quote(temporary)} = CAST({quote(column)} AS {to})")
                self._run(cursor, "ddl", f"ALTER TABLE {table} DROP COLUMN {quote(column)}")
            self._run(cursor, "ddl", f"ALTER TABLE {table} RENAME COLUMN {quote(temporary)} TO {quote(column)}")

    def _widen(self, cursor: Cursor, table: str, column: str, to: ColumnType) -> None:
        """Snowflake cannot change a NUMBER's scale, or a NUMBER or DATE to text, in place: copy the column into a
        new one of the wider type. Four statements, as DDL cannot share a transaction; a load that dies between
        them is finished by the next load (_finish_interrupted_widening), so no value is lost either way."""
        temporary = f"{column}{WIDENING_SUFFIX}"
        log.warning("snowflake_column_widened", column=column, to=to.sql())
        self._run(cursor, "ddl", f"ALTER TABLE {table} ADD COLUMN {quote(temporary)} {to.sql()}")
        self._run(cursor, "dml", f"UPDATE {table} SET {quote(temporary)} = CAST({quote(column)} AS {to.sql()})")
        self._run(cursor, "ddl", f"ALTER TABLE {table} DROP COLUMN {quote(column)}")
        self._run(cursor, "ddl", f"ALTER TABLE {table} RENAME COLUMN {quote(temporary)} TO {quote(column)}")

    def _begin_with_ledger(self, cursor: Cursor, ledger: Ledger, metadata: RunMetadata) -> bool:
        """BEGIN, and take the run's ledger row. While another claim's open transaction holds the row, wait
        (each try ends at Snowflake's LOCK_TIMEOUT, or at once on the emulator) up to LEDGER_PATIENCE_SECONDS:
        a stalled claim that resumes commits, and this one then finds its load and writes nothing. Past that
        the holder is taken for dead (a killed process leaves its transaction open for hours): this load
        goes on without the ledger's ordering, and the window replace keeps the rows exact."""
        patience = LEDGER_PATIENCE_SECONDS
        if metadata.ledger_wait_until is not None:
            patience = min(patience, max(0.0, metadata.ledger_wait_until - time.time()))
        deadline = time.monotonic() + patience
        while True:
            self._run(cursor, "txn", "BEGIN")
            try:
                ledger.take(metadata.claim)
                return True
            except RETRYABLE_ERRORS as exc:
                if not is_lock_conflict(exc):
                    raise
                self._rollback(cursor)
                if time.monotonic() >= deadline:
                    log.warning(
                        "snowflake_ledger_row_held",
                        waited_seconds=round(patience, 1),
                        detail="an open transaction of an earlier claim of this run holds its ledger row "
                        "(the process died mid-load?): loading without it; the window replace keeps rows exact. "
                        "In Snowflake, SYSTEM$ABORT_TRANSACTION ends it.",
                    )
                    self._run(cursor, "txn", "BEGIN")
                    return False
                log.info("snowflake_ledger_row_busy", detail="another claim of this run is loading it; waiting")
                self._policy.sleep(LEDGER_RETRY_SECONDS)

    @staticmethod
    def _rollback(cursor: Cursor) -> None:
        try:
            cursor.execute("ROLLBACK")
        except Exception as rollback_error:  # the original error is the one to report
            log.warning("snowflake_rollback_failed", exception_class=type(rollback_error).__name__)

    @staticmethod
    def _decide(entry: LedgerEntry | None, metadata: RunMetadata) -> None:
        try:
            decide(
                entry,
                claim=metadata.claim,
                amc_execution_id=metadata.amc_execution_id,
                replace_loaded=metadata.replace_loaded,
            )
        except LedgerSuperseded as exc:
            raise LoadSuperseded(str(exc)) from None

    def _check_fence(self) -> None:
        if self._cancelled():
            raise LoadCancelled("the load was cut off before its commit")
        if self._fence is not None:
            self._fence()

    def _replace_window(
        self,
        cursor: Cursor,
        parts: tuple[str, str, str],
        location: str,
        metadata: RunMetadata,
        ledger: Ledger,
        result: LoadResult,
    ) -> None:
        """The window replace: the schedule's rows for this window go, and the staged files come in, in one
        transaction. Readers see all of the window or none of it."""
        delete = (
            f"DELETE FROM {qualified(*parts)} WHERE {quote('RECOMAMP_SCHEDULE_ID')} = %s "
            f"AND {quote('RECOMAMP_WINDOW_START')} = CAST(%s AS TIMESTAMP_NTZ) "
            f"AND {quote('RECOMAMP_WINDOW_END')} = CAST(%s AS TIMESTAMP_NTZ)",
            (metadata.schedule_id, _utc_text(metadata.window_start), _utc_text(metadata.window_end)),
        )
        self._commit_run(cursor, qualified(*parts), location, metadata, ledger, result, delete)

    def _create_staging(self, cursor: Cursor, name: str, sql_types: Mapping[str, str]) -> None:
        definitions = [f"{quote(SEQ_COLUMN)} NUMBER(38,0)", *(f"{quote(c)} {t}" for c, t in sql_types.items())]
        self._run(cursor, "ddl", f"CREATE TRANSIENT TABLE {quote(name)} ({', '.join(definitions)})")

    def _upsert_keys(
        self,
        cursor: Cursor,
        parts: tuple[str, str, str],
        staging: str,
        location: str,
        keys: list[str],
        types: tuple[Mapping[str, ColumnType], Mapping[str, ColumnType]],
        metadata: RunMetadata,
        ledger: Ledger,
        result: LoadResult,
    ) -> None:
        """The keyed upsert: the rows of the keys the run brings go, and the staged files come in, in one
        transaction (dbt's delete+insert: unlike MERGE it can share the transaction with the ledger on every
        engine we load into).

        `types`: each result column's type as staged, and in the table."""
        staged_types, table_types = types
        name = qualified(*parts)
        partition = ", ".join(quote(k) for k in keys)
        # Rows sharing a key are rare, and choosing the last of each costs a window over every row (1M rows:
        # 0.35 s in the emulator, against 0.1 s to count them on the keys alone): only a result that has
        # them pays for it.
        self._run(
            cursor,
            "select",
            f"SELECT COUNT(*), COALESCE(SUM(n), 0) FROM (SELECT COUNT(*) AS n FROM {quote(staging)} "
            f"GROUP BY {partition} HAVING COUNT(*) > 1)",
        )
        shared_keys, sharing_rows = cursor.fetchone() or (0, 0)
        insert: str | None = None
        if shared_keys:
            log.info(
                "snowflake_duplicate_keys",
                keys=int(shared_keys),
                rows=int(sharing_rows),
                key_columns=keys,
                detail="rows share a key in this result; the last row of each key is loaded",
            )
            every_row = keyed_table_name(staging)
            staged_sql = {c: t.sql() for c, t in staged_types.items()}
            self._create_staging(cursor, every_row, {**staged_sql, **dict(METADATA_COLUMNS)})
            self._run(cursor, "copy", f"COPY INTO {quote(every_row)} FROM {location} {PARQUET_COPY}")
            loaded = [*staged_types, *(c for c, _ in METADATA_COLUMNS)]
            values = [_cast(c, table_types[c]) for c in staged_types] + [quote(c) for c, _ in METADATA_COLUMNS]
            insert = (
                f"INSERT INTO {name} ({', '.join(quote(c) for c in loaded)}) SELECT {', '.join(values)} "
                f"FROM {quote(every_row)} "
                f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {quote(SEQ_COLUMN)} DESC) = 1"
            )
        # The staging table holds the keys in the result's own types: a key the table holds wider (a DATE
        # there as TIMESTAMP) compares by value, as Snowflake casts implicitly.
        matches = " AND ".join(f"{name}.{quote(k)} IS NOT DISTINCT FROM s.{quote(k)}" for k in keys)
        delete = (f"DELETE FROM {name} USING {quote(staging)} AS s WHERE {matches}", None)
        self._commit_run(cursor, name, location, metadata, ledger, result, delete, insert)

    def _commit_run(
        self,
        cursor: Cursor,
        name: str,
        location: str,
        metadata: RunMetadata,
        ledger: Ledger,
        result: LoadResult,
        delete: tuple[str, tuple[object, ...] | None],
        insert: str | None = None,
    ) -> None:
        """One explicit transaction: the ledger first (it orders claims of this run), `delete` (the rows the
        run replaces), the run's rows (one COPY of every staged file straight into the table, or `insert`),
        the ledger's record of the load, the fence (the lease in Postgres), COMMIT."""
        ledger_held = self._begin_with_ledger(cursor, ledger, metadata)
        try:
            # After our write on the ledger row: a claim that wrote before us has committed (or we would
            # have waited, or failed on the conflict), so what we read now is final.
            self._decide(ledger.read(), metadata)
            self._run(cursor, "dml", *delete)
            if insert is not None:
                self._run(cursor, "dml", insert)
            elif result.batches:
                self._run(cursor, "copy", f"COPY INTO {name} FROM {location} {PARQUET_COPY} PURGE=TRUE")
            if ledger_held:
                ledger.mark_loaded(
                    metadata.claim, metadata.amc_execution_id, result.rows, _utc_text(metadata.uploaded_at)
                )
            # Inside the transaction, before the COMMIT: a claim that was lost commits nothing.
            self._check_fence()
            self._run(cursor, "txn", "COMMIT")
        except BaseException:
            self._rollback(cursor)
            raise


def _cast(column: str, column_type: ColumnType) -> str:
    if column_type.kind is Kind.VARCHAR:
        return quote(column)
    return f"CAST({quote(column)} AS {column_type.sql()}) AS {quote(column)}"

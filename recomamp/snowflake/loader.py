"""The Snowflake write: staged UPSERT of a run's result, on the calling (worker) thread.

How a run lands (the way dlt, Airbyte and Fivetran load), in as few round trips as it can: each statement is
a round trip to Snowflake's cloud services whatever the row count, so for the small results most schedules
produce the statement count is the load time (README, "Snowflake", has the count for each case).
1. One session, tagged (QUERY_TAG: schedule, run, claim, table) and in UTC; `DESC TABLE` (metadata: no
   warehouse) says whether the table exists and its columns; a temporary stage, dropped with the session.
2. staging.staged_file_producer reads the result files in C (pyarrow), checks types, and appends each batch of
   `batch_rows` rows to a typed Parquet file on local disk as a row group, on a thread of its own; each file
   (one, unless the result passes 128 MB or a column's staged type changes) is PUT under the attempt's own
   prefix while the next is made. Every file carries the time-series columns. With key columns it carries each
   row's position too, and one COPY loads the keys of every file into a transient staging table (named with
   its creation time, so one a crashed load left behind is dropped later).
3. DDL first (DDL commits any open transaction), as plan.py decides it: create the table, add new columns, widen
   a column whose new values no longer fit (every value is kept). With key columns, the keys are counted in the
   staging table; only when one repeats are all the staged rows COPYed into a table of their own, to load the
   last row of each key.
4. The run applies at once, in one named transaction (apply.py): DELETE the schedule's rows for this window
   (with key columns: the rows of the keys the run brings; dbt's delete+insert), the load ledger's row
   (ledger.py), one COPY of every file straight into the table (or, when keys repeat, an INSERT of the last row
   of each), COPY's result checked, the fence (the run's lease in Postgres), COMMIT.
A transient failure starts the whole load again on a fresh connection, with new stage and table names.
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from tenacity import RetryCallState, Retrying, stop_after_attempt

from recomamp.domain.columns import ColumnType, Kind
from recomamp.domain.identifiers import qualified, quote, validate_identifier
from recomamp.logs import get_logger
from recomamp.snowflake import ledger as ledger_sql
from recomamp.snowflake.apply import (
    CopyIncomplete,
    LoadCancelled,
    LoadSuperseded,
    RunTransaction,
    RunWrite,
    abort_stale_claims,
    check_copy,
)
from recomamp.snowflake.errors import STATEMENT_TIMEOUT, SnowflakeLoadError, classify, is_missing_object
from recomamp.snowflake.ledger import AlreadyLoaded, Ledger, decide
from recomamp.snowflake.plan import (
    LEGACY_WIDENING_SUFFIX,
    METADATA_COLUMNS,
    WIDENING_SUFFIX,
    columns_from_desc,
    plan_table,
)
from recomamp.snowflake.staging import (
    SEQ_COLUMN,
    TypeTracker,
    result_columns,
    result_header,
    staged_file_producer,
    staging_directory,
)

__all__ = [
    "LEGACY_WIDENING_SUFFIX",
    "METADATA_COLUMNS",
    "STAGING_PREFIX",
    "WIDENING_SUFFIX",
    "LoadCancelled",
    "LoadPolicy",
    "LoadResult",
    "LoadSuperseded",
    "LoadTarget",
    "Loader",
    "RunMetadata",
]

log = get_logger(__name__)

STAGING_PREFIX = "RECOMAMP_STAGING_"
ORPHAN_STAGING_SECONDS = 86_400  # a staging table older than this belongs to a load that died
# Housekeeping a schema needs now and then, not on every load: each is a round trip.
SWEEP_EVERY_SECONDS = 3_600.0  # staging tables left by loads that died
PRUNE_EVERY_SECONDS = 86_400.0  # ledger rows past ledger.LEDGER_KEEP_DAYS
# Snowflake reads a Parquet TIMESTAMP without a ConvertedType (pyarrow writes none) as an INTEGER unless told
# to use logical types, and COPY does not validate the conversion: dates near year 55 million (ingestr #773).
PARQUET_COPY = (
    "FILE_FORMAT=(TYPE=PARQUET USE_LOGICAL_TYPE=TRUE BINARY_AS_TEXT=FALSE) MATCH_BY_COLUMN_NAME=CASE_INSENSITIVE"
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
    # The claim that loads (the run's claim count, which only grows) and the AMC execution it loads: the
    # load ledger knows a result that another claim already committed, and an adopting claim (claim > 1) ends
    # the load transaction an earlier claim's dead process left open.
    claim: int = 0
    amc_execution_id: str = ""
    # An adopted run whose result another claim committed is not loaded again; an operator's
    # retry-upload loads it again (replace_loaded=True).
    replace_loaded: bool = False


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
# Called in the loading thread immediately before the COMMIT that lands rows: it raises when the run's claim is
# gone or the load was cut off, so a late thread never writes after the lease moved.
Fence = Callable[[], None]


@dataclass
class _Staged:
    """What a load staged: the types it saw, where the files are, what it counted, and its key columns."""

    tracker: TypeTracker
    location: str
    result: LoadResult
    keys: list[str]


class _StageAsText(Exception):
    """A column ended as text after earlier batches staged it typed: stage the result again, all as text."""


class _Housekeeping:
    """When each schema was last swept of dead staging tables and pruned of old ledger rows, in this process.
    The first time is one interval after the process started: a daemon that runs for months does each
    regularly, and a short-lived process (a CLI retry-upload) adds no round trip to its one load. Bounded by
    the schemas the process loads into."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._last: dict[tuple[str, str], float] = {}

    def due(self, what: str, schema: str, every: float) -> bool:
        now = time.monotonic()
        with self._lock:
            last = self._last.get((what, schema), self._started)
            if now - last < every:
                return False
            self._last[(what, schema)] = now
            return True

    def forget(self) -> None:
        """Everything due at once (tests)."""
        with self._lock:
            self._last.clear()
            self._started = float("-inf")


HOUSEKEEPING = _Housekeeping()


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

    def _run(self, cursor: Cursor, kind: str, sql: str, params: Any = None) -> Cursor:
        if self._cancelled():
            raise LoadCancelled("the load was cut off before it finished")
        cursor.execute(sql, params)
        if self._after_statement is not None:
            self._after_statement(kind, sql)
        return cursor

    # --- the attempt loop ----------------------------------------------------------------------------

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
        step = ["connect"]
        as_text = False
        while True:
            try:
                for attempt in self._attempts(step):
                    with attempt:
                        return self._load_once(target, metadata, files, header, columns, declared, step, as_text)
            except _StageAsText:
                log.info("snowflake_restaged_as_text", detail="a column turned text after batches staged it typed")
                as_text = True  # not a failure: the same load, staged as text
            except CopyIncomplete as exc:
                raise SnowflakeLoadError(
                    f"{exc}: nothing was committed; the load was tried {self._policy.max_attempts} times",
                    transient=True,
                    step=step[0],
                ) from exc
            except RETRYABLE_ERRORS as exc:
                failure = classify(exc)
                raise SnowflakeLoadError(failure.message, transient=failure.transient, step=step[0]) from exc
        raise AssertionError("unreachable")  # pragma: no cover - the loop returns or raises

    def end_stale_claims(self, run_id: int, claim: int) -> int:
        """An adopted run's first act, before it waits for a load thread: end what its earlier claims left open.

        A dead claim's transaction holds its table's lock; loads of other runs into that table wait on it, and
        may hold every load thread while they do. Were this only done inside the adopter's own load, the
        adopter would wait for a thread behind the very loads its stale claim blocks, until Snowflake aborts
        the detached transaction itself (5 idle minutes while it blocks someone)."""
        connection = self._connect()
        try:
            cursor = connection.cursor()
            return abort_stale_claims(functools.partial(self._run, cursor), run_id, claim)
        finally:
            try:
                connection.close()
            except Exception as exc:  # nothing was open on this session
                log.warning("snowflake_close_failed", exception_class=type(exc).__name__)

    def _attempts(self, step: list[str]) -> Retrying:
        def retryable(exc: BaseException) -> bool:
            if isinstance(exc, CopyIncomplete):
                return True
            return isinstance(exc, RETRYABLE_ERRORS) and classify(exc).transient

        def retry(state: RetryCallState) -> bool:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            if exc is None or not retryable(exc):
                return False
            # A statement timeout is worth one more try (a warehouse slow once), not every attempt.
            return not (getattr(exc, "errno", None) == STATEMENT_TIMEOUT and state.attempt_number >= 2)

        def before_sleep(state: RetryCallState) -> None:
            outcome = state.outcome
            exc = outcome.exception() if outcome is not None else None
            failure = classify(exc) if exc is not None and not isinstance(exc, CopyIncomplete) else None
            log.warning(
                "snowflake_retry",
                step=step[0],
                attempt=state.attempt_number,
                error_code=failure.code if failure else None,
                exception_class=type(exc).__name__,
                wait_seconds=state.upcoming_sleep,
                detail=str(exc)[:300]
                if isinstance(exc, CopyIncomplete)
                else "starting the load again on a fresh connection",
            )

        return Retrying(
            stop=stop_after_attempt(self._policy.max_attempts),
            wait=lambda state: self._policy.wait(state.attempt_number),
            sleep=self._policy.sleep,
            retry=retry,
            before_sleep=before_sleep,
            reraise=True,
        )

    # --- one attempt ---------------------------------------------------------------------------------

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
        step[0] = "connect"
        connection = self._connect()
        staging: list[str] = []  # a keyed load's staging table, once made: dropped however the load ends
        cursor: Cursor | None = None
        try:
            cursor = connection.cursor()
            live = cursor

            def execute(kind: str, sql: str, params: Any = None) -> Cursor:
                return self._run(live, kind, sql, params)

            step[0] = "prepare"
            existing = self._describe(cursor, target.parts)
            ledger = Ledger(execute, database, schema, table, metadata.run_id)
            if existing is None:  # a new table (maybe a new schema): its schema gets the ledger too
                execute("ddl", f"CREATE SCHEMA IF NOT EXISTS {qualified(database, schema)}")
                execute("ddl", ledger_sql.create_sql(database, schema))
            elif metadata.claim > 1 and not metadata.replace_loaded:
                # An adopted run: a result another claim committed is not staged again.
                self._decide(ledger, metadata)
            staged = self._stage_run(
                execute, target, metadata, files, (header, columns, declared), existing, step, as_text, staging
            )
            write = self._prepare_table(execute, target, metadata, existing, staged, staging, step)
            step[0] = "apply"
            RunTransaction(
                execute,
                ledger=ledger,
                parts=(database, schema),
                run_id=metadata.run_id,
                claim=metadata.claim,
                amc_execution_id=metadata.amc_execution_id,
                replace_loaded=metadata.replace_loaded,
                loaded_at=_utc_text(metadata.uploaded_at),
                fence=self._check_fence,
                sleep=self._policy.sleep,
                cancelled=self._cancelled,
            ).commit(write, qualified(*target.parts))
            result = staged.result
            log.info(
                "snowflake_load_completed",
                table=target.display,
                rows=result.rows,
                batches=result.batches,
                created_table=result.created_table,
                added_columns=result.added_columns,
                widened_columns=result.widened_columns,
            )
            if HOUSEKEEPING.due("prune ledger", f"{database}.{schema}", PRUNE_EVERY_SECONDS):
                self._prune_ledger(execute, database, schema)
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
            self._close(connection, cursor, (database, schema), staging)

    def _stage_run(
        self,
        execute: Callable[..., Cursor],
        target: LoadTarget,
        metadata: RunMetadata,
        files: Sequence[Path],
        shape: tuple[list[str], list[str], Mapping[str, str]],  # the header, its column names, AMC's types
        existing: Mapping[str, ColumnType] | None,
        step: list[str],
        as_text: bool,
        staging: list[str],
    ) -> _Staged:
        """The files on a temporary stage (and, for a keyed load, their keys in a staging table)."""
        header, columns, declared = shape
        database, schema, _ = target.parts
        stage = qualified(database, schema, f"RECOMAMP_STAGE_{metadata.run_id}_{uuid.uuid4().hex[:8]}".upper())
        execute("ddl", f"CREATE TEMPORARY STAGE IF NOT EXISTS {stage}")
        # A column the table already has as text stays text: staged typed, "007" would come back as "7".
        text_columns = [c for c in columns if existing and c in existing and existing[c].kind is Kind.VARCHAR]
        tracker = TypeTracker(columns, declared, text=as_text, text_columns=text_columns)
        result = LoadResult(table=target.display, rows=0, batches=0)
        # A new prefix on every attempt: reusing a staged name on retry is how other loaders duplicated rows.
        location = f"@{stage}/a{uuid.uuid4().hex[:12]}/"
        keys = [k.upper() for k in target.key_columns or ()]
        self._stage(execute, files, header, columns, tracker, metadata, location, result, step, bool(keys))
        if tracker.restage_as_text:
            raise _StageAsText
        if keys:
            step[0] = "copy keys"
            self._sweep_orphaned_staging(execute, database, schema)
            staging.append(staging_table_name(metadata.run_id))
            keys_table = qualified(database, schema, staging[0])
            self._create_staging(execute, keys_table, {k: tracker.types[k].sql() for k in keys})
            if result.batches:  # the files stay on the stage: the apply COPYs them into the table
                check_copy(
                    execute("copy", f"COPY INTO {keys_table} FROM {location} {PARQUET_COPY}").fetchall(),
                    result.rows,
                    keys_table,
                )
        return _Staged(tracker, location, result, keys)

    def _prepare_table(
        self,
        execute: Callable[..., Cursor],
        target: LoadTarget,
        metadata: RunMetadata,
        existing: Mapping[str, ColumnType] | None,
        staged: _Staged,
        staging: list[str],
        step: list[str],
    ) -> RunWrite:
        """The table made to take the staged rows (created, columns added or widened), and the run's write."""
        step[0] = "prepare table"
        database, schema, _ = target.parts
        tracker, result = staged.tracker, staged.result
        plan = plan_table(target.parts, existing, tracker.types)
        for column in plan.widened:
            log.warning("snowflake_column_widened", column=column, to=plan.final[column].sql())
        for planned in plan.steps:
            execute(planned.kind, planned.sql)
        result.created_table, result.added_columns, result.widened_columns = plan.created, plan.added, plan.widened
        if tracker.staged_typed_but_text(plan.final):
            # The table's column is (or was just widened to) text, and these files hold it typed: stage
            # again, now that the table says text ("007" must not land as "7").
            raise _StageAsText
        name = qualified(*target.parts)
        if not staging:
            return self._window_write(name, staged.location, metadata, result)
        return self._keyed_write(
            execute,
            (database, schema),
            name,
            staging[0],
            staged.location,
            staged.keys,
            (tracker.types, plan.final),
            result,
        )

    @staticmethod
    def _close(connection: Connection, cursor: Cursor | None, parts: tuple[str, str], staging: list[str]) -> None:
        """A keyed load's staging tables dropped, then the session closed: whatever the load's outcome."""
        if staging and cursor is not None:
            for table_name in (staging[0], keyed_table_name(staging[0])):
                try:
                    cursor.execute(f"DROP TABLE IF EXISTS {qualified(*parts, table_name)}")
                except Exception as exc:  # a later load drops it as an orphan
                    log.warning("snowflake_staging_not_dropped", table=table_name, exception_class=type(exc).__name__)
        try:
            connection.close()  # a clean close rolls back anything open and drops the temporary stage
        except Exception as exc:  # the load's outcome stands; a failed close loses nothing
            log.warning("snowflake_close_failed", exception_class=type(exc).__name__)

    def _stage(
        self,
        execute: Callable[..., Cursor],
        files: Sequence[Path],
        header: list[str],
        columns: list[str],
        tracker: TypeTracker,
        metadata: RunMetadata,
        location: str,
        result: LoadResult,
        step: list[str],
        sequence: bool,
    ) -> None:
        """Each staged file is PUT while the next is made, and removed once PUT."""
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
                sequence=sequence,
            ) as staged_files,
        ):
            for file_number, staged in enumerate(staged_files, start=1):
                step[0] = f"stage file {file_number}"
                execute("put", f"PUT {file_uri(staged.path)} {location} AUTO_COMPRESS=FALSE OVERWRITE=TRUE")
                staged.path.unlink()
                result.rows += staged.rows
                result.batches += staged.batches

    def _describe(self, cursor: Cursor, parts: tuple[str, str, str]) -> dict[str, ColumnType] | None:
        """The table's columns (DESC TABLE: a metadata operation, no warehouse), or None when it does not exist."""
        try:
            self._run(cursor, "show", f"DESC TABLE {qualified(*parts)}")
        except RETRYABLE_ERRORS as exc:
            if is_missing_object(exc, parts[2]) or is_missing_object(exc, parts[1]):
                return None
            raise
        return columns_from_desc(cursor.fetchall()) or None

    def _decide(self, ledger: Ledger, metadata: RunMetadata) -> None:
        try:
            decide(
                ledger.read(),
                claim=metadata.claim,
                amc_execution_id=metadata.amc_execution_id,
                replace_loaded=metadata.replace_loaded,
            )
        except ledger_sql.LedgerSuperseded as exc:
            raise LoadSuperseded(str(exc)) from None
        except RETRYABLE_ERRORS as exc:
            if not is_missing_object(exc, ledger_sql.LEDGER_TABLE):
                raise  # no ledger yet: nothing was committed through it

    def _sweep_orphaned_staging(self, execute: Callable[..., Cursor], database: str, schema: str) -> None:
        if not HOUSEKEEPING.due("sweep staging", f"{database}.{schema}", SWEEP_EVERY_SECONDS):
            return
        rows = execute(
            "show", f"SHOW TABLES LIKE '{STAGING_PREFIX}%' IN SCHEMA {qualified(database, schema)}"
        ).fetchall()
        now = time.time()
        for row in rows:
            name = str(row[1])
            if orphaned(name, now):
                log.warning("snowflake_orphaned_staging_dropped", table=name)
                execute("ddl", f"DROP TABLE IF EXISTS {qualified(database, schema, name)}")

    def _prune_ledger(self, execute: Callable[..., Cursor], database: str, schema: str) -> None:
        try:
            execute("dml", ledger_sql.prune_sql(database, schema))
        except RETRYABLE_ERRORS as exc:  # housekeeping: the load has committed
            log.warning("snowflake_ledger_prune_failed", exception_class=type(exc).__name__)

    def _check_fence(self) -> None:
        if self._cancelled():
            raise LoadCancelled("the load was cut off before its commit")
        if self._fence is not None:
            self._fence()

    @staticmethod
    def _window_write(name: str, location: str, metadata: RunMetadata, result: LoadResult) -> RunWrite:
        """The window replace: the schedule's rows for this window go, and the staged files come in, in one
        transaction. Readers see all of the window or none of it."""
        delete = (
            f"DELETE FROM {name} WHERE {quote('RECOMAMP_SCHEDULE_ID')} = %s "
            f"AND {quote('RECOMAMP_WINDOW_START')} = CAST(%s AS TIMESTAMP_NTZ) "
            f"AND {quote('RECOMAMP_WINDOW_END')} = CAST(%s AS TIMESTAMP_NTZ)",
            (metadata.schedule_id, _utc_text(metadata.window_start), _utc_text(metadata.window_end)),
        )
        return RunWrite(delete, result.rows, copy=f"COPY INTO {name} FROM {location} {PARQUET_COPY}")

    def _create_staging(self, execute: Callable[..., Cursor], name: str, sql_types: Mapping[str, str]) -> None:
        definitions = [f"{quote(SEQ_COLUMN)} NUMBER(38,0)", *(f"{quote(c)} {t}" for c, t in sql_types.items())]
        execute("ddl", f"CREATE TRANSIENT TABLE {name} ({', '.join(definitions)})")

    def _keyed_write(
        self,
        execute: Callable[..., Cursor],
        schema: tuple[str, str],
        name: str,
        staging: str,
        location: str,
        keys: list[str],
        types: tuple[Mapping[str, ColumnType], Mapping[str, ColumnType]],
        result: LoadResult,
    ) -> RunWrite:
        """The keyed upsert: the rows of the keys the run brings go, and the staged files come in, in one
        transaction (dbt's delete+insert: unlike MERGE it shares a transaction with the ledger on every engine
        we load into). `staged_types`: each result column's type as staged; `table_types`: in the table."""
        staged_types, table_types = types
        keys_table = qualified(*schema, staging)
        partition = ", ".join(quote(k) for k in keys)
        # Rows sharing a key are rare, and choosing the last of each costs a window over every row (1M rows:
        # 0.35 s in the emulator, against 0.1 s to count them on the keys alone): only a result that has
        # them pays for it.
        shared_keys, sharing_rows = execute(
            "select",
            f"SELECT COUNT(*), COALESCE(SUM(n), 0) FROM (SELECT COUNT(*) AS n FROM {keys_table} "
            f"GROUP BY {partition} HAVING COUNT(*) > 1)",
        ).fetchone() or (0, 0)
        # The staging table holds the keys in the result's own types: a key the table holds wider (a DATE
        # there as TIMESTAMP) compares by value, as Snowflake casts implicitly.
        matches = " AND ".join(f"{name}.{quote(k)} IS NOT DISTINCT FROM s.{quote(k)}" for k in keys)
        delete = (f"DELETE FROM {name} USING {keys_table} AS s WHERE {matches}", None)
        if not shared_keys:
            return RunWrite(delete, result.rows, copy=f"COPY INTO {name} FROM {location} {PARQUET_COPY}")
        log.info(
            "snowflake_duplicate_keys",
            keys=int(shared_keys),
            rows=int(sharing_rows),
            key_columns=keys,
            detail="rows share a key in this result; the last row of each key is loaded",
        )
        every_row = qualified(*schema, keyed_table_name(staging))
        self._create_staging(
            execute, every_row, {**{c: t.sql() for c, t in staged_types.items()}, **dict(METADATA_COLUMNS)}
        )
        check_copy(
            execute("copy", f"COPY INTO {every_row} FROM {location} {PARQUET_COPY}").fetchall(), result.rows, every_row
        )
        loaded = [*staged_types, *(c for c, _ in METADATA_COLUMNS)]
        values = [_cast(c, table_types[c]) for c in staged_types] + [quote(c) for c, _ in METADATA_COLUMNS]
        insert = (
            f"INSERT INTO {name} ({', '.join(quote(c) for c in loaded)}) SELECT {', '.join(values)} "
            f"FROM {every_row} "
            f"QUALIFY ROW_NUMBER() OVER (PARTITION BY {partition} ORDER BY {quote(SEQ_COLUMN)} DESC) = 1"
        )
        return RunWrite(delete, result.rows - int(sharing_rows) + int(shared_keys), insert=insert)


def _cast(column: str, column_type: ColumnType) -> str:
    if column_type.kind is Kind.VARCHAR:
        return quote(column)
    return f"CAST({quote(column)} AS {column_type.sql()}) AS {quote(column)}"

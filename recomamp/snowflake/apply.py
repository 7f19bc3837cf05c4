"""The one transaction that lands a run: its window (or its keys) replaced, its rows in, its ledger row written,
its fence checked, all or nothing.

    BEGIN NAME RECOMAMP_R<run>_C<claim>
    DELETE the rows the run replaces      -- takes the target table's lock (whole table, until COMMIT)
    INSERT its ledger row, unless a higher claim or another claim of this execution is there (ledger.py)
    COPY the staged files into the table  -- every result row checked LOADED, rows loaded = rows staged
    (the fence: the run's lease in Postgres)
    COMMIT

The transaction is named for its run and claim, so that a claim that adopts the run after the process of an
earlier claim died inside this transaction finds it (`SHOW TRANSACTIONS` lists the user's transactions) and
ends it with `SYSTEM$ABORT_TRANSACTION`, instead of waiting for Snowflake to abort a detached transaction (5
idle minutes while it blocks someone, else 4 hours). A lock error (000625) is contention, not death: the
transaction is rolled back and tried again after a wait, until the load's deadline; only a stale claim of this
same run is ever aborted.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from recomamp.logs import get_logger
from recomamp.snowflake import ledger as ledger_sql
from recomamp.snowflake.errors import is_lock_conflict, is_missing_object
from recomamp.snowflake.ledger import AlreadyLoaded, Ledger, LedgerSuperseded, decide

log = get_logger(__name__)

TRANSACTION_PREFIX = "RECOMAMP_R"
# Waits between tries of a transaction that met a held lock; the load's deadline ends them.
BUSY_WAITS = (1.0, 2.0, 4.0, 8.0, 15.0, 30.0)
_HOLDER = re.compile(r"in transaction (\d+)")
_NO_FILES = "0 files processed"

Execute = Callable[..., Any]  # (kind, sql, params=None) → the cursor


class LoadCancelled(Exception):
    """The load was cut off (its deadline passed, or the run stopped): nothing was committed."""


class LoadSuperseded(LoadCancelled):
    """A later claim of the run wrote to Snowflake first: this claim commits nothing."""


class CopyIncomplete(Exception):
    """COPY loaded other than every staged row (no file found, a file skipped or failed): nothing is committed,
    and the load starts again with new stage names."""


def transaction_name(run_id: int, claim: int) -> str:
    return f"{TRANSACTION_PREFIX}{run_id}_C{claim}"


def stale_claims(rows: list[dict[str, Any]], run_id: int, claim: int) -> list[tuple[int, str]]:
    """The open transactions of this run's earlier claims, from SHOW TRANSACTIONS: (id, name)."""
    pattern = re.compile(rf"^{TRANSACTION_PREFIX}{run_id}_C(\d+)$")
    found = []
    for row in rows:
        match = pattern.match(str(row.get("name") or ""))
        if match and int(match.group(1)) < claim and str(row.get("state", "running")).lower() == "running":
            found.append((int(row["id"]), str(row["name"])))
    return found


def check_copy(rows: list[tuple[Any, ...]], expected: int, into: str) -> int:
    """COPY's result rows (file, status, rows_parsed, rows_loaded, …): every file LOADED and the rows loaded
    equal to the rows staged, as the connector's write_pandas checks. A COPY that finds no file succeeds with
    nothing loaded in Snowflake; here that is a failure whenever rows were staged."""
    if len(rows) == 1 and len(rows[0]) == 1 and _NO_FILES in str(rows[0][0]):
        loaded, bad = 0, []
    else:
        loaded = sum(int(row[3] or 0) for row in rows)
        bad = [f"{row[0]}: {row[1]}" for row in rows if str(row[1]).upper() != "LOADED"]
    if bad or loaded != expected:
        detail = f"; {', '.join(bad)}" if bad else ("; it found no staged file" if not rows or loaded == 0 else "")
        raise CopyIncomplete(f"COPY into {into} loaded {loaded} of the {expected} rows staged{detail}")
    return loaded


@dataclass(frozen=True)
class RunWrite:
    """What the transaction writes: the DELETE of the rows the run replaces, then either one COPY of the staged
    files (`copy`) or an INSERT from a staging table (`insert`), which carry `rows` rows."""

    delete: tuple[str, tuple[object, ...] | None]
    rows: int
    copy: str | None = None
    insert: str | None = None


def _rows_as_dicts(cursor: Any) -> list[dict[str, Any]]:
    names = [str(d[0]).lower() for d in (cursor.description or ())]
    return [dict(zip(names, row, strict=False)) for row in cursor.fetchall()]


class RunTransaction:
    def __init__(
        self,
        execute: Execute,
        *,
        ledger: Ledger,
        parts: tuple[str, str],  # database, schema: where the ledger lives
        run_id: int,
        claim: int,
        amc_execution_id: str,
        replace_loaded: bool,
        loaded_at: str,
        fence: Callable[[], None],
        sleep: Callable[[float], None],
        cancelled: Callable[[], bool],
    ) -> None:
        self._execute = execute
        self._ledger = ledger
        self._parts = parts
        self._run_id = run_id
        self._claim = claim
        self._execution = amc_execution_id
        self._replace_loaded = replace_loaded
        self._loaded_at = loaded_at
        self._fence = fence
        self._sleep = sleep
        self._cancelled = cancelled

    def commit(self, write: RunWrite, into: str) -> None:
        """Run the transaction until it commits, or raise why it must not (AlreadyLoaded, LoadSuperseded)."""
        if self._claim > 1:  # an adopted run: end what an earlier claim's dead process left open
            self._abort_stale_claims()
        waits = _busy_waits()
        ledger_created = False
        while True:
            try:
                self._once(write, into)
                return
            except LedgerSuperseded as exc:
                raise LoadSuperseded(str(exc)) from None
            except (AlreadyLoaded, LoadCancelled, CopyIncomplete):
                raise
            except Exception as exc:
                if is_missing_object(exc, ledger_sql.LEDGER_TABLE) and not ledger_created:
                    # A table recomamp did not create: its schema has no ledger yet (DDL, so outside the transaction).
                    self._execute("ddl", ledger_sql.create_sql(*self._parts))
                    ledger_created = True
                    continue
                if not is_lock_conflict(exc):
                    raise
                if self._abort_holder_if_stale(exc):
                    continue
                wait = next(waits)
                log.warning(
                    "snowflake_table_busy",
                    table=into,
                    wait_seconds=wait,
                    detail="another transaction holds the table's lock (a load of another run into this table, or "
                    "someone's UPDATE/DELETE): trying again; the load's deadline bounds the wait",
                    error=str(getattr(exc, "msg", exc))[:300],
                )
                self._sleep(wait)
                if self._cancelled():
                    raise LoadCancelled("the load was cut off while the table was busy") from None

    def _once(self, write: RunWrite, into: str) -> None:
        self._execute("txn", f"BEGIN NAME {transaction_name(self._run_id, self._claim)}")
        try:
            self._execute("dml", *write.delete)  # first: the table's lock orders this run's claims
            if not self._ledger.record(
                claim=self._claim,
                amc_execution_id=self._execution,
                replace_loaded=self._replace_loaded,
                rows=write.rows,
                loaded_at=self._loaded_at,
            ):
                decide(
                    self._ledger.read(),
                    claim=self._claim,
                    amc_execution_id=self._execution,
                    replace_loaded=self._replace_loaded,
                )
                raise LedgerSuperseded(self._claim, self._claim)  # decide always raises here; a guard
            if write.insert is not None:
                self._execute("dml", write.insert)
            elif write.copy is not None and write.rows:
                check_copy(self._execute("copy", write.copy).fetchall(), write.rows, into)
            self._fence()  # inside the transaction, before the COMMIT: a claim that was lost commits nothing
            self._execute("txn", "COMMIT")
        except BaseException:
            self.rollback()
            raise

    def rollback(self) -> None:
        try:
            self._execute("txn", "ROLLBACK")
        except Exception as rollback_error:  # the original error is the one to report
            log.warning("snowflake_rollback_failed", exception_class=type(rollback_error).__name__)

    def _abort_stale_claims(self, only: int | None = None) -> int:
        return abort_stale_claims(self._execute, self._run_id, self._claim, only=only)

    def _abort_holder_if_stale(self, exc: BaseException) -> bool:
        """A lock error names the holding transaction: end it only if it is an earlier claim of this run."""
        match = _HOLDER.search(str(getattr(exc, "msg", None) or exc))
        if match is None or self._claim <= 1:
            return False
        return self._abort_stale_claims(only=int(match.group(1))) > 0


def abort_stale_claims(execute: Execute, run_id: int, claim: int, *, only: int | None = None) -> int:
    """End the open load transactions of this run's earlier claims (only the one with id `only`, if given)."""
    try:
        rows = _rows_as_dicts(execute("show", "SHOW TRANSACTIONS"))
    except Exception as exc:  # without it, Snowflake's own abort of a detached transaction still comes
        log.warning("snowflake_show_transactions_failed", exception_class=type(exc).__name__)
        return 0
    aborted = 0
    for transaction_id, name in stale_claims(rows, run_id, claim):
        if only is not None and transaction_id != only:
            continue
        log.warning(
            "snowflake_stale_claim_aborted",
            transaction=name,
            transaction_id=transaction_id,
            detail="an earlier claim of this run left its load transaction open (its process died or "
            "stalled after losing the run): ended, so its locks go now",
        )
        execute("select", f"SELECT SYSTEM$ABORT_TRANSACTION({transaction_id})")
        aborted += 1
    return aborted


def _busy_waits() -> Iterator[float]:
    yield from BUSY_WAITS
    while True:
        yield BUSY_WAITS[-1]

"""The load ledger: a small table beside the loaded tables that fences loads inside Snowflake itself.

The run's lease in Postgres is checked immediately before each COMMIT, but a process can stall between
that check and the COMMIT reaching Snowflake (a GC pause, a frozen VM). By then another replica may have
adopted the run and loaded it. The ledger closes that gap where the write happens:

- one row per (table, run): the highest claim that began to write, and the claim, AMC execution and row
  count of the load that committed;
- a load writes its claim first in its own transaction (`CLAIM <= mine`), so two claims of one run
  serialise on that row: Snowflake makes the second wait for the first's COMMIT (or aborts it on a lock
  conflict, and the load starts again);
- after that write, a lower claim sees a higher one and commits nothing (`LoadSuperseded`), and an adopted
  run whose execution another claim already committed writes nothing again (`AlreadyLoaded`).

Claims come from Postgres (`schedule_runs.claims`, which only grows), so the order is the lease order.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recomamp.domain.identifiers import qualified, quote

LEDGER_TABLE = "RECOMAMP_LOADS"

# (kind, sql, params) → runs one statement on the load's cursor; returns the cursor.
Execute = Callable[[str, str, Any], Any]


@dataclass(frozen=True)
class LedgerEntry:
    claim: int
    loaded_claim: int | None
    amc_execution_id: str | None
    rows: int | None


class LedgerSuperseded(Exception):
    def __init__(self, mine: int, theirs: int) -> None:
        super().__init__(
            f"a later claim of this run (claim {theirs}; this is claim {mine}) wrote to Snowflake first; "
            "this claim commits nothing"
        )


class AlreadyLoaded(Exception):
    def __init__(self, entry: LedgerEntry) -> None:
        super().__init__(f"claim {entry.loaded_claim} already committed this execution's {entry.rows} rows")
        self.entry = entry


def decide(entry: LedgerEntry | None, *, claim: int, amc_execution_id: str, replace_loaded: bool) -> None:
    """Raises when this claim must not write: a higher claim holds the run, or its result is already in."""
    if entry is None:
        return
    if entry.claim > claim:
        raise LedgerSuperseded(claim, entry.claim)
    if (
        not replace_loaded
        and amc_execution_id
        and entry.loaded_claim is not None
        and entry.loaded_claim != claim
        and entry.amc_execution_id == amc_execution_id
    ):
        raise AlreadyLoaded(entry)


class Ledger:
    def __init__(self, execute: Execute, database: str, schema: str, table: str, run_id: int) -> None:
        self._execute = execute
        self._name = qualified(database, schema, LEDGER_TABLE)
        self._key = (table, run_id)

    def ensure_row(self) -> None:
        """Outside any transaction: the table, and this run's row (so that claims meet on one row)."""
        self._execute(
            "ddl",
            f"CREATE TABLE IF NOT EXISTS {self._name} ("
            f"{quote('TABLE_NAME')} VARCHAR, {quote('RUN_ID')} NUMBER(38,0), {quote('CLAIM')} NUMBER(38,0), "
            f"{quote('LOADED_CLAIM')} NUMBER(38,0), {quote('AMC_EXECUTION_ID')} VARCHAR, "
            f"{quote('ROWS_LOADED')} NUMBER(38,0), {quote('LOADED_AT')} TIMESTAMP_NTZ)",
            None,
        )
        self._execute(
            "dml",
            f"INSERT INTO {self._name} ({quote('TABLE_NAME')}, {quote('RUN_ID')}, {quote('CLAIM')}) "
            f"SELECT %s, %s, 0 WHERE NOT EXISTS (SELECT 1 FROM {self._name} "
            f"WHERE {quote('TABLE_NAME')} = %s AND {quote('RUN_ID')} = %s)",
            (*self._key, *self._key),
        )

    def read(self) -> LedgerEntry | None:
        cursor = self._execute(
            "select",
            f"SELECT {quote('CLAIM')}, {quote('LOADED_CLAIM')}, {quote('AMC_EXECUTION_ID')}, {quote('ROWS_LOADED')} "
            f"FROM {self._name} WHERE {quote('TABLE_NAME')} = %s AND {quote('RUN_ID')} = %s "
            f"ORDER BY {quote('CLAIM')} DESC LIMIT 1",
            self._key,
        )
        row = cursor.fetchone()
        if row is None:
            return None
        claim, loaded_claim, execution, rows = row
        return LedgerEntry(
            int(claim or 0),
            int(loaded_claim) if loaded_claim is not None else None,
            str(execution) if execution is not None else None,
            int(rows) if rows is not None else None,
        )

    def take(self, claim: int) -> None:
        """Inside the load's transaction, its first write: the row lock orders this claim against the others."""
        self._execute(
            "dml",
            f"UPDATE {self._name} SET {quote('CLAIM')} = %s "
            f"WHERE {quote('TABLE_NAME')} = %s AND {quote('RUN_ID')} = %s AND {quote('CLAIM')} <= %s",
            (claim, *self._key, claim),
        )

    def mark_loaded(self, claim: int, amc_execution_id: str, rows: int, loaded_at: str) -> None:
        self._execute(
            "dml",
            f"UPDATE {self._name} SET {quote('LOADED_CLAIM')} = %s, {quote('AMC_EXECUTION_ID')} = %s, "
            f"{quote('ROWS_LOADED')} = %s, {quote('LOADED_AT')} = CAST(%s AS TIMESTAMP_NTZ) "
            f"WHERE {quote('TABLE_NAME')} = %s AND {quote('RUN_ID')} = %s AND {quote('CLAIM')} = %s",
            (claim, amc_execution_id, rows, loaded_at, *self._key, claim),
        )

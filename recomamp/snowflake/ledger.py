"""The load ledger: which claim of a run committed which AMC execution into a table, kept in Snowflake beside the
loaded tables, so that the fence holds where the write happens.

The run's lease in Postgres is checked immediately before each COMMIT, but a process can stall between that
check and the COMMIT reaching Snowflake (a GC pause, a frozen VM). By then another replica may have adopted the
run and loaded it. Two claims of one run write the same table, and each load's first write is a DELETE on that
table, which Snowflake locks whole until COMMIT: so the claims of one run are already ordered by the target
table's own lock, and the ledger needs no lock of its own (one per schema would serialise every load of the
schema, as an UPDATE on it did in earlier releases). It is appended to, inside the load's transaction, after
that DELETE:

- `INSERT … WHERE NOT EXISTS (a higher claim of this run, or another claim that loaded this execution)`: one
  row inserted means this claim may commit; none means it must not, and `decide` says why;
- an adopted run whose execution another claim committed writes nothing again (`AlreadyLoaded`); a claim older
  than one that committed writes nothing (`LedgerSuperseded`); an operator's retry-upload loads again.

INSERT takes no table lock in Snowflake, so loads of different tables never wait on the ledger. Claims come
from Postgres (`schedule_runs.claims`, which only grows), so the order is the lease order. Rows of earlier
releases (CLAIM the highest claim that began, LOADED_CLAIM the committed one) read the same way.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recomamp.domain.identifiers import qualified, quote

LEDGER_TABLE = "RECOMAMP_LOADS"
# Rows older than this are of runs no claim can still load; a run is retried or adopted within days.
LEDGER_KEEP_DAYS = 64

# (kind, sql, params) → runs one statement on the load's cursor; returns the cursor.
Execute = Callable[[str, str, Any], Any]

_COLUMNS = (
    ("TABLE_NAME", "VARCHAR"),
    ("RUN_ID", "NUMBER(38,0)"),
    ("CLAIM", "NUMBER(38,0)"),
    ("LOADED_CLAIM", "NUMBER(38,0)"),
    ("AMC_EXECUTION_ID", "VARCHAR"),
    ("ROWS_LOADED", "NUMBER(38,0)"),
    ("LOADED_AT", "TIMESTAMP_NTZ"),
)


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


def decide(entries: list[LedgerEntry], *, claim: int, amc_execution_id: str, replace_loaded: bool) -> None:
    """Raises when this claim must not write: a higher claim holds the run, or its result is already in."""
    for entry in entries:
        if entry.claim > claim:
            raise LedgerSuperseded(claim, entry.claim)
    for entry in entries:
        if (
            not replace_loaded
            and amc_execution_id
            and entry.loaded_claim is not None
            and entry.loaded_claim != claim
            and entry.amc_execution_id == amc_execution_id
        ):
            raise AlreadyLoaded(entry)


def create_sql(database: str, schema: str) -> str:
    columns = ", ".join(f"{quote(name)} {sql_type}" for name, sql_type in _COLUMNS)
    return f"CREATE TABLE IF NOT EXISTS {qualified(database, schema, LEDGER_TABLE)} ({columns})"


def prune_sql(database: str, schema: str) -> str:
    return (
        f"DELETE FROM {qualified(database, schema, LEDGER_TABLE)} "
        f"WHERE {quote('LOADED_AT')} < DATEADD(day, -{LEDGER_KEEP_DAYS}, CURRENT_TIMESTAMP())"
    )


class Ledger:
    def __init__(self, execute: Execute, database: str, schema: str, table: str, run_id: int) -> None:
        self._execute = execute
        self._name = qualified(database, schema, LEDGER_TABLE)
        self._key = (table, run_id)

    def record(self, *, claim: int, amc_execution_id: str, replace_loaded: bool, rows: int, loaded_at: str) -> bool:
        """Inside the load's transaction, after its DELETE took the table's lock: append this claim's load unless
        a higher claim of the run, or another claim that loaded this execution, is there. True: it may commit."""
        match = f"{quote('TABLE_NAME')} = %s AND {quote('RUN_ID')} = %s"
        cursor = self._execute(
            "dml",
            f"INSERT INTO {self._name} ({', '.join(quote(name) for name, _ in _COLUMNS)}) "
            f"SELECT %s, %s, %s, %s, %s, %s, CAST(%s AS TIMESTAMP_NTZ) WHERE NOT EXISTS ("
            f"SELECT 1 FROM {self._name} WHERE {match} AND ({quote('CLAIM')} > %s OR ("
            f"%s AND {quote('LOADED_CLAIM')} IS NOT NULL AND {quote('LOADED_CLAIM')} <> %s "
            f"AND {quote('AMC_EXECUTION_ID')} = %s)))",
            (
                *self._key,
                claim,
                claim,
                amc_execution_id,
                rows,
                loaded_at,
                *self._key,
                claim,
                bool(amc_execution_id) and not replace_loaded,
                claim,
                amc_execution_id,
            ),
        )
        return _inserted(cursor) > 0

    def read(self) -> list[LedgerEntry]:
        cursor = self._execute(
            "select",
            f"SELECT {quote('CLAIM')}, {quote('LOADED_CLAIM')}, {quote('AMC_EXECUTION_ID')}, {quote('ROWS_LOADED')} "
            f"FROM {self._name} WHERE {quote('TABLE_NAME')} = %s AND {quote('RUN_ID')} = %s "
            f"ORDER BY {quote('CLAIM')} DESC",
            self._key,
        )
        return [
            LedgerEntry(
                int(claim or 0),
                int(loaded_claim) if loaded_claim is not None else None,
                str(execution) if execution is not None else None,
                int(rows) if rows is not None else None,
            )
            for claim, loaded_claim, execution, rows in cursor.fetchall()
        ]


def _inserted(cursor: Any) -> int:
    """Rows an INSERT wrote: the connector's rowcount, else its one result row ("number of rows inserted")."""
    count = getattr(cursor, "rowcount", None)
    if isinstance(count, int) and count >= 0:
        return count
    row = cursor.fetchone()
    return int(row[0]) if row else 0

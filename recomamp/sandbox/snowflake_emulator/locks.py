"""Transactions and table locks as Snowflake documents them (../shared/SNOWFLAKE_NOTES.md, "Transactions and locks").

- UPDATE, DELETE and MERGE on a standard table lock the **whole table** until the transaction's COMMIT or
  ROLLBACK; INSERT and COPY take no such lock. A statement that needs a lock another transaction holds waits
  (first come, first served) up to its session's LOCK_TIMEOUT, then fails with 000625.
- Past `waiter_limit` statements queued on one lock, the next fails with 000625 at once.
- A transaction whose client vanished stays open with its locks. Snowflake aborts it once it blocks another
  statement and has been idle for `blocking_idle_abort_seconds` (5 minutes), else after `idle_abort_seconds`
  (4 hours). `SYSTEM$ABORT_TRANSACTION` ends one at once.

Everything here runs on the emulator's event loop; the database work of an abort (a ROLLBACK) is the caller's.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

LOCK_ERRNO = 625
LOCK_SQLSTATE = "57014"

# Snowflake's transaction ids are 19-digit numbers; these start where a real one might.
_transaction_ids = itertools.count(1_700_000_000_000_000_000)


@dataclass(eq=False)
class Transaction:
    """An open transaction (explicit, or the implicit one of a single autocommit statement)."""

    session: str
    user: str
    name: str | None = None
    explicit: bool = True
    id: int = field(default_factory=lambda: next(_transaction_ids))
    started_on: datetime = field(default_factory=lambda: datetime.now(UTC))
    last_active: float = field(default_factory=time.monotonic)
    # A statement of this transaction is running or waiting: it is not idle.
    busy: int = 0
    tables: set[str] = field(default_factory=set)
    aborted_because: str | None = None

    @property
    def state(self) -> str:
        return "aborted" if self.aborted_because else "running"


class LockRefused(Exception):
    """000625: the statement waited past LOCK_TIMEOUT, or too many statements wait already."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(eq=False)
class _Waiter:
    transaction: Transaction
    granted: asyncio.Future[None]


class TableLocks:
    def __init__(
        self,
        *,
        waiter_limit: int = 20,
        blocking_idle_abort_seconds: float = 300.0,
        idle_abort_seconds: float = 14_400.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.waiter_limit = waiter_limit
        self.blocking_idle_abort_seconds = blocking_idle_abort_seconds
        self.idle_abort_seconds = idle_abort_seconds
        self._clock = clock
        self._holders: dict[str, Transaction] = {}
        self._waiters: dict[str, list[_Waiter]] = {}

    def holder(self, table: str) -> Transaction | None:
        return self._holders.get(table)

    def waiting(self, table: str) -> int:
        return len(self._waiters.get(table, ()))

    async def acquire(self, table: str, transaction: Transaction, lock_timeout: float) -> float:
        """Take `table`'s lock for `transaction` (kept until release_all). Returns the seconds waited."""
        holder = self._holders.get(table)
        if holder is None or holder is transaction:
            self._grant(table, transaction)
            return 0.0
        queue = self._waiters.setdefault(table, [])
        if len(queue) >= self.waiter_limit:
            raise LockRefused(
                f"Statement has locked table '{table}' in transaction {holder.id} and this lock has not yet been "
                f"released. Your statement was aborted because the number of waiters for this lock exceeds the "
                f"{self.waiter_limit} statements limit."
            )
        waiter = _Waiter(transaction, asyncio.get_running_loop().create_future())
        queue.append(waiter)
        started = self._clock()
        try:
            await asyncio.wait_for(asyncio.shield(waiter.granted), lock_timeout)
        except TimeoutError:
            self._forget(table, waiter)
            if waiter.granted.done() and not waiter.granted.cancelled():
                return self._clock() - started  # granted in the same instant the wait ran out
            raise LockRefused(
                f"Statement has locked table '{table}' in transaction {holder.id} and this lock has not yet been "
                f"released. Your statement was aborted because it waited for the lock longer than LOCK_TIMEOUT "
                f"({lock_timeout:g} s)."
            ) from None
        except BaseException:
            self._forget(table, waiter)
            if waiter.granted.done() and not waiter.granted.cancelled() and self._holders.get(table) is transaction:
                self._release(table)  # granted, but its statement is gone: hand it on
            raise
        return self._clock() - started

    def release_all(self, transaction: Transaction) -> None:
        for table in list(transaction.tables):
            if self._holders.get(table) is transaction:
                self._release(table)
        transaction.tables.clear()

    def to_abort(self) -> list[tuple[Transaction, str]]:
        """Transactions Snowflake would abort now: idle while blocking a statement, or idle for hours."""
        now = self._clock()
        due: dict[int, tuple[Transaction, str]] = {}
        for table, holder in self._holders.items():
            if holder.busy or not holder.explicit:
                continue
            idle = now - holder.last_active
            if self._waiters.get(table) and idle >= self.blocking_idle_abort_seconds:
                due[holder.id] = (holder, f"it blocked a statement on {table} and was idle for {idle:.0f} s")
            elif idle >= self.idle_abort_seconds:
                due[holder.id] = (holder, f"it was idle for {idle:.0f} s")
        return list(due.values())

    def _grant(self, table: str, transaction: Transaction) -> None:
        self._holders[table] = transaction
        transaction.tables.add(table)

    def _release(self, table: str) -> None:
        holder = self._holders.pop(table, None)
        if holder is not None:
            holder.tables.discard(table)
        queue = self._waiters.get(table, [])
        while queue:
            waiter = queue.pop(0)
            if not waiter.granted.done():
                self._grant(table, waiter.transaction)
                waiter.granted.set_result(None)
                break
        if not queue:
            self._waiters.pop(table, None)

    def _forget(self, table: str, waiter: _Waiter) -> None:
        queue = self._waiters.get(table, [])
        if waiter in queue:
            queue.remove(waiter)
        if not queue:
            self._waiters.pop(table, None)

"""The run store: every call a run's pipeline makes on the database, behind one interface.

`PostgresRunStore` is the one the daemon and retry-upload use; `recomamp.testing.MemoryRunStore` keeps the same
promises in memory (fenced writes raise `LeaseLost`, an attempt is counted as BEGIN_ATTEMPT counts it), so the
step machine is unit-tested without a server. What only Postgres can show (row locks, SKIP LOCKED, a lease
taken over while a write is in flight) stays in the integration tests.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

import asyncpg

from recomamp.domain.alerts import OutcomeFacts, RunNotice
from recomamp.domain.runs import Step
from recomamp.store import quota as quota_store
from recomamp.store import snowflake_configs
from recomamp.store.runs import leases, steps
from recomamp.store.runs.leases import RunLease
from recomamp.store.runs.steps import Attempt, RunRecord


class RunStore(Protocol):
    """What one claim of a run reads and writes. Every call that takes a lease raises `LeaseLost` when the
    claim no longer holds the run; a connection error propagates (the caller's outage gate waits it out)."""

    async def load_run(self, run_id: int) -> RunRecord | None: ...
    async def begin_attempt(self, lease: RunLease, started_at: datetime) -> Attempt: ...
    async def check_fresh(self, lease: RunLease, *, lease_seconds: float) -> None: ...
    async def set_step(self, lease: RunLease, step: Step) -> None: ...
    async def set_attempt_step(self, lease: RunLease, attempt_step: str) -> None: ...
    async def mark_submitting(self, lease: RunLease, marker: str) -> tuple[str, datetime]: ...
    async def mark_submitted(self, lease: RunLease, execution_id: str, status: str) -> None: ...
    async def set_amc_status(
        self, lease: RunLease, status: str, reason: str | None, *, terminal: bool, expire_time: datetime | None
    ) -> None: ...
    async def mark_downloaded(self, lease: RunLease, *, files: int, rows: int | None, path: str, size: int) -> None: ...
    async def set_snowflake(
        self, lease: RunLease, status: str, table: str | None, rows: int | None, error: str | None
    ) -> None: ...
    async def set_results_kept(
        self, run_id: int, *, path: str | None, size: int | None, kept_until: datetime | None
    ) -> None: ...
    async def finish_run(
        self, lease: RunLease, *, status: str, error_kind: str | None, error_message: str | None, notice: RunNotice
    ) -> OutcomeFacts: ...
    async def defer_run(
        self,
        lease: RunLease,
        *,
        delay_seconds: float,
        kind: str,
        message: str,
        wait_reason: str | None = None,
        attempt_before: int | None = None,
    ) -> None: ...
    async def run_state(self, run_id: int) -> tuple[str, str | None] | None: ...
    async def take_quota_slot(
        self,
        lease: RunLease,
        *,
        instance_key: str,
        amc_instance_id: str,
        priority: int,
        limit: int,
        window_seconds: float,
    ) -> quota_store.SlotDecision: ...
    async def quota_posted(self, slot_id: int) -> None: ...
    async def quota_refused(
        self,
        *,
        slot_id: int | None,
        instance_key: str,
        limit: int,
        window_seconds: float,
        retry_after_seconds: float | None,
        fallback_seconds: float,
        detail: str,
    ) -> quota_store.Refusal: ...
    async def snowflake_settings(self, user_id: int) -> dict[str, Any] | None: ...


class PostgresRunStore:
    """The run store in Postgres: each call one statement (or one transaction) on a connection of `pool`."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    async def load_run(self, run_id: int) -> RunRecord | None:
        return await steps.load_run(self._pool, run_id)

    async def begin_attempt(self, lease: RunLease, started_at: datetime) -> Attempt:
        return await steps.begin_attempt(self._pool, lease, started_at)

    async def check_fresh(self, lease: RunLease, *, lease_seconds: float) -> None:
        await leases.check_fresh(self._pool, lease, lease_seconds=lease_seconds)

    async def set_step(self, lease: RunLease, step: Step) -> None:
        await steps.set_step(self._pool, lease, step.value)

    async def set_attempt_step(self, lease: RunLease, attempt_step: str) -> None:
        await steps.set_attempt_step(self._pool, lease, attempt_step)

    async def mark_submitting(self, lease: RunLease, marker: str) -> tuple[str, datetime]:
        return await steps.mark_submitting(self._pool, lease, marker)

    async def mark_submitted(self, lease: RunLease, execution_id: str, status: str) -> None:
        await steps.mark_submitted(self._pool, lease, execution_id, status)

    async def set_amc_status(
        self, lease: RunLease, status: str, reason: str | None, *, terminal: bool, expire_time: datetime | None
    ) -> None:
        await steps.set_amc_status(self._pool, lease, status, reason, terminal=terminal, expire_time=expire_time)

    async def mark_downloaded(self, lease: RunLease, *, files: int, rows: int | None, path: str, size: int) -> None:
        await steps.mark_downloaded(self._pool, lease, files=files, rows=rows, path=path, size=size)

    async def set_snowflake(
        self, lease: RunLease, status: str, table: str | None, rows: int | None, error: str | None
    ) -> None:
        await steps.set_snowflake(self._pool, lease, status, table, rows, error)

    async def set_results_kept(
        self, run_id: int, *, path: str | None, size: int | None, kept_until: datetime | None
    ) -> None:
        await steps.set_results_kept(self._pool, run_id, path=path, size=size, kept_until=kept_until)

    async def finish_run(
        self, lease: RunLease, *, status: str, error_kind: str | None, error_message: str | None, notice: RunNotice
    ) -> OutcomeFacts:
        async with self._pool.acquire() as connection:
            return await steps.finish_run(
                connection, lease, status=status, error_kind=error_kind, error_message=error_message, notice=notice
            )

    async def defer_run(
        self,
        lease: RunLease,
        *,
        delay_seconds: float,
        kind: str,
        message: str,
        wait_reason: str | None = None,
        attempt_before: int | None = None,
    ) -> None:
        await steps.defer_run(
            self._pool,
            lease,
            delay_seconds=delay_seconds,
            kind=kind,
            message=message,
            wait_reason=wait_reason,
            attempt_before=attempt_before,
        )

    async def run_state(self, run_id: int) -> tuple[str, str | None] | None:
        return await steps.run_state(self._pool, run_id)

    async def take_quota_slot(
        self,
        lease: RunLease,
        *,
        instance_key: str,
        amc_instance_id: str,
        priority: int,
        limit: int,
        window_seconds: float,
    ) -> quota_store.SlotDecision:
        async with self._pool.acquire() as connection:
            return await quota_store.take_slot(
                connection,
                lease,
                instance_key=instance_key,
                amc_instance_id=amc_instance_id,
                priority=priority,
                limit=limit,
                window_seconds=window_seconds,
            )

    async def quota_posted(self, slot_id: int) -> None:
        await quota_store.posted(self._pool, slot_id)

    async def quota_refused(
        self,
        *,
        slot_id: int | None,
        instance_key: str,
        limit: int,
        window_seconds: float,
        retry_after_seconds: float | None,
        fallback_seconds: float,
        detail: str,
    ) -> quota_store.Refusal:
        async with self._pool.acquire() as connection:
            return await quota_store.refused(
                connection,
                slot_id=slot_id,
                instance_key=instance_key,
                limit=limit,
                window_seconds=window_seconds,
                retry_after_seconds=retry_after_seconds,
                fallback_seconds=fallback_seconds,
                detail=detail,
            )

    async def snowflake_settings(self, user_id: int) -> dict[str, Any] | None:
        return await snowflake_configs.fetch_row(self._pool, user_id)

"""Operations on runs, shared by the CLI and the daemon's control surface: cancel, retry-upload, rerun."""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import shutil
import socket
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import structlog

from recomamp.amazon.results import kept_result
from recomamp.amazon.transport import AmcError
from recomamp.config import Config
from recomamp.domain.runs import PRIORITY, Trigger
from recomamp.services.adapters import Services
from recomamp.services.load import UserTokenSource, amc_target, run_spool, upload
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.store import runs as run_store
from recomamp.store import schedules as schedule_store
from recomamp.store.catalog import NotFound
from recomamp.store.db import Connection
from recomamp.store.runs.port import PostgresRunStore


class RunRefused(ValueError):
    """The run cannot do that now; the message says why and what to do."""


def operator_name() -> str:
    """Who an operator is, for `cancelled_by`: their login and host."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return f"{user}@{socket.gethostname()}"


@dataclass(frozen=True)
class CancelResult:
    run_id: int
    previous_status: str
    amc_execution_id: str | None
    amc_status: str | None
    amc_note: str | None

    def summary(self) -> str:
        text = f"run {self.run_id} cancelled (it was {self.previous_status})"
        if self.amc_execution_id:
            text += f"; AMC execution {self.amc_execution_id}: {self.amc_status or 'unknown'}"
            if self.amc_note:
                text += f" ({self.amc_note})"
        return text


async def cancel(services: Services, config: Config, run_id: int, cancelled_by: str) -> CancelResult:
    """Cancel a pending or running run. Its AMC execution is cancelled (PUT, then GET); the replica that holds
    it stops at its next fenced write; Snowflake is not touched."""
    pool = services.pool
    run = await run_store.load_run(pool, run_id)
    if run is None:
        raise NotFound(f"run: no run {run_id}; see `recomamp runs list`")
    cancelled = await run_store.cancel_run(pool, run_id, cancelled_by)
    if cancelled is None:
        raise RunRefused(f"run {run_id} is {run.status}: only a pending or running run can be cancelled")
    execution_id = cancelled["amc_execution_id"]
    amc_status = note = None
    if execution_id:
        tokens = UserTokenSource(services, run.owner_id)
        try:
            execution = await services.amc.executions.cancel(amc_target(run, config), tokens, execution_id)
            amc_status = execution.status
        except AmcError as exc:
            note = str(exc)
            with contextlib.suppress(Exception):
                amc_status = (await services.amc.executions.get(amc_target(run, config), tokens, execution_id)).status
        except Exception as exc:  # the run is cancelled either way; say what happened at AMC
            note = f"{type(exc).__name__}: {exc}; cancel it in AMC by hand"
    structlog.get_logger("recomamp.services.runs").info(
        "run_cancelled",
        run_id=run_id,
        cancelled_by=cancelled_by,
        previous_status=cancelled["previous_status"],
        amc_execution_id=execution_id,
        amc_status=amc_status,
    )
    return CancelResult(run_id, cancelled["previous_status"], execution_id, amc_status, note)


async def retry_upload(services: Services, config: Config, run_id: int, *, owner: str) -> str:
    """Load a run's result into the table recorded on the run, again, under a fenced lease of its own.

    Refused (naming the holder) while a replica or another retry-upload holds the run. Uses the result
    kept under the spool when it is there (AMC may no longer serve it), else fetches fresh links.
    """
    pool = services.pool
    run = await run_store.load_run(pool, run_id)
    if run is None:
        raise NotFound(f"run: no run {run_id}; see `recomamp runs list`")
    if not run.target_enabled or not run.target_table_name:
        raise RunRefused(f"run {run_id}: its schedule did not load into Snowflake when the run was created")
    if not run.amc_execution_id or run.amc_status != "SUCCEEDED":
        raise RunRefused(
            f"run {run_id}: there is no succeeded AMC execution to load (AMC status: {run.amc_status or 'none'})"
        )
    lease = await run_store.lease_for_upload(pool, run_id, owner, config.daemon.lease_seconds)
    if lease is None:
        current = await run_store.show_run(pool, run_id) or {}
        if current.get("status") in ("pending", "running"):
            raise RunRefused(
                f"run {run_id} is {current['status']}"
                + (f" on {current['lease_owner']}" if current.get("lease_owner") else "")
                + "; wait for it to finish"
            )
        raise RunRefused(
            f"run {run_id} is held by {current.get('lease_owner')} until {current.get('lease_expires_at')}; wait for it"
        )
    structlog.contextvars.bind_contextvars(user_email=run.user_email, schedule_id=run.schedule_id, run_id=run_id)
    services.leases.hold(lease, time.monotonic())
    stop = asyncio.Event()
    keeper = asyncio.create_task(services.leases.run(stop), name="retry-upload-heartbeat")
    loaded = False
    try:
        directory = Path(run.results_path) if run.results_path else run_spool(config, run_id)
        files = await asyncio.to_thread(kept_result, directory, run.amc_execution_id)
        if files is None:
            tokens = UserTokenSource(services, run.owner_id)
            files = await services.amc.results.download(
                amc_target(run, config), tokens, run.amc_execution_id, directory
            )
        problem = await upload(services, PostgresRunStore(pool), run, lease, files, config, replace_loaded=True)
        if problem is not None:
            raise SnowflakeLoadError(problem.message, transient=False, step="retry-upload")
        loaded = True
        if config.daemon.keep_results_days <= 0:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            await run_store.set_results_kept(pool, run_id, path=None, size=None, kept_until=None)
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await keeper
        with contextlib.suppress(run_store.LeaseLost):
            await run_store.finish_upload(pool, lease, loaded=loaded)
        services.leases.drop(run_id)
    row = await run_store.show_run(pool, run_id) or {}
    return f"run {run_id}: loaded {row.get('snowflake_rows')} rows into {row.get('snowflake_table')}"


async def rerun_failed_for_reauth(connection: Connection, user_id: int, since: datetime) -> list[dict[str, Any]]:
    """Queue again the user's runs that failed for re-authentication since `since`: their own windows, one
    run per window (a window that already has an active or succeeded run is left alone)."""
    failed = await run_store.failed_for_reauth(connection, user_id, since)
    if not failed:
        return []
    created = await run_store.insert_runs(
        connection,
        [
            run_store.NewRun(
                schedule_id=row["schedule_id"],
                scheduled_for=row["scheduled_for"],
                window_start=row["window_start"],
                window_end=row["window_end"],
                window_timezone=row["window_timezone"],
                trigger=Trigger.RERUN.value,
                priority=PRIORITY[Trigger.RERUN],
            )
            for row in failed
        ],
    )
    await schedule_store.notify_wakeup(connection)
    return [{"run_id": c.id, "schedule_id": c.schedule_id, "window_start": c.window_start} for c in created]

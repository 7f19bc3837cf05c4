"""One run, from token to finished. Each step's state is persisted before the next begins, so a run
adopted from a crashed replica continues where it stopped: with an execution id it is polled, never
submitted again; with only a submit marker, AMC is searched for the execution before any new POST.
"""

from __future__ import annotations

import asyncio
import csv
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import structlog

from recomamp.amazon.amc import AmcClient, AmcError, AmcTarget, Execution, ExecutionRequest
from recomamp.config import Config
from recomamp.crypto import SecretBox, SecretUnreadable
from recomamp.domain.identifiers import InvalidIdentifier
from recomamp.logs import get_logger
from recomamp.snowflake.connection import BadPrivateKey
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.snowflake.loader import LoadTarget, RunMetadata
from recomamp.snowflake.sink import SnowflakeSink
from recomamp.store import runs as run_store
from recomamp.store.runs import RunContext
from recomamp.store.snowflake_configs import fetch_row, spec_from_row
from recomamp.tokens import TokenError, TokenService

log = get_logger(__name__)


class LostLease(Exception):
    """Another replica holds this run now: stop touching it."""


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: str  # succeeded | failed | cancelled | deferred | lost
    error_kind: str | None = None
    message: str | None = None


@dataclass
class Services:
    pool: asyncpg.Pool
    tokens: TokenService
    amc: AmcClient
    sink: SnowflakeSink
    box: SecretBox


class UserTokenSource:
    """The run's tokens. The first check is logged at info (seconds left); later ones, per call, at debug."""

    def __init__(self, service: TokenService, user_id: int) -> None:
        self._service = service
        self._user_id = user_id
        self._checked = False

    async def __call__(self, stale: str | None = None) -> str:
        announce, self._checked = not self._checked, True
        return await self._service.access_token(self._user_id, stale=stale, announce=announce)


def _local(instant: datetime, timezone: str) -> datetime:
    from zoneinfo import ZoneInfo

    return instant.astimezone(ZoneInfo(timezone)).replace(tzinfo=None)


def execution_request(run: RunContext, config: Config) -> ExecutionRequest:
    return ExecutionRequest(
        window_start=_local(run.window_start, run.window_timezone),
        window_end=_local(run.window_end, run.window_timezone),
        timezone=run.window_timezone,
        sql_query=run.sql_query,
        workflow_id=run.workflow_id,
        parameter_values=dict(run.parameter_values or {}),
        timeout_seconds=config.amazon.amc_execution_timeout_seconds,
    )


def amc_target(run: RunContext, config: Config) -> AmcTarget:
    return AmcTarget(
        base_url=config.amazon.amc_base_url.for_region(run.region),
        instance_id=run.amc_instance_id,
        advertiser_id=run.advertiser_id,
        marketplace_id=run.marketplace_id,
    )


def count_rows(files: list[Path]) -> int:
    total = 0
    for path in files:
        with path.open(newline="", encoding="utf-8") as handle:
            total += max(0, sum(1 for _ in csv.reader(handle)) - 1)
    return total


class RunPipeline:
    def __init__(self, services: Services, owner: str, config: Callable[[], Config], *, once: bool) -> None:
        self._services = services
        self._owner = owner
        self._config = config
        self._once = once

    async def _write(self, sql: str, run_id: int, *args: object) -> None:
        status = await self._services.pool.execute(sql, run_id, self._owner, *args)
        if status.endswith(" 0"):
            raise LostLease

    async def execute(self, run_id: int) -> RunOutcome:
        config = self._config()  # the config this run started with, even if a reload swaps it
        run = await run_store.load_run(self._services.pool, run_id)
        if run is None:
            return RunOutcome(run_id, "lost", "missing", "the run was deleted")
        structlog.contextvars.bind_contextvars(
            user_email=run.user_email, schedule_id=run.schedule_id, run_id=run_id, attempt=run.attempt
        )
        log.info("run_started", step=run.step, scheduled_for=run.scheduled_for.isoformat(), trigger=run.trigger)
        if run.attempt > config.daemon.max_run_attempts:
            # Claimed more often than allowed without an outcome: each claim before this one died (a
            # replica crashed or was killed mid-run). Stop here rather than loop forever.
            return await self._fail(
                run,
                "too_many_attempts",
                f"The run was claimed {run.attempt} times without finishing (each earlier replica stopped "
                f"mid-run, at step {run.step}); giving up after [daemon] max_run_attempts = "
                f"{config.daemon.max_run_attempts}. Check the daemon's log for crashes, then "
                f"`recomamp schedules run-now {run.schedule_id}`.",
            )
        try:
            return await self._steps(run, config)
        except LostLease:
            log.warning("run_lease_lost", detail="another replica adopted this run; leaving it to them")
            return RunOutcome(run_id, "lost")
        except TokenError as exc:
            if exc.permanent or self._once or run.attempt >= config.daemon.max_run_attempts:
                return await self._fail(run, exc.kind, exc.message)
            return await self._defer(run, config, exc.kind, exc.message)
        except AmcError as exc:
            message = f"AMC: {exc}"
            if not exc.transient:
                return await self._fail(run, "amc_rejected", f"{message}. Fix the schedule's query or window.")
            if self._once or run.attempt >= config.daemon.max_run_attempts:
                return await self._fail(run, "amc_unavailable", f"{message}. Temporary: run it again later.")
            return await self._defer(run, config, "amc_unavailable", message)
        except SecretUnreadable as exc:
            return await self._fail(run, "secret_unreadable", str(exc))

    async def _steps(self, run: RunContext, config: Config) -> RunOutcome:
        services = self._services
        tokens = UserTokenSource(services.tokens, run.owner_id)
        target = amc_target(run, config)
        request = execution_request(run, config)
        execution_id: str | None = run.amc_execution_id
        if execution_id is None:
            await self._write(run_store.SET_STEP, run.id, "token")
            await tokens()
            # The marker is persisted before the POST: if we die mid-POST, whoever adopts the run
            # searches AMC for it instead of submitting a second, billed execution.
            marked = await services.pool.fetchrow(
                run_store.MARK_SUBMITTING, run.id, self._owner, run_store.marker_for(run.id, secrets.token_hex(4))
            )
            if marked is None:
                raise LostLease
            execution = await services.amc.submit_once(
                target,
                tokens,
                request,
                marker=marked["submit_marker"],
                since=marked["submit_started_at"],
                check_first=run.submit_marker is not None,
            )
            execution_id = execution.execution_id
            await self._write(run_store.MARK_SUBMITTED, run.id, execution_id, execution.status)
            log.info("run_submitted", amc_execution_id=execution_id)
        else:
            log.info("run_resumed", amc_execution_id=execution_id, step=run.step)

        async def record_status(execution: Execution) -> None:
            await self._write(
                run_store.SET_AMC_STATUS, run.id, execution.status, execution.status_reason, execution.terminal
            )

        final = await services.amc.wait_until_terminal(
            target,
            tokens,
            execution_id,
            on_status=record_status,
            # AMC is told to stop at this timeout; an hour's grace covers its own bookkeeping.
            deadline_seconds=config.amazon.amc_execution_timeout_seconds + 3600,
        )
        if final.status == "CANCELLED":
            return await self._finish(run, "cancelled", "amc_cancelled", "The AMC execution was cancelled.")
        if final.status != "SUCCEEDED":
            reason = final.status_reason or "no reason given"
            return await self._fail(
                run,
                "amc_execution_failed",
                f"AMC execution {execution_id} ended {final.status}: {reason}. Fix the schedule's query "
                "(or its parameters), then run it again with `recomamp schedules run-now`.",
            )
        with tempfile.TemporaryDirectory(prefix=f"recomamp-run{run.id}-", dir=config.daemon.work_dir) as spool:
            files = await services.amc.download_results(target, tokens, execution_id, Path(spool))
            rows = await asyncio.to_thread(count_rows, files)
            await self._write(run_store.MARK_DOWNLOADED, run.id, len(files), rows)
            log.info("run_downloaded", result_files=len(files), result_rows=rows)
            if run.snowflake_enabled:
                problem = await self.upload(run, files, config, owner=self._owner)
                if problem is not None:
                    return await self._fail(run, "snowflake", problem)
        return await self._finish(run, "succeeded", None, None)

    async def upload(self, run: RunContext, files: list[Path], config: Config, *, owner: str | None) -> str | None:
        """Load the run's files into its table. Returns a message for a person when it failed."""
        services = self._services
        config_row = await fetch_row(services.pool, run.owner_id)

        async def record(status: str, table: str | None, rows: int | None, error: str | None) -> None:
            done = await services.pool.execute(run_store.SET_SNOWFLAKE, run.id, owner, status, table, rows, error)
            if done.endswith(" 0"):
                raise LostLease

        if not run.snowflake_table_name:
            message = (
                "Snowflake is enabled for this schedule but it names no table: set one with "
                f"`recomamp schedules update {run.schedule_id} --snowflake-table NAME`."
            )
            await record("failed", None, None, message)
            return message
        if config_row is None or not config_row["is_active"]:
            message = (
                f"Snowflake is enabled for this schedule but {run.user_email} has no active Snowflake "
                f"configuration: add one with `recomamp snowflake set {run.user_email} …`, then "
                f"`recomamp runs retry-upload {run.id}`. The AMC result is kept at AMC."
            )
            await record("failed", None, None, message)
            return message
        try:
            target = LoadTarget(
                database=config_row["database_name"],
                schema=run.snowflake_schema_name or config_row["default_schema"],
                table=run.snowflake_table_name,
                key_columns=tuple(run.snowflake_key_columns) if run.snowflake_key_columns else None,
            )
            spec = spec_from_row(config_row, services.box)
        except (InvalidIdentifier, BadPrivateKey, ValueError) as exc:
            message = f"Snowflake settings cannot be used: {exc}"
            await record("failed", None, None, message)
            return message
        await record("uploading", target.display, None, None)
        try:
            result = await services.sink.load(
                spec,
                target,
                RunMetadata(
                    schedule_id=run.schedule_id,
                    run_id=run.id,
                    window_start=run.window_start,
                    window_end=run.window_end,
                    uploaded_at=datetime.now(UTC),
                ),
                files,
            )
        except (SnowflakeLoadError, BadPrivateKey) as exc:
            transient = getattr(exc, "transient", False)
            message = (
                f"Snowflake load into {target.display} failed: {exc}. "
                + ("Temporary. " if transient else "")
                + f"The AMC result is kept; load it again with `recomamp runs retry-upload {run.id}`."
            )
            log.error("snowflake_load_failed", table=target.display, transient=transient, error=str(exc))
            await record("failed", target.display, None, message)
            return message
        await record("completed", result.table, result.rows, None)
        return None

    async def _finish(self, run: RunContext, status: str, kind: str | None, message: str | None) -> RunOutcome:
        async with self._services.pool.acquire() as connection:
            counted = await run_store.finish_run(
                connection, run.id, self._owner, status=status, error_kind=kind, error_message=message
            )
        if counted is None:
            raise LostLease
        (log.info if status == "succeeded" else log.error)(
            "run_finished",
            status=status,
            error_kind=kind,
            message=message,
            consecutive_failures=counted.consecutive_failures,
        )
        if counted.paused:
            log.error(
                "schedule_auto_paused",
                consecutive_failures=counted.consecutive_failures,
                failure_threshold=counted.threshold,
                detail="resume it with `recomamp schedules resume` once the cause is fixed",
            )
        return RunOutcome(run.id, status, kind, message)

    async def _fail(self, run: RunContext, kind: str, message: str) -> RunOutcome:
        return await self._finish(run, "failed", kind, message)

    async def _defer(self, run: RunContext, config: Config, kind: str, message: str) -> RunOutcome:
        delay = config.daemon.run_retry_delay_seconds
        full = (
            f"{message} Attempt {run.attempt} of {config.daemon.max_run_attempts}; "
            f"it will be tried again in {delay:.0f} s."
        )
        await self._write(run_store.DEFER_RUN, run.id, delay, kind, full)
        log.warning("run_deferred", error_kind=kind, message=full, retry_in_seconds=delay)
        return RunOutcome(run.id, "deferred", kind, full)


class RetryUploadRefused(ValueError):
    pass


async def retry_upload(services: Services, config: Config, run_id: int) -> str:
    """Fetch fresh result links for a run's AMC execution and load them into Snowflake again.

    Safe to repeat: the load replaces the run's window (or merges on the schedule's keys).
    Returns a summary line; raises RetryUploadRefused with what is wrong, or a load error.
    """
    run = await run_store.load_run(services.pool, run_id)
    if run is None:
        raise RetryUploadRefused(f"run: no run {run_id}; see `recomamp runs list`")
    if not run.snowflake_enabled or not run.snowflake_table_name:
        raise RetryUploadRefused(f"run {run_id}: its schedule does not load into Snowflake")
    if not run.amc_execution_id or run.amc_status != "SUCCEEDED":
        raise RetryUploadRefused(
            f"run {run_id}: there is no succeeded AMC execution to load (AMC status: {run.amc_status or 'none'})"
        )
    if run.status == "running" and run.lease_owner:
        raise RetryUploadRefused(f"run {run_id} is in flight on {run.lease_owner}; wait for it to finish")
    structlog.contextvars.bind_contextvars(user_email=run.user_email, schedule_id=run.schedule_id, run_id=run_id)
    pipeline = RunPipeline(services, owner="retry-upload", config=lambda: config, once=True)
    tokens = UserTokenSource(services.tokens, run.owner_id)
    with tempfile.TemporaryDirectory(prefix=f"recomamp-retry{run_id}-", dir=config.daemon.work_dir) as spool:
        files = await services.amc.download_results(amc_target(run, config), tokens, run.amc_execution_id, Path(spool))
        problem = await pipeline.upload(run, files, config, owner=None)
    if problem is not None:
        raise SnowflakeLoadError(problem, transient=False, step="retry-upload")
    await services.pool.execute(
        "UPDATE schedule_runs SET status = 'succeeded', error_kind = NULL, error_message = NULL, updated_at = now() "
        "WHERE id = $1 AND status = 'failed' AND error_kind = 'snowflake'",
        run_id,
    )
    row = await services.pool.fetchrow(
        "SELECT snowflake_table, snowflake_rows FROM schedule_runs WHERE id = $1", run_id
    )
    assert row is not None
    return f"run {run_id}: loaded {row['snowflake_rows']} rows into {row['snowflake_table']}"

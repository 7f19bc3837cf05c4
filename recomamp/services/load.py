"""What a run does that the CLI does too: the user's tokens, the run's AMC instance and spool, and the
Snowflake load of its result. The daemon's pipeline loads a run's result with `upload`; `runs retry-upload`
loads it again with the same call, under a fenced lease of its own."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from zoneinfo import ZoneInfo

from recomamp.amazon.matching import Execution, ExecutionRequest
from recomamp.amazon.results import ResultFiles
from recomamp.amazon.transport import AmcTarget
from recomamp.config import Config
from recomamp.domain.runs import LOAD_QUEUED_ATTEMPT_STEP, Fail, Step
from recomamp.logs import get_logger
from recomamp.services.adapters import Services
from recomamp.snowflake.connection import BadPrivateKey, SnowflakeConnectionSpec, spec_from_row
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.snowflake.loader import LoadCancelled, LoadResult, LoadSuperseded, LoadTarget, RunMetadata
from recomamp.snowflake.sink import LoadTimedOut
from recomamp.store.runs.leases import LeaseLost, RunLease
from recomamp.store.runs.port import RunStore
from recomamp.store.runs.steps import RunRecord

log = get_logger("recomamp.daemon.pipeline")  # the events' logger name is part of what operators grep for


class UserTokenSource:
    """The run's tokens. The token it was handed is used until it nears its expiry (or AMC rejects it), so
    polling AMC needs no database read per call and goes on while the database is away; a refresh waits
    for the database through the outage gate. The first check is logged at info, later ones at debug."""

    def __init__(self, services: Services, user_id: int) -> None:
        self._services = services
        self._user_id = user_id
        self._checked = False
        self._token: str | None = None
        self._until: datetime | None = None

    async def __call__(self, stale: str | None = None) -> str:
        if self._token is not None and stale is None and self._until is not None and datetime.now(UTC) < self._until:
            return self._token
        announce, self._checked = not self._checked, True
        service = self._services.tokens
        token, self._until = await self._services.gate.call(
            "token", lambda: service.access_token_until(self._user_id, stale=stale, announce=announce)
        )
        self._token = token
        return token


def execution_request(run: RunRecord, config: Config) -> ExecutionRequest:
    zone = ZoneInfo(run.window_timezone)
    return ExecutionRequest(
        window_start=run.window_start.astimezone(zone).replace(tzinfo=None),
        window_end=run.window_end.astimezone(zone).replace(tzinfo=None),
        timezone=run.window_timezone,
        sql_query=run.query_sql,
        workflow_id=run.query_workflow_id,
        parameter_values=dict(run.query_parameters),
        timeout_seconds=config.amazon.amc_execution_timeout_seconds,
    )


def amc_target(run: RunRecord, config: Config) -> AmcTarget:
    """The instance's own apiEndpoint when discovery stored one; else the region's host."""
    base = run.api_endpoint or config.amazon.amc_base_url.for_region(run.region)  # type: ignore[arg-type]
    return AmcTarget(base.rstrip("/"), run.amc_instance_id, run.advertiser_id, run.marketplace_id)


def run_spool(config: Config, run_id: int) -> Path:
    return config.daemon.spool_dir / f"run-{run_id}"


async def ensure_lease(services: Services, store: RunStore, lease: RunLease) -> None:
    """Immediately before a side effect that cannot be undone: this claim still holds the run."""
    sent_at = time.monotonic()
    await services.gate.call(
        "lease check", lambda: store.check_fresh(lease, lease_seconds=services.leases.lease_seconds)
    )
    services.leases.confirm(lease.run_id, sent_at)


async def _resolve_target(
    services: Services, store: RunStore, run: RunRecord
) -> tuple[LoadTarget, SnowflakeConnectionSpec] | str:
    """Where the run's result goes and how to connect there, or the message for a person saying what to fix."""
    if not run.target_table_name:
        return (
            "Snowflake is enabled for this schedule but it names no table: set one with "
            f"`recomamp schedules update {run.schedule_id} --snowflake-table NAME`."
        )
    config_row = await services.gate.call("read Snowflake settings", lambda: store.snowflake_settings(run.owner_id))
    if config_row is None or not config_row["is_active"]:
        return (
            f"Snowflake is enabled for this schedule but {run.user_email} has no active Snowflake "
            f"configuration: add one with `recomamp snowflake set {run.user_email} …`, then "
            f"`recomamp runs retry-upload {run.id}`. The AMC result is kept."
        )
    try:
        target = LoadTarget(
            database=config_row["database_name"],
            schema=run.target_schema_name or config_row["default_schema"],
            table=run.target_table_name,
            key_columns=tuple(run.target_key_columns) if run.target_key_columns else None,
        )
        return target, spec_from_row(config_row, services.box())
    except (ValueError, BadPrivateKey) as exc:
        return f"Snowflake settings cannot be used: {exc}"


async def _sink_load(
    services: Services,
    store: RunStore,
    run: RunRecord,
    lease: RunLease,
    files: ResultFiles,
    config: Config,
    execution: Execution | None,
    target: LoadTarget,
    spec: SnowflakeConnectionSpec,
    *,
    replace_loaded: bool,
) -> LoadResult:
    async def fence() -> None:
        await ensure_lease(services, store, lease)

    async def load_started() -> None:
        await services.gate.call("start the load", lambda: store.set_attempt_step(lease, Step.UPLOADING.value))

    with services.metrics.step("snowflake_load"):
        return await services.sink.load(
            spec,
            target,
            RunMetadata(
                schedule_id=run.schedule_id,
                run_id=run.id,
                window_start=run.window_start,
                window_end=run.window_end,
                uploaded_at=datetime.now(UTC),
                claim=lease.claim,
                amc_execution_id=run.amc_execution_id or (execution.execution_id if execution is not None else ""),
                replace_loaded=replace_loaded,
            ),
            files.paths,
            # AMC's outputColumns types: a STRING column of digits stays text, a LONG stays a number.
            declared_types={c.name: c.data_type for c in execution.output_columns if c.data_type}
            if execution is not None
            else None,
            fence=fence,
            deadline_seconds=config.snowflake.load_timeout_seconds,
            started=load_started,
        )


async def upload(
    services: Services,
    store: RunStore,
    run: RunRecord,
    lease: RunLease,
    files: ResultFiles,
    config: Config,
    execution: Execution | None = None,
    *,
    replace_loaded: bool = False,
) -> Fail | None:
    """Load the run's files into its recorded table. Returns a failure for a person when it failed.

    An adopted run whose result another claim already committed is not loaded twice (the Snowflake load
    ledger says so); `replace_loaded` (an operator's retry-upload) loads it again all the same."""

    async def record(status: str, table: str | None, rows: int | None, error: str | None) -> None:
        await services.gate.call("record Snowflake", lambda: store.set_snowflake(lease, status, table, rows, error))

    resolved = await _resolve_target(services, store, run)
    if isinstance(resolved, str):
        await record("failed", None, None, resolved)
        return Fail("snowflake", resolved)
    target, spec = resolved
    await record("uploading", target.display, None, None)
    await services.gate.call("queue the load", lambda: store.set_attempt_step(lease, LOAD_QUEUED_ATTEMPT_STEP))
    try:
        result = await _sink_load(
            services, store, run, lease, files, config, execution, target, spec, replace_loaded=replace_loaded
        )
    except LeaseLost:
        raise
    except LoadSuperseded as exc:  # a later claim wrote first: this one is over, like a lost lease
        log.warning("run_lease_lost", step="uploading", detail=str(exc))
        raise LeaseLost(run.id) from None
    except (SnowflakeLoadError, BadPrivateKey, LoadTimedOut, LoadCancelled) as exc:
        transient = getattr(exc, "transient", isinstance(exc, LoadTimedOut | LoadCancelled))
        message = (
            f"Snowflake load into {target.display} failed: {exc}. "
            + ("Temporary. " if transient else "")
            + f"The AMC result is kept; load it again with `recomamp runs retry-upload {run.id}`."
        )
        log.error("snowflake_load_failed", table=target.display, transient=transient, error=str(exc))
        await record("failed", target.display, None, message)
        return Fail("snowflake", message)
    await record("completed", result.table, result.rows, None)
    services.metrics.rows_loaded(result.rows)
    return None

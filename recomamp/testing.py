"""Test helpers shipped with the package, as structlog ships `structlog.testing` and procrastinate its
in-memory connector: a run store in memory, fakes of the adapters a run meets (the user's tokens, AMC, the
Snowflake sink), the adapter bundle built from them, and the capture of the JSON log lines.

`MemoryRunStore` keeps the promises of `store.runs.port.RunStore` that the step machine relies on: a write
with a lease the run no longer carries raises `LeaseLost`; an attempt is counted as BEGIN_ATTEMPT counts it
(a claim that starts where the last counted one started); a wait gives back the attempt it counted. What only
Postgres can show (row locks, SKIP LOCKED, claims racing) is for the integration tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import io
import json
import os
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, cast

import structlog
from cryptography.fernet import Fernet
from pydantic import SecretStr

from recomamp.amazon.matching import Execution, ExecutionRequest
from recomamp.amazon.results import ResultFiles
from recomamp.amazon.transport import AmcTarget
from recomamp.crypto import SecretBox
from recomamp.domain.alerts import OutcomeFacts, RunNotice
from recomamp.domain.quota import RefusalWait
from recomamp.domain.runs import Step
from recomamp.logs import configure_logging
from recomamp.observe.metrics import Metrics
from recomamp.services.adapters import Services
from recomamp.snowflake.connection import SnowflakeConnectionSpec
from recomamp.snowflake.loader import LoadResult, LoadTarget, RunMetadata
from recomamp.store import quota as quota_store
from recomamp.store.heartbeat import LeaseKeeper
from recomamp.store.outage import DatabaseGate, DatabaseHealth
from recomamp.store.runs.leases import LeaseLost, RunLease
from recomamp.store.runs.steps import Attempt, RunRecord

TokenSource = Callable[..., Awaitable[str]]

# --- logs -------------------------------------------------------------------------------------------------


@dataclass
class LogCapture:
    """The JSON lines the logging configuration wrote while captured."""

    stream: io.StringIO

    def lines(self) -> list[dict[str, object]]:
        return [json.loads(line) for line in self.stream.getvalue().splitlines() if line.startswith("{")]

    def events(self, name: str) -> list[dict[str, object]]:
        return [line for line in self.lines() if line.get("event") == name]

    def names(self) -> list[str]:
        return [str(line.get("event")) for line in self.lines()]


@contextlib.contextmanager
def capture_logs(level: str = "info") -> Iterator[LogCapture]:
    """Log as the daemon does (JSON lines, not journald's shape) into memory; the bound context is cleared
    after, so one test's run id does not reach the next test's lines."""
    journal = os.environ.pop("JOURNAL_STREAM", None)
    stream = io.StringIO()
    try:
        configure_logging(level, stream=stream)
        yield LogCapture(stream)
    finally:
        structlog.contextvars.clear_contextvars()
        if journal is not None:
            os.environ["JOURNAL_STREAM"] = journal


# --- the event loop held -------------------------------------------------------------------------------


class RunQueueWait:
    """How long this thread has waited on a run queue: runnable, while another process had the CPU.

    Linux counts it per thread (/proc/<pid>/task/<tid>/schedstat, the second field, in ns). Made on the thread
    it measures; without schedstat (not Linux) it reads 0, so every wall-clock second counts."""

    def __init__(self) -> None:
        path = f"/proc/self/task/{threading.get_native_id()}/schedstat"
        try:
            self._fd: int | None = os.open(path, os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 128, 0).split()[1]) / 1e9

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True)
class LoopHold:
    """One callback that kept `loop` from running anything else for `held` seconds (`wall` by the clock)."""

    callback: str
    held: float
    wall: float

    def __str__(self) -> str:
        return f"Executing {self.callback} held the loop {self.held:.3f} s ({self.wall:.3f} s wall)"


@contextlib.contextmanager
def loop_holds(
    loop: asyncio.AbstractEventLoop, longest: float, run_queue_wait: Callable[[], float] | None = None
) -> Iterator[list[LoopHold]]:
    """Every callback of `loop` that held it for `longest` seconds or more, by running or by blocking.

    asyncio's debug mode (slow_callback_duration) times a callback by the wall clock, which also counts the time
    the loop's thread waited for a CPU: beside a CPU hog a step that had blocked nothing read 0.8 s. This takes
    that wait out (`run_queue_wait`, by default RunQueueWait on the calling thread, which must be the loop's).
    What is left is the time the callback ran or blocked; a wait for the GIL while another of the process's threads
    holds it counts too (a worker thread descheduled with the GIL keeps the loop waiting in production as well)."""
    waited = RunQueueWait() if run_queue_wait is None else run_queue_wait
    describe: Callable[[asyncio.Handle], str] = getattr(asyncio.base_events, "_format_handle", repr)
    run_handle = asyncio.Handle._run
    holds: list[LoopHold] = []

    def timed_run(handle: asyncio.Handle) -> None:
        if getattr(handle, "_loop", None) is not loop:  # another thread's loop, another run queue
            run_handle(handle)
            return
        started, waited_before = time.monotonic(), waited()
        try:
            run_handle(handle)
        finally:
            # Not the callback that ended the watch (it closed the reader under its own feet).
            if watching:
                wall = time.monotonic() - started
                held = wall - (waited() - waited_before)
                if held >= longest:
                    holds.append(LoopHold(describe(handle), held, wall))

    watching = True
    asyncio.Handle._run = timed_run  # type: ignore[method-assign, assignment]
    try:
        yield holds
    finally:
        watching = False
        asyncio.Handle._run = run_handle  # type: ignore[method-assign]
        if isinstance(waited, RunQueueWait):
            waited.close()


# --- the run store in memory ----------------------------------------------------------------------------


def run_record(**fields: Any) -> RunRecord:
    """A run as the store loads it: a daily window of schedule 1, user 1, instance amc1; `fields` override."""
    start = datetime(2026, 11, 1, tzinfo=UTC)
    values: dict[str, Any] = {
        "id": 1,
        "schedule_id": 1,
        "schedule_name": "daily",
        "trigger": "schedule",
        "status": "pending",
        "step": Step.QUEUED.value,
        "attempt": 0,
        "claims": 0,
        "interruptions": 0,
        "scheduled_for": start + timedelta(days=1),
        "window_start": start,
        "window_end": start + timedelta(days=1),
        "window_timezone": "UTC",
        "submit_marker": None,
        "submit_started_at": None,
        "amc_execution_id": None,
        "amc_status": None,
        "query_sql": "SELECT 1",
        "query_workflow_id": None,
        "query_parameters": {},
        "target_enabled": False,
        "target_table_name": None,
        "target_schema_name": None,
        "target_key_columns": None,
        "snowflake_table": None,
        "results_path": None,
        "error_message": None,
        "lease_owner": None,
        "lease_token": None,
        "lease_expires_at": None,
        "cancel_requested_at": None,
        "owner_id": 1,
        "user_email": "ann@example.com",
        "instance_row_id": 1,
        "amc_instance_id": "amc1",
        "advertiser_id": "ENTITY1",
        "marketplace_id": "ATVPDKIKX0DER",
        "region": "na",
        "api_endpoint": "https://amc.example.test",
        "downloaded_at": None,
    }
    values.update(fields)
    return RunRecord(**values)


# The schedule_runs columns a run's claim writes, beyond those RunRecord carries.
_WRITTEN = (
    "attempt_step",
    "amc_status_reason",
    "amc_expire_time",
    "amc_finished",
    "result_files",
    "result_rows",
    "results_bytes",
    "results_kept_until",
    "snowflake_status",
    "snowflake_rows",
    "snowflake_error",
    "error_kind",
    "wait_reason",
    "not_before_in_seconds",
    "cancelled_by",
)


@dataclass
class MemoryRun:
    record: RunRecord
    columns: dict[str, Any] = field(default_factory=dict)


@dataclass
class MemoryRunStore:
    """The run store in memory. Set `quota_limit` to grant only that many POSTs; `snowflake` holds each user's
    Snowflake settings row; `before` runs a hook ahead of the named call (a claim taken over, an outage)."""

    quota_limit: int | None = None
    snowflake: dict[int, dict[str, Any]] = field(default_factory=dict)
    failure_threshold: int = 3
    auto_pause: bool = False
    runs: dict[int, MemoryRun] = field(default_factory=dict)
    calls: list[str] = field(default_factory=list)
    notices: list[tuple[RunNotice, OutcomeFacts]] = field(default_factory=list)
    before: dict[str, Callable[[], None]] = field(default_factory=dict)
    quota_slots: list[int] = field(default_factory=list)  # the run of each slot taken
    quota_posted_slots: list[int] = field(default_factory=list)
    refusals: list[dict[str, Any]] = field(default_factory=list)
    _failures: dict[int, int] = field(default_factory=dict)

    # --- setting up, and what a test looks at ---------------------------------------------------------

    def add_run(self, record: RunRecord | None = None, **fields: Any) -> int:
        record = record or run_record(**fields)
        self.runs[record.id] = MemoryRun(record, dict.fromkeys(_WRITTEN))
        self.runs[record.id].columns["attempt_step"] = None
        return record.id

    def claim(self, run_id: int) -> RunLease:
        """A new claim of the run (as TAKE_LEASES makes one): earlier claims' writes fail from now on."""
        run = self.runs[run_id]
        claims = run.record.claims + 1
        lease = RunLease(run_id, uuid.uuid4(), claims)
        run.record = replace(run.record, lease_token=lease.token, claims=claims, status="running")
        return lease

    def cancel(self, run_id: int, cancelled_by: str = "ops@host") -> None:
        """An operator's cancel (CANCEL_RUN): the run ends, and its holder's next write fails."""
        run = self.runs[run_id]
        run.record = replace(run.record, status="cancelled", step=Step.FINISHED.value, lease_token=None)
        run.columns.update(cancelled_by=cancelled_by, error_kind="cancelled")

    def row(self, run_id: int) -> dict[str, Any]:
        """The run's columns as they stand: RunRecord's and the others a claim writes."""
        run = self.runs[run_id]
        return {**{name: getattr(run.record, name) for name in run.record.__dataclass_fields__}, **run.columns}

    # --- the fence ------------------------------------------------------------------------------------------

    def _call(self, name: str) -> None:
        self.calls.append(name)
        hook = self.before.pop(name, None)
        if hook is not None:
            hook()

    def _held(self, name: str, lease: RunLease) -> MemoryRun:
        self._call(name)
        run = self.runs.get(lease.run_id)
        if run is None or run.record.lease_token != lease.token:
            raise LeaseLost(lease.run_id)
        return run

    def _set(self, run: MemoryRun, **values: Any) -> None:
        record_fields = {k: v for k, v in values.items() if k in run.record.__dataclass_fields__}
        run.record = replace(run.record, **record_fields)
        run.columns.update({k: v for k, v in values.items() if k not in record_fields})

    # --- RunStore ---------------------------------------------------------------------------------------------

    async def load_run(self, run_id: int) -> RunRecord | None:
        self._call("load_run")
        run = self.runs.get(run_id)
        return run.record if run is not None else None

    async def begin_attempt(self, lease: RunLease, started_at: datetime) -> Attempt:
        run = self._held("begin_attempt", lease)
        record = run.record
        counts = record.attempt == 0 or record.step == run.columns["attempt_step"]
        self._set(run, attempt=record.attempt + 1 if counts else record.attempt, attempt_step=record.step)
        return Attempt(run.record.attempt, run.record.claims, run.record.interruptions)

    async def check_fresh(self, lease: RunLease, *, lease_seconds: float) -> None:
        self._held("check_fresh", lease)

    async def set_step(self, lease: RunLease, step: Step) -> None:
        self._set(self._held("set_step", lease), step=step.value)

    async def set_attempt_step(self, lease: RunLease, attempt_step: str) -> None:
        self._set(self._held("set_attempt_step", lease), attempt_step=attempt_step)

    async def mark_submitting(self, lease: RunLease, marker: str) -> tuple[str, datetime]:
        run = self._held("mark_submitting", lease)
        self._set(
            run,
            step=Step.SUBMITTING.value,
            submit_marker=run.record.submit_marker or marker,
            submit_started_at=run.record.submit_started_at or datetime.now(UTC),
        )
        assert run.record.submit_marker is not None
        assert run.record.submit_started_at is not None
        return run.record.submit_marker, run.record.submit_started_at

    async def mark_submitted(self, lease: RunLease, execution_id: str, status: str) -> None:
        run = self._held("mark_submitted", lease)
        self._set(run, step=Step.SUBMITTED.value, amc_execution_id=execution_id, amc_status=status)

    async def set_amc_status(
        self, lease: RunLease, status: str, reason: str | None, *, terminal: bool, expire_time: datetime | None
    ) -> None:
        run = self._held("set_amc_status", lease)
        self._set(run, amc_status=status, amc_status_reason=reason, amc_finished=terminal or None)

    async def mark_downloaded(self, lease: RunLease, *, files: int, rows: int | None, path: str, size: int) -> None:
        run = self._held("mark_downloaded", lease)
        self._set(
            run,
            step=Step.DOWNLOADING.value,
            result_files=files,
            result_rows=rows,
            results_path=path,
            results_bytes=size,
            downloaded_at=run.record.downloaded_at or datetime.now(UTC),
        )

    async def set_snowflake(
        self, lease: RunLease, status: str, table: str | None, rows: int | None, error: str | None
    ) -> None:
        run = self._held("set_snowflake", lease)
        step = Step.UPLOADING.value if status == "uploading" else run.record.step
        self._set(
            run,
            step=step,
            snowflake_status=status,
            snowflake_table=table or run.record.snowflake_table,
            snowflake_rows=rows,
            snowflake_error=error,
        )

    async def set_results_kept(
        self, run_id: int, *, path: str | None, size: int | None, kept_until: datetime | None
    ) -> None:
        self._call("set_results_kept")
        self._set(self.runs[run_id], results_path=path, results_bytes=size, results_kept_until=kept_until)

    async def finish_run(
        self, lease: RunLease, *, status: str, error_kind: str | None, error_message: str | None, notice: RunNotice
    ) -> OutcomeFacts:
        run = self._held("finish_run", lease)
        self._set(
            run,
            status=status,
            step=Step.FINISHED.value,
            error_kind=error_kind,
            error_message=error_message,
            wait_reason=None,
            lease_token=None,
        )
        schedule = run.record.schedule_id
        before = self._failures.get(schedule, 0)
        self._failures[schedule] = 0 if status == "succeeded" else before + 1
        failures = self._failures[schedule]
        paused = self.auto_pause and status != "succeeded" and failures == self.failure_threshold
        facts = OutcomeFacts(status, error_kind, error_message, failures, paused, before, self.failure_threshold)
        self.notices.append((notice, facts))
        return facts

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
        run = self._held("defer_run", lease)
        self._set(
            run,
            status="pending",
            lease_token=None,
            not_before_in_seconds=delay_seconds,
            error_kind=kind,
            error_message=message,
            wait_reason=wait_reason,
            attempt=attempt_before if attempt_before is not None else run.record.attempt,
        )

    async def run_state(self, run_id: int) -> tuple[str, str | None] | None:
        self._call("run_state")
        run = self.runs.get(run_id)
        return (run.record.status, run.columns.get("cancelled_by")) if run is not None else None

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
        self._held("take_quota_slot", lease)
        cap = self.quota_limit if self.quota_limit is not None else limit
        used = len(self.quota_slots)
        if used >= cap:
            return quota_store.SlotDecision(
                False, used, cap, next_slot=datetime.now(UTC) + timedelta(hours=1), reason="the window is full"
            )
        self.quota_slots.append(lease.run_id)
        return quota_store.SlotDecision(True, used + 1, cap, slot_id=len(self.quota_slots))

    async def quota_posted(self, slot_id: int) -> None:
        self._call("quota_posted")
        self.quota_posted_slots.append(slot_id)

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
        self._call("quota_refused")
        self.refusals.append({"slot_id": slot_id, "instance_key": instance_key, "detail": detail})
        wait = retry_after_seconds if retry_after_seconds is not None else fallback_seconds
        basis = "retry_after" if retry_after_seconds is not None else "fallback"
        until = datetime.now(UTC) + timedelta(seconds=wait)
        return quota_store.Refusal(len(self.quota_slots) - 1, limit, RefusalWait(until, basis), len(self.refusals) == 1)

    async def snowflake_settings(self, user_id: int) -> dict[str, Any] | None:
        self._call("snowflake_settings")
        return self.snowflake.get(user_id)


def snowflake_settings_row(box: SecretBox, **fields: Any) -> dict[str, Any]:
    """A user's stored Snowflake configuration (its password encrypted with `box`), as the store reads it."""
    row: dict[str, Any] = {
        "account": "xy12345",
        "username": "LOADER",
        "database_name": "ANALYTICS",
        "default_schema": "AMC",
        "warehouse": "LOAD_WH",
        "role": None,
        "password_encrypted": box.encrypt("a-password"),
        "private_key_encrypted": None,
        "private_key_passphrase_encrypted": None,
        "host": None,
        "port": None,
        "protocol": None,
        "is_active": True,
    }
    row.update(fields)
    return row


# --- fakes of the adapters a run meets ---------------------------------------------------------------------


@dataclass
class FakeTokens:
    """The token service: an access token good for an hour, or `error` raised."""

    error: Exception | None = None
    calls: int = 0

    async def access_token_until(
        self, user_id: int, *, stale: str | None = None, announce: bool = True
    ) -> tuple[str, datetime]:
        self.calls += 1
        if self.error is not None:
            raise self.error
        return f"access-{user_id}-{self.calls}", datetime.now(UTC) + timedelta(hours=1)


def execution(execution_id: str, status: str, **fields: Any) -> Execution:
    """An execution as AMC's JSON describes it."""
    body: dict[str, Any] = {"workflowExecutionId": execution_id, "status": status, **fields}
    return Execution.from_json(body)


@dataclass
class FakeAmc:
    """AMC for one test: executions are created by `submit_once` (a marker already known is found, not posted
    again), end as `final_status`, and their result is `rows` under `columns`. Errors are scripted per call."""

    final_status: str = "SUCCEEDED"
    status_reason: str | None = None
    download_unavailable: str | None = None
    columns: Sequence[tuple[str, str]] = (("campaign", "STRING"), ("impressions", "LONG"))
    rows: Sequence[Sequence[str]] = (("c1", "10"), ("c2", "20"))
    errors: dict[str, Exception] = field(default_factory=dict)  # by call: submit, wait, download, cancel
    posts: list[str] = field(default_factory=list)  # the marker of each POST
    known: dict[str, str] = field(default_factory=dict)  # marker → execution id: what a search finds
    waits: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)
    cancelled: list[str] = field(default_factory=list)

    @property
    def executions(self) -> FakeAmc:
        return self

    @property
    def results(self) -> FakeAmc:
        return self

    def _raise(self, call: str) -> None:
        error = self.errors.pop(call, None)
        if error is not None:
            raise error

    async def submit_once(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        request: ExecutionRequest,
        *,
        marker: str,
        since: datetime,
        check_first: bool,
        before_post: Callable[[], Awaitable[None]],
        after_post: Callable[[], Awaitable[None]],
    ) -> Execution:
        await tokens()
        if check_first and marker in self.known:
            return execution(self.known[marker], "RUNNING")
        await before_post()
        self._raise("submit")
        execution_id = f"exec-{len(self.posts) + 1}"
        self.posts.append(marker)
        self.known[marker] = execution_id
        await after_post()
        return execution(execution_id, "PENDING")

    async def wait_until_terminal(
        self,
        target: AmcTarget,
        tokens: TokenSource,
        execution_id: str,
        *,
        on_status: Callable[[Execution], Awaitable[None]] | None = None,
        deadline_seconds: float | None = None,
    ) -> Execution:
        await tokens()
        self.waits.append(execution_id)
        self._raise("wait")
        if on_status is not None:
            await on_status(execution(execution_id, "RUNNING"))
        channels = (
            [{"type": "DOWNLOAD", "status": "UNAVAILABLE", "statusReason": self.download_unavailable}]
            if self.download_unavailable
            else []
        )
        return execution(
            execution_id,
            self.final_status,
            statusReason=self.status_reason,
            outputColumns=[{"name": name, "dataType": data_type} for name, data_type in self.columns],
            outputChannels=channels,
        )

    async def cancel(self, target: AmcTarget, tokens: TokenSource, execution_id: str) -> Execution:
        self._raise("cancel")
        self.cancelled.append(execution_id)
        return execution(execution_id, "CANCELLED")

    async def download(
        self, target: AmcTarget, tokens: TokenSource, execution_id: str, directory: Path, *, columns: Sequence[str] = ()
    ) -> ResultFiles:
        await tokens()
        self.downloads.append(execution_id)
        self._raise("download")
        header = tuple(name for name, _ in self.columns)
        return await asyncio.to_thread(_write_result, directory, header, self.rows)


@dataclass
class FakeSink:
    """The Snowflake sink: a load starts, passes its fence, and lands `rows`; or `error` is raised before its
    commit. A run whose load landed before lands nothing again unless the load says replace_loaded."""

    error: Exception | None = None
    loads: list[RunMetadata] = field(default_factory=list)
    landed: dict[int, int] = field(default_factory=dict)  # run id → rows landed

    async def load(
        self,
        spec: SnowflakeConnectionSpec,
        target: LoadTarget,
        metadata: RunMetadata,
        files: Sequence[Path],
        *,
        declared_types: Mapping[str, str] | None = None,
        fence: Callable[[], Awaitable[None]] | None = None,
        deadline_seconds: float | None = None,
        started: Callable[[], Awaitable[None]] | None = None,
    ) -> LoadResult:
        self.loads.append(metadata)
        if started is not None:
            await started()
        if self.error is not None:
            raise self.error
        if fence is not None:
            await fence()
        if metadata.run_id in self.landed and not metadata.replace_loaded:
            return LoadResult(target.display, self.landed[metadata.run_id], 0, already_loaded=True)
        rows = await asyncio.to_thread(_count_lines, files)
        self.landed[metadata.run_id] = rows
        return LoadResult(target.display, rows, 1)


def _write_result(directory: Path, header: tuple[str, ...], rows: Sequence[Sequence[str]]) -> ResultFiles:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "part-00000.csv.gz"
    text = "\n".join(",".join(line) for line in [header, *rows]) + "\n"
    path.write_bytes(gzip.compress(text.encode()))
    return ResultFiles(directory, (path,), header, path.stat().st_size)


def _count_lines(files: Sequence[Path]) -> int:
    """Rows in gzip CSV files, one header row each."""
    return sum(len(gzip.decompress(path.read_bytes()).splitlines()) - 1 for path in files)


def memory_services(
    *,
    tokens: FakeTokens | None = None,
    amc: FakeAmc | None = None,
    sink: FakeSink | None = None,
    lease_seconds: float = 30.0,
    box: SecretBox | None = None,
) -> Services:
    """The adapter bundle a run is handed, with the fakes above and no database (a run's database calls go
    through the run store it is given). The outage gate, the lease keeper and the metrics are the real ones."""
    health = DatabaseHealth()
    leases = LeaseKeeper(
        "",
        replica="memory",
        lease_seconds=lease_seconds,
        interval_seconds=lease_seconds / 3,
        health=health,
        command_timeout=1.0,
        connect_timeout=1.0,
        on_lost=lambda _: None,
    )
    key = SecretStr(Fernet.generate_key().decode())
    return Services(
        pool=cast(Any, None),
        control_pool=cast(Any, None),
        gate=DatabaseGate(health, max_wait=0.01, first_wait=0.0),
        leases=leases,
        tokens=cast(Any, tokens or FakeTokens()),
        amc=cast(Any, amc or FakeAmc()),
        sink=cast(Any, sink or FakeSink()),
        http=cast(Any, None),
        metrics=Metrics(),
        _box=[box or SecretBox([key])],
    )

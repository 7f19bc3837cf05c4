"""One run, from token to finished: a step machine over fenced writes.

Each step has one handler, which does its work, persists its state and names the step to run next; the
claim starts with the handler of the step the last holder saved (domain.runs.resume_step), so a run adopted
from a crashed replica continues where it stopped: with an execution id it is polled, never submitted again;
with only a submit marker, AMC is searched for the execution before any new POST.

Every write goes through the run store (store.runs.port) and carries the claim's lease token. A write that
matches no row means this claim is over: the coroutine stops before its next side effect and records nothing.
The two side effects that cannot be undone (the AMC POST and the Snowflake COMMIT) are preceded by a check of
the lease in the database. Every exception is classified (daemon.classify) into one decision: fail, defer,
wait, lost, cancelled; what the ending records is decided by domain.runs.verdict.
"""

from __future__ import annotations

import asyncio
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar
from zoneinfo import ZoneInfo

import structlog

from recomamp.amazon.matching import Execution
from recomamp.amazon.results import ResultFiles
from recomamp.amazon.transport import AmcTarget, QuotaRefused
from recomamp.config import Config
from recomamp.daemon.classify import QuotaWait, classify
from recomamp.domain.alerts import RunNotice
from recomamp.domain.runs import (
    PRIORITY,
    Defer,
    Ending,
    Fail,
    Finish,
    Leave,
    OutcomeStatus,
    Release,
    RunOutcome,
    Step,
    Succeeded,
    Trigger,
    give_up_message,
    resume_step,
    verdict,
)
from recomamp.logs import get_logger
from recomamp.services.adapters import Services
from recomamp.services.load import (
    UserTokenSource,
    amc_target,
    ensure_lease,
    execution_request,
    run_spool,
    upload,
)
from recomamp.store import quota as quota_store
from recomamp.store.db import is_connection_error
from recomamp.store.runs.leases import LeaseLost, RunLease
from recomamp.store.runs.port import PostgresRunStore, RunStore
from recomamp.store.runs.steps import RunRecord, marker_for

log = get_logger(__name__)

T = TypeVar("T")


def notice_for(run: RunRecord) -> RunNotice:
    return RunNotice(run.id, run.schedule_id, run.schedule_name, run.user_email, run.window_start, run.window_end)


@dataclass
class _Claim:
    """What one claim of a run carries from step to step."""

    run: RunRecord
    lease: RunLease
    config: Config
    tokens: UserTokenSource
    target: AmcTarget
    execution_id: str | None
    final: Execution | None = None  # AMC's terminal answer, once the wait is over
    files: ResultFiles | None = None  # the downloaded result

    @property
    def directory(self) -> Path:
        return run_spool(self.config, self.run.id)


# A handler does its step and names the next one, or ends the run.
_Handler = Callable[["RunPipeline", _Claim], Awaitable[Step | Ending]]


class RunPipeline:
    def __init__(
        self,
        services: Services,
        owner: str,
        config: Callable[[], Config],
        *,
        once: bool,
        store: RunStore | None = None,
    ) -> None:
        self._services = services
        self._owner = owner
        self._config = config
        self._once = once
        self._store: RunStore = store if store is not None else PostgresRunStore(services.pool)

    # --- database access, fenced and outage-tolerant ----------------------------------------------------

    async def _db(self, what: str, action: Callable[[], Awaitable[T]]) -> T:
        """A database call that waits out an outage (the run holds its results meanwhile)."""
        return await self._services.gate.call(what, action)

    async def _ensure_lease(self, lease: RunLease) -> None:
        """Immediately before a side effect that cannot be undone: this claim still holds the run."""
        await ensure_lease(self._services, self._store, lease)

    async def _step_boundary(self, lease: RunLease) -> None:
        """Between steps: a claim whose lease was not renewed in time (a stall) verifies it before going on."""
        if not self._services.leases.confirmed(lease.run_id):
            log.warning("run_lease_unconfirmed", detail="checking the lease before the next step")
            await self._ensure_lease(lease)

    # --- the run ------------------------------------------------------------------------------------------

    async def execute(self, lease: RunLease) -> RunOutcome:
        started_at = datetime.now(UTC)  # the run's coroutine begins its first step: lag is measured to here
        config = self._config()  # the config this run started with, even if a reload swaps it
        services, store = self._services, self._store
        run = await self._db("load run", lambda: store.load_run(lease.run_id))
        if run is None:
            return RunOutcome(lease.run_id, OutcomeStatus.LOST, "missing", "the run was deleted")
        structlog.contextvars.bind_contextvars(
            user_email=run.user_email, schedule_id=run.schedule_id, run_id=run.id, attempt=run.attempt + 1
        )
        services.metrics.run_started(run, started_at)
        attempt_number = run.attempt + 1
        try:
            attempt = await self._db("begin attempt", lambda: store.begin_attempt(lease, started_at))
            attempt_number = attempt.number
            log.info(
                "run_started",
                step=run.step,
                scheduled_for=run.scheduled_for.isoformat(),
                trigger=run.trigger,
                claims=attempt.claims,
            )
            if attempt.number > config.daemon.max_run_attempts:
                ending: Ending = Fail(
                    "too_many_attempts",
                    give_up_message(
                        schedule_id=run.schedule_id,
                        attempts=attempt.number,
                        max_attempts=config.daemon.max_run_attempts,
                        interruptions=attempt.interruptions,
                        step=run.step,
                        last_error=run.error_message,
                    ),
                )
            else:
                ending = await self._steps(run, lease, config)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            ending = classify(exc, quota_backoff_seconds=config.amc.quota_refusal_backoff_seconds)
            if isinstance(ending, Defer | Fail) and ending.kind == "unexpected":
                log.error("run_unexpected_error", exc_info=exc)
        try:
            return await self._record(
                run,
                lease,
                verdict(
                    ending,
                    attempt=attempt_number,
                    max_attempts=config.daemon.max_run_attempts,
                    once=self._once,
                    retry_delay_seconds=config.daemon.run_retry_delay_seconds,
                    now=datetime.now(UTC),
                ),
            )
        finally:
            services.metrics.run_left(run.amc_instance_id)
            # The coroutine ends here, however it ends: with run_started, what says one process never held two
            # coroutines of one run at once (a replica may run a run again later, after losing its lease).
            log.debug("run_left")

    async def _record(self, run: RunRecord, lease: RunLease, decided: Finish | Release | Leave) -> RunOutcome:
        try:
            match decided:
                case Finish():
                    return await self._finish(run, lease, decided)
                case Release():
                    return await self._release(run, lease, decided)
                case Leave():
                    return await self._lost(run)
        except LeaseLost:
            return await self._lost(run)
        raise AssertionError(f"unhandled verdict {decided!r}")  # pragma: no cover

    async def _finish(self, run: RunRecord, lease: RunLease, decided: Finish) -> RunOutcome:
        store = self._store
        status, kind, message = decided.status, decided.error_kind, decided.message
        outcome = await self._db(
            "finish run",
            lambda: store.finish_run(
                lease, status=status.value, error_kind=kind, error_message=message, notice=notice_for(run)
            ),
        )
        (log.info if status is OutcomeStatus.SUCCEEDED else log.error)(
            "run_finished",
            status=status.value,
            error_kind=kind,
            message=message,
            consecutive_failures=outcome.consecutive_failures,
        )
        if outcome.paused_now:
            log.error(
                "schedule_auto_paused",
                consecutive_failures=outcome.consecutive_failures,
                failure_threshold=outcome.threshold,
                detail=f"resume it with `recomamp schedules resume {run.schedule_id}` once the cause is fixed",
            )
        self._services.metrics.run_finished(run, status.value, kind)
        return RunOutcome(run.id, status, kind, message)

    async def _release(self, run: RunRecord, lease: RunLease, decided: Release) -> RunOutcome:
        store = self._store
        waiting = decided.status is OutcomeStatus.WAITING
        await self._db(
            "defer run",
            lambda: store.defer_run(
                lease,
                delay_seconds=decided.delay_seconds,
                kind=decided.kind,
                message=decided.message,
                wait_reason=decided.kind if waiting else None,
                attempt_before=run.attempt if decided.restores_attempt else None,
            ),
        )
        if waiting:
            assert decided.until is not None
            log.info("run_waiting", wait_reason=decided.kind, message=decided.message, until=decided.until.isoformat())
        else:
            log.warning(
                "run_deferred", error_kind=decided.kind, message=decided.message, retry_in_seconds=decided.delay_seconds
            )
            self._services.metrics.run_finished(run, decided.status.value, decided.kind)
        return RunOutcome(run.id, decided.status, decided.kind, decided.message)

    async def _lost(self, run: RunRecord) -> RunOutcome:
        state = None
        try:
            state = await self._store.run_state(run.id)
        except Exception as exc:  # the outcome is "lost" either way; the state only words the log line
            if not is_connection_error(exc):
                raise
        if state is not None and state[0] == "cancelled":
            log.info("run_cancelled", cancelled_by=state[1], detail="stopped at its next write; nothing recorded")
            return RunOutcome(run.id, OutcomeStatus.CANCELLED, "cancelled", f"cancelled by {state[1]}")
        log.warning("run_lease_lost", detail="another replica holds this run now (or it was deleted); leaving it")
        return RunOutcome(run.id, OutcomeStatus.LOST)

    # --- the steps: one handler each ----------------------------------------------------------------------

    async def _steps(self, run: RunRecord, lease: RunLease, config: Config) -> Ending:
        """Run the handler of the step the run was saved at, then each next one, until the run ends."""
        step = resume_step(run.step)
        if step is not Step.TOKEN:
            log.info("run_resumed", amc_execution_id=run.amc_execution_id, step=run.step)
        claim = _Claim(
            run, lease, config, UserTokenSource(self._services, run.owner_id), amc_target(run, config),
            run.amc_execution_id,
        )  # fmt: skip
        while True:
            handler = HANDLERS.get(step)
            if handler is None:
                raise AssertionError(f"no handler for step {step}")  # pragma: no cover
            following = await handler(self, claim)
            if not isinstance(following, Step):
                return following
            step = following

    async def _token(self, claim: _Claim) -> Step:
        """Step token: the user's access token works (refreshed if need be) before anything goes to AMC."""
        store, lease = self._store, claim.lease
        await self._db("set step", lambda: store.set_step(lease, Step.TOKEN))
        with self._services.metrics.step("token"):
            await claim.tokens()
        await self._step_boundary(lease)
        return Step.SUBMITTING

    async def _submit(self, claim: _Claim) -> Step:
        """Step submitting: the marker is saved, then AMC is searched (after an earlier marker) or posted to."""
        services, store, run, lease, config = self._services, self._store, claim.run, claim.lease, claim.config
        marker, since = await self._db(
            "mark submitting", lambda: store.mark_submitting(lease, marker_for(run.id, secrets.token_hex(4)))
        )
        slot_id: int | None = None  # the quota slot of the POST in flight

        async def before_post() -> None:
            nonlocal slot_id
            await self._ensure_lease(lease)
            slot_id = await self._take_quota_slot(run, lease, claim.target, config)

        async def after_post() -> None:
            await self._quota_posted(slot_id)

        try:
            execution = await services.amc.executions.submit_once(
                claim.target,
                claim.tokens,
                execution_request(run, config),
                marker=marker,
                since=since,
                check_first=run.submit_marker is not None,
                before_post=before_post,
                after_post=after_post,
            )
        except QuotaRefused as exc:
            raise await self._quota_refused(exc, slot_id, run, claim.target, config) from exc
        services.metrics.amc_submitted(run)
        try:
            await self._db(
                "mark submitted", lambda: store.mark_submitted(lease, execution.execution_id, execution.status)
            )
        except LeaseLost:
            await self._orphaned(run, claim.target, claim.tokens, execution.execution_id)
            raise
        claim.execution_id = execution.execution_id
        log.info("run_submitted", amc_execution_id=claim.execution_id)
        return Step.SUBMITTED

    async def _await_amc(self, claim: _Claim) -> Step | Ending:
        """Step submitted: AMC runs the execution; its end is recorded, and only a result it offers goes on."""
        services, store, run, lease, config = self._services, self._store, claim.run, claim.lease, claim.config
        execution_id = claim.execution_id
        if execution_id is None:
            raise AssertionError(f"run {run.id} is at step {run.step} without an AMC execution id")

        async def record_status(execution: Execution) -> None:
            # Informational while the execution runs: a database outage must not stop the polling.
            if execution.terminal:
                return
            try:
                await store.set_amc_status(
                    lease, execution.status, execution.status_reason, terminal=False, expire_time=execution.expire_time
                )
            except LeaseLost:
                raise
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                services.gate.health.failed(exc, "recording an AMC status")

        with services.metrics.step("amc_wait"):
            final = await services.amc.executions.wait_until_terminal(
                claim.target,
                claim.tokens,
                execution_id,
                on_status=record_status,
                # AMC is told to stop at this timeout; an hour's grace covers its own bookkeeping.
                deadline_seconds=config.amazon.amc_execution_timeout_seconds + 3600,
            )
        await self._db(
            "record AMC status",
            lambda: store.set_amc_status(
                lease, final.status, final.status_reason, terminal=True, expire_time=final.expire_time
            ),
        )
        problem = _amc_problem(run, execution_id, final)
        if problem is not None:
            return problem
        claim.final = final
        await self._step_boundary(lease)
        return Step.DOWNLOADING

    async def _download(self, claim: _Claim) -> Step:
        """Step downloading: the result files go to the run's spool directory."""
        services, store, run, lease = self._services, self._store, claim.run, claim.lease
        assert claim.execution_id is not None
        assert claim.final is not None
        directory = claim.directory
        with services.metrics.step("download"):
            files = await services.amc.results.download(
                claim.target,
                claim.tokens,
                claim.execution_id,
                directory,
                columns=[c.name for c in claim.final.output_columns],
            )
        rows = None if run.target_enabled else await asyncio.to_thread(count_rows, files)
        await self._db(
            "mark downloaded",
            lambda: store.mark_downloaded(
                lease, files=len(files.paths), rows=rows, path=str(directory), size=files.size_bytes
            ),
        )
        log.info("run_downloaded", result_files=len(files.paths), result_bytes=files.size_bytes)
        claim.files = files
        return Step.UPLOADING if run.target_enabled else Step.FINISHED

    async def _upload(self, claim: _Claim) -> Step | Ending:
        """Step uploading: the result is loaded into the run's Snowflake table (services.load)."""
        assert claim.files is not None
        await self._step_boundary(claim.lease)
        problem = await upload(
            self._services, self._store, claim.run, claim.lease, claim.files, claim.config, claim.final
        )
        return problem if problem is not None else Step.FINISHED

    async def _results_loaded(self, claim: _Claim) -> Ending:
        """The result is safely loaded: delete it, or keep it for [daemon] keep_results_days."""
        store, run, directory = self._store, claim.run, claim.directory
        days = claim.config.daemon.keep_results_days
        if days <= 0:
            await asyncio.to_thread(shutil.rmtree, directory, True)
            await self._db(
                "forget results", lambda: store.set_results_kept(run.id, path=None, size=None, kept_until=None)
            )
        else:
            until = datetime.now(UTC) + timedelta(days=days)
            await self._db(
                "keep results",
                lambda: store.set_results_kept(run.id, path=str(directory), size=None, kept_until=until),
            )
        return Succeeded()

    # --- AMC's ad-hoc quota, and an execution this claim cannot record --------------------------------------

    async def _take_quota_slot(self, run: RunRecord, lease: RunLease, target: AmcTarget, config: Config) -> int:
        """The slot this POST may take (its row id), or QuotaWait until the next one."""
        store = self._store
        decision = await self._db(
            "quota slot",
            lambda: store.take_quota_slot(
                lease,
                instance_key=target.instance_key,
                amc_instance_id=run.amc_instance_id,
                priority=PRIORITY.get(Trigger(run.trigger), 0),
                limit=config.amc.adhoc_executions_per_day,
                window_seconds=config.amc.quota_window_seconds,
            ),
        )
        self._services.metrics.quota_used(target.instance_key, decision.used)
        if not decision.granted:
            assert decision.next_slot is not None
            raise QuotaWait(
                f"Waiting for AMC's ad-hoc quota on instance {run.amc_instance_id}: {decision.used} of "
                f"{decision.limit} executions used in the last {config.amc.quota_window_seconds / 3600:.0f} h "
                f"({decision.reason}). Next slot at {decision.next_slot.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC. "
                "Nothing failed.",
                decision.next_slot,
            )
        assert decision.slot_id is not None
        return decision.slot_id

    async def _quota_posted(self, slot_id: int | None) -> None:
        """AMC answered the POST: its slot counts from now. Not waited on through an outage: the execution exists
        and must be recorded first; a slot left with the time it was taken frees a little early, and AMC's
        refusal then corrects the count."""
        if slot_id is None:
            return
        try:
            await self._store.quota_posted(slot_id)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            log.warning("amc_quota_slot_not_restamped", error=str(exc), detail="it counts from when it was taken")

    async def _quota_refused(
        self, exc: QuotaRefused, slot_id: int | None, run: RunRecord, target: AmcTarget, config: Config
    ) -> QuotaWait:
        """AMC refused a POST our count let through (another tool shares the instance, or our count was off):
        correct our count, block the instance for every replica until AMC's next slot, and wait for it."""
        limit = config.amc.adhoc_executions_per_day
        detail = exc.detail or str(exc)
        store = self._store

        async def correct() -> quota_store.Refusal:
            return await store.quota_refused(
                slot_id=slot_id,
                instance_key=target.instance_key,
                limit=limit,
                window_seconds=config.amc.quota_window_seconds,
                retry_after_seconds=exc.retry_after_seconds,
                fallback_seconds=config.amc.quota_refusal_backoff_seconds,
                detail=detail,
            )

        refusal = await self._db("quota refused", correct)
        until = refusal.wait.until
        if refusal.first:  # one line per refusal episode, not one per run that meets the block
            log.warning(
                "amc_quota_count_corrected",
                instance=target.instance_key,
                local_used=refusal.local_used,
                amc_used=limit,  # AMC refuses only a full window: it counts at least the limit
                limit=limit,
                until=until.isoformat(),
                wait_basis=refusal.wait.basis,
                detail=detail,
            )
        return QuotaWait(
            f"AMC refused the execution for its ad-hoc quota on instance {run.amc_instance_id} ({detail}) while our "
            f"count said {refusal.local_used} of {limit}; nothing was created. The run waits for AMC's next slot, at "
            f"{until.astimezone(UTC):%Y-%m-%d %H:%M:%S} UTC. Nothing failed.",
            until,
        )

    async def _orphaned(self, run: RunRecord, target: AmcTarget, tokens: UserTokenSource, execution_id: str) -> None:
        """The POST created an execution but this claim can no longer record it. If the run was cancelled,
        cancel the execution; otherwise the holder's search finds and adopts it."""
        state = await self._store.run_state(run.id)
        if state is not None and state[0] == "cancelled":
            try:
                await self._services.amc.executions.cancel(target, tokens, execution_id)
                log.info("amc_execution_cancelled", amc_execution_id=execution_id, detail="the run was cancelled")
            except Exception as exc:  # best effort: it is logged for a person to cancel by hand
                log.error("amc_cancel_failed", amc_execution_id=execution_id, error=str(exc))


# The handler of each step. FINISHED's is the last: the result is loaded (or was not to be), so it is tidied.
HANDLERS: dict[Step, _Handler] = {
    Step.TOKEN: RunPipeline._token,
    Step.SUBMITTING: RunPipeline._submit,
    Step.SUBMITTED: RunPipeline._await_amc,
    Step.DOWNLOADING: RunPipeline._download,
    Step.UPLOADING: RunPipeline._upload,
    Step.FINISHED: RunPipeline._results_loaded,
}


def _amc_problem(run: RunRecord, execution_id: str, final: Execution) -> Fail | None:
    """Why AMC's terminal answer ends the run failed, or None when it offers a result to download."""
    if final.status == "CANCELLED":
        return Fail("amc_cancelled", f"AMC execution {execution_id} was cancelled outside recomamp.")
    if final.status != "SUCCEEDED":
        reason = final.status_reason or "no reason given"
        return Fail(
            "amc_execution_failed",
            f"AMC execution {execution_id} ended {final.status}: {reason}. Fix the schedule's query (or its "
            f"parameters), then run the window again with `recomamp schedules run-now {run.schedule_id} "
            f"--window-start {run.window_start.astimezone(ZoneInfo(run.window_timezone)).date().isoformat()}`.",
        )
    unavailable = final.unavailable_download()
    if unavailable:
        return Fail(
            "amc_output_unavailable", f"AMC cannot offer the result of {execution_id} for download: {unavailable}."
        )
    return None


def count_rows(files: ResultFiles) -> int:
    """Rows in a result (header rows excluded): pyarrow's CSV reader counts in C, quoted newlines included."""
    import pyarrow.csv as pacsv

    total = 0
    for path in files.paths:
        reader = pacsv.open_csv(
            str(path),
            read_options=pacsv.ReadOptions(block_size=1 << 22),
            parse_options=pacsv.ParseOptions(newlines_in_values=True),
            convert_options=pacsv.ConvertOptions(column_types={}, strings_can_be_null=False),
        )
        for batch in reader:
            total += batch.num_rows
    return total

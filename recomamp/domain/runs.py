"""The run state machine's vocabulary and its decisions. Pure: no I/O, no clock.

A run is `pending` (waiting to be claimed; perhaps deferred until `not_before`), `running` (leased by a
replica that works on it), then `succeeded`, `failed` or `cancelled`. A window that a coalesced misfire
passed over is recorded as `skipped`. Within `running`, `step` says how far it got; every step is
persisted before the next begins, so an adopted run continues where the last holder stopped.

Every way a run's coroutine can end is one of the decisions below; the pipeline's error classifier
maps each exception to exactly one of them, so no exception ever crashes a run's task.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Literal

Region = Literal["na", "eu", "fe"]
REGIONS: tuple[Region, ...] = ("na", "eu", "fe")


class Step(StrEnum):
    QUEUED = "queued"
    TOKEN = "token"  # noqa: S105 - a step name, not a secret
    SUBMITTING = "submitting"
    SUBMITTED = "submitted"
    DOWNLOADING = "downloading"
    UPLOADING = "uploading"
    FINISHED = "finished"


# attempt_step while a load waits for one of the replica's Snowflake threads. A claim that dies then never
# started the load, and the next claim, seeing another step than its own, counts no attempt: a restart loop
# must not use up the attempts of the runs queued behind a small thread pool.
LOAD_QUEUED_ATTEMPT_STEP = "uploading, queued for a Snowflake thread"


class RunStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


ACTIVE_STATUSES = (RunStatus.PENDING.value, RunStatus.RUNNING.value)


class Trigger(StrEnum):
    SCHEDULE = "schedule"  # a fire of the schedule's cadence
    MANUAL = "manual"  # `schedules run-now`
    CATCH_UP = "catch_up"  # a missed fire run after downtime (misfire policy catch_up)
    BACKFILL = "backfill"  # `schedules backfill`
    RERUN = "rerun"  # `users authorize --rerun-failed`


# Lower first. A backfill never takes a slot (or a quota slot) a scheduled run is waiting for.
PRIORITY: dict[Trigger, int] = {
    Trigger.SCHEDULE: 0,
    Trigger.MANUAL: 0,
    Trigger.RERUN: 0,
    Trigger.CATCH_UP: 5,
    Trigger.BACKFILL: 10,
}


@dataclass(frozen=True)
class Fail:
    """The run ends `failed`: someone must act; the message says who and what."""

    kind: str
    message: str


@dataclass(frozen=True)
class Defer:
    """A transient failure: the run is released and tried again after a delay, and this claim counts
    as one of its attempts. `delay_seconds` None means [daemon] run_retry_delay_seconds."""

    kind: str
    message: str
    delay_seconds: float | None = None


@dataclass(frozen=True)
class Wait:
    """Nothing failed; the run must wait until `until` (AMC's quota). It costs no attempt."""

    kind: str
    message: str
    until: datetime


@dataclass(frozen=True)
class Lost:
    """Another claim holds the run now (or it was deleted): stop quietly, record nothing."""

    detail: str


@dataclass(frozen=True)
class Cancelled:
    """An operator cancelled the run: it was recorded by the cancel itself; stop quietly."""

    cancelled_by: str | None


Decision = Fail | Defer | Wait | Lost | Cancelled


def give_up_message(
    *, schedule_id: int, attempts: int, max_attempts: int, interruptions: int, step: str, last_error: str | None
) -> str:
    """Why a run that was tried `attempts` times without an outcome is failed now: what really happened."""
    deferred = max(0, attempts - 1 - interruptions)
    parts = []
    if interruptions:
        parts.append(
            f"{interruptions} of its claims ended mid-run without an outcome (the replica holding it stopped or "
            f"stalled past its lease, last at step {step})"
        )
    if deferred:
        parts.append(f"{deferred} ended in a temporary failure" + (f" (the last: {last_error})" if last_error else ""))
    what = "; ".join(parts) if parts else f"it was tried {attempts - 1} times"
    return (
        f"The run was tried {attempts - 1} times without finishing: {what}. Giving up after [daemon] "
        f"max_run_attempts = {max_attempts}. Check the daemon's log for the cause, then run the window again with "
        f"`recomamp schedules run-now {schedule_id} --window-start …`."
    )


# --- where a claim continues, and what its ending records -------------------------------------------------

# The step whose handler a claim runs first, by the step the run's last holder saved. Before the execution id
# is saved, the claim checks the token and submits (a saved marker makes the submit search AMC first, so a
# POST that reached AMC is never sent twice). After it, AMC is asked for the execution's state (at once
# terminal when it had finished) and the result is downloaded and loaded again: a result on disk is the
# spool of the replica that downloaded it, and the Snowflake load ledger keeps a load that was committed from
# landing twice.
RESUME_AT: dict[Step, Step] = {
    Step.QUEUED: Step.TOKEN,
    Step.TOKEN: Step.TOKEN,
    Step.SUBMITTING: Step.TOKEN,
    Step.SUBMITTED: Step.SUBMITTED,
    Step.DOWNLOADING: Step.SUBMITTED,
    Step.UPLOADING: Step.SUBMITTED,
}


def resume_step(saved: str) -> Step:
    """The first step a claim runs for a run saved at `saved`."""
    step = RESUME_AT.get(Step(saved))
    if step is None:
        raise ValueError(f"a run at step {saved!r} has nothing left to do")
    return step


@dataclass(frozen=True)
class Succeeded:
    """Every step is done: the result is in AMC's hands no longer, and loaded where the schedule says."""


Ending = Succeeded | Decision


class OutcomeStatus(StrEnum):
    """How one claim of a run ended, as the daemon counts it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DEFERRED = "deferred"  # released to be tried again after a delay: an attempt spent
    WAITING = "waiting"  # released until AMC's quota frees a slot: no attempt spent
    LOST = "lost"  # another claim holds it now (or it was deleted): nothing recorded


@dataclass(frozen=True)
class RunOutcome:
    run_id: int
    status: OutcomeStatus
    error_kind: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Finish:
    """Record the run's end: succeeded or failed, counted on its schedule."""

    status: OutcomeStatus  # SUCCEEDED or FAILED
    error_kind: str | None
    message: str | None


@dataclass(frozen=True)
class Release:
    """Give the run back, to be claimed again after `delay_seconds`."""

    status: OutcomeStatus  # DEFERRED or WAITING
    kind: str
    message: str
    delay_seconds: float
    until: datetime | None = None  # WAITING: the time AMC's quota frees a slot
    # WAITING: the run's attempt count goes back to what it was before this claim (waiting costs no attempt).
    restores_attempt: bool = False


@dataclass(frozen=True)
class Leave:
    """Record nothing: the run is another claim's now, or was cancelled (the cancel recorded it)."""


Verdict = Finish | Release | Leave


def verdict(
    ending: Ending, *, attempt: int, max_attempts: int, once: bool, retry_delay_seconds: float, now: datetime
) -> Verdict:
    """What one claim's ending records. A temporary failure is retried, unless the attempts are used up or
    the run is `run --once` (which does not wait): then it fails, saying why."""
    if isinstance(ending, Defer) and (once or attempt >= max_attempts):
        if once:
            ending = Fail(ending.kind, f"{ending.message} (`run --once` does not wait to retry.)")
        else:
            ending = Fail(
                ending.kind,
                f"{ending.message} Giving up after [daemon] max_run_attempts = {max_attempts} attempts.",
            )
    match ending:
        case Succeeded():
            return Finish(OutcomeStatus.SUCCEEDED, None, None)
        case Fail(kind=kind, message=message):
            return Finish(OutcomeStatus.FAILED, kind, message)
        case Defer(kind=kind, message=message, delay_seconds=delay_seconds):
            delay = delay_seconds if delay_seconds is not None else retry_delay_seconds
            full = f"{message} Attempt {attempt} of {max_attempts}; it will be tried again in {delay:.0f} s."
            return Release(OutcomeStatus.DEFERRED, kind, full, delay)
        case Wait(kind=kind, message=message, until=until):
            delay = max(0.0, (until - now).total_seconds())
            return Release(OutcomeStatus.WAITING, kind, message, delay, until=until, restores_attempt=True)
        case Lost() | Cancelled():
            return Leave()
    raise AssertionError(f"unhandled ending {ending!r}")  # pragma: no cover


@dataclass
class Tally:
    """Counts only: a daemon that runs for months keeps no per-run record in memory."""

    succeeded: int = 0
    failed: int = 0
    deferred: int = 0
    waiting: int = 0
    cancelled: int = 0
    other: int = 0

    def add(self, outcome: RunOutcome) -> None:
        match outcome.status:
            case OutcomeStatus.SUCCEEDED:
                self.succeeded += 1
            case OutcomeStatus.FAILED:
                self.failed += 1
            case OutcomeStatus.DEFERRED:
                self.deferred += 1
            case OutcomeStatus.WAITING:
                self.waiting += 1
            case OutcomeStatus.CANCELLED:
                self.cancelled += 1
            case OutcomeStatus.LOST:
                self.other += 1

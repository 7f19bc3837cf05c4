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

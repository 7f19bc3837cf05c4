"""When AMC's ad-hoc quota lets the next execution in. No I/O here.

AMC counts a POST when it receives it; we stamp our slot when its answer came back, which is later, so our
count never frees a slot before AMC does (stamping when the slot was taken, before the POST left, freed it
too early by however long the POST took: a refusal at every window's edge on a loaded machine).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

# A backfill that leaves the last slot to a waiting scheduled run looks again after this (at most).
KEPT_SLOT_RECHECK_SECONDS = 60.0


@dataclass(frozen=True)
class RefusalWait:
    """How long a run AMC refused for its quota waits, and why that long."""

    until: datetime
    basis: str  # "retry_after", "our_oldest_submission", "fallback" or "block_in_force"


def next_slot_after_refusal(
    *,
    now: datetime,
    local_used: int,
    local_oldest: datetime | None,
    window_seconds: float,
    retry_after_seconds: float | None,
    fallback_seconds: float,
) -> RefusalWait:
    """AMC said the window is full while our count had room.

    AMC's word comes first (Retry-After). Otherwise the window frees a slot for certain when our own oldest
    submission in it ages out (AMC counted that one too); executions of another tool may free one earlier, but
    we cannot see them. With none of ours in the window there is nothing to count from: look again after the
    fallback, never after more than one window.
    """
    if retry_after_seconds is not None:
        return RefusalWait(now + timedelta(seconds=max(0.0, retry_after_seconds)), "retry_after")
    if local_used > 0 and local_oldest is not None:
        return RefusalWait(max(now, local_oldest + timedelta(seconds=window_seconds)), "our_oldest_submission")
    return RefusalWait(now + timedelta(seconds=min(fallback_seconds, window_seconds)), "fallback")


def kept_slot_recheck_at(now: datetime, window_seconds: float) -> datetime:
    """A backfill that left the last slot to a scheduled run looks again: within a minute, and within the window."""
    return now + timedelta(seconds=min(KEPT_SLOT_RECHECK_SECONDS, window_seconds))

"""Alerts: which state changes become events for people, and what each says. Pure.

Events are written to the outbox in the same transaction as the change they report, and delivered by
the notification sender to the webhooks that subscribe to them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any


class EventName(StrEnum):
    USER_NEEDS_REAUTH = "user_needs_reauth"
    SCHEDULE_AUTO_PAUSED = "schedule_auto_paused"
    RUN_FAILED = "run_failed"
    RUN_RECOVERED = "run_recovered"
    QUOTA_EXHAUSTED = "quota_exhausted"
    SCHEDULE_LATE = "schedule_late"
    SCHEDULE_RECOVERED = "schedule_recovered"
    TEST = "test"


EVENT_NAMES = tuple(name.value for name in EventName)


@dataclass(frozen=True)
class Event:
    name: EventName
    # What rate limits and the once-per-mark rule group by: a schedule for run events, a user for reauth.
    subject: str
    text: str  # one line a person reads in Slack or an email
    details: dict[str, Any] = field(default_factory=dict)

    def payload(self) -> dict[str, Any]:
        return {"event": self.name.value, "text": self.text, **self.details}


@dataclass(frozen=True)
class RunNotice:
    """What an alert about a run names."""

    run_id: int
    schedule_id: int
    schedule_name: str
    user_email: str
    window_start: datetime
    window_end: datetime


@dataclass(frozen=True)
class OutcomeFacts:
    """A run's recorded outcome and what it did to its schedule's failure count."""

    status: str
    error_kind: str | None
    error_message: str | None
    consecutive_failures: int
    paused_now: bool
    failures_before: int
    threshold: int

    @property
    def recovered(self) -> bool:
        return self.status == "succeeded" and self.failures_before > 0


def _run_details(notice: RunNotice) -> dict[str, Any]:
    return {
        "run_id": notice.run_id,
        "schedule_id": notice.schedule_id,
        "schedule_name": notice.schedule_name,
        "user_email": notice.user_email,
        "window_start": notice.window_start.isoformat(),
        "window_end": notice.window_end.isoformat(),
    }


def events_for_outcome(notice: RunNotice, outcome: OutcomeFacts) -> list[Event]:
    subject = f"schedule:{notice.schedule_id}"
    label = f"schedule {notice.schedule_id} ({notice.schedule_name}) of {notice.user_email}"
    events: list[Event] = []
    if outcome.status == "failed":
        events.append(
            Event(
                EventName.RUN_FAILED,
                subject,
                f"recomamp: run {notice.run_id} of {label} failed ({outcome.error_kind}): {outcome.error_message}",
                {**_run_details(notice), "error_kind": outcome.error_kind, "message": outcome.error_message},
            )
        )
    if outcome.paused_now:
        events.append(
            Event(
                EventName.SCHEDULE_AUTO_PAUSED,
                subject,
                f"recomamp: {label} was paused after {outcome.consecutive_failures} consecutive failures; "
                f"fix the cause, then `recomamp schedules resume {notice.schedule_id}`",
                {**_run_details(notice), "consecutive_failures": outcome.consecutive_failures},
            )
        )
    if outcome.recovered:
        events.append(
            Event(
                EventName.RUN_RECOVERED,
                subject,
                f"recomamp: {label} succeeded again (run {notice.run_id}) after {outcome.failures_before} "
                "failed run(s)",
                {**_run_details(notice), "failures_before": outcome.failures_before},
            )
        )
    return events


def reauth_event(user_email: str, reason: str) -> Event:
    return Event(
        EventName.USER_NEEDS_REAUTH,
        f"user:{user_email.lower()}",
        f"recomamp: {user_email} needs to re-authenticate via Amazon OAuth ({reason}). Their runs fail until "
        f"an operator runs `recomamp users authorize {user_email} --rerun-failed`.",
        {
            "user_email": user_email,
            "reason": reason,
            "command": f"recomamp users authorize {user_email} --rerun-failed",
        },
    )


def quota_event(instance_key: str, used: int, limit: int, next_slot: datetime, waiting_run: int) -> Event:
    return Event(
        EventName.QUOTA_EXHAUSTED,
        f"quota:{instance_key}",
        f"recomamp: AMC instance {instance_key} used its {limit} ad-hoc executions of the last 24 h ({used}); "
        f"runs wait for the next slot at {next_slot.isoformat()} (run {waiting_run} first).",
        {"instance": instance_key, "used": used, "limit": limit, "next_slot": next_slot.isoformat()},
    )


@dataclass(frozen=True)
class LatenessNotice:
    """What an alert about a schedule's freshness names."""

    schedule_id: int
    schedule_name: str
    user_email: str
    newest_end: datetime | None  # the newest loaded window's end (None: nothing loaded yet)
    deadline: datetime | None


def _lateness_details(notice: LatenessNotice) -> dict[str, Any]:
    return {
        "schedule_id": notice.schedule_id,
        "schedule_name": notice.schedule_name,
        "user_email": notice.user_email,
        "newest_window_end": notice.newest_end.isoformat() if notice.newest_end else None,
        "deadline": notice.deadline.isoformat() if notice.deadline else None,
        "command": f"recomamp schedules coverage {notice.schedule_id}",
    }


def late_event(notice: LatenessNotice) -> Event:
    """Once per lateness episode, at its start."""
    label = f"schedule {notice.schedule_id} ({notice.schedule_name}) of {notice.user_email}"
    newest = (
        f"its newest loaded window ends {notice.newest_end:%Y-%m-%d %H:%M %Z}"
        if notice.newest_end
        else ("nothing of it is loaded yet")
    )
    return Event(
        EventName.SCHEDULE_LATE,
        f"schedule:{notice.schedule_id}",
        f"recomamp: {label} is late: {newest}; see why with `recomamp schedules coverage {notice.schedule_id}`, "
        f"fill the holes with `recomamp schedules backfill {notice.schedule_id} --missing`",
        _lateness_details(notice),
    )


def recovered_event(notice: LatenessNotice, late_since: datetime) -> Event:
    """Once per lateness episode, when a load ends it."""
    label = f"schedule {notice.schedule_id} ({notice.schedule_name}) of {notice.user_email}"
    newest = f"{notice.newest_end:%Y-%m-%d %H:%M %Z}" if notice.newest_end else "-"
    return Event(
        EventName.SCHEDULE_RECOVERED,
        f"schedule:{notice.schedule_id}",
        f"recomamp: {label} is fresh again (late since {late_since:%Y-%m-%d %H:%M %Z}); its newest loaded window "
        f"ends {newest}",
        {**_lateness_details(notice), "late_since": late_since.isoformat()},
    )

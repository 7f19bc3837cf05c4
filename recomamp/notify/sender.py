"""The notification sender: takes due events from the outbox (SKIP LOCKED, so each is delivered once over
all replicas), delivers each to the webhooks that want it, and retries with backoff. An event that cannot be
delivered after [notify] max_attempts is marked undeliverable and logged; it never blocks a run."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from recomamp.config import Config, WebhookTarget
from recomamp.logs import get_logger
from recomamp.notify.webhooks import deliver
from recomamp.store import outbox
from recomamp.store.db import Connection, Queryable, is_connection_error

log = get_logger(__name__)

BATCH = 20
# How long a sender holds an event it took: one that dies mid-delivery leaves it due again after that.
HOLD_SECONDS = 120.0
IDLE_SECONDS = 1.0


def wants(target: WebhookTarget, event: outbox.StoredEvent) -> bool:
    if event.event == "test":
        return True
    if event.event not in target.events:
        return False
    if event.event == "run_failed" and target.run_failed_kinds:
        return str(event.payload.get("error_kind")) in target.run_failed_kinds
    return True


def retry_wait(waits: tuple[float, ...], attempts: int) -> float:
    return waits[min(attempts, len(waits)) - 1] if waits else 60.0


async def rate_limited(connection: Queryable, target: WebhookTarget, event: outbox.StoredEvent) -> bool:
    """run_failed: at most one per schedule per target.run_failed_min_interval_seconds."""
    if event.event != "run_failed" or not event.subject or target.run_failed_min_interval_seconds <= 0:
        return False
    last = await outbox.last_delivered(connection, event.event, event.subject, event.id)
    return last is not None and datetime.now(UTC) - last < timedelta(seconds=target.run_failed_min_interval_seconds)


async def send_due(
    connection: Connection, session: aiohttp.ClientSession, config: Config, *, observe: Callable[[str, str], None]
) -> int:
    """One pass: returns how many events it took."""
    events = await outbox.take_due(connection, limit=BATCH, hold_seconds=HOLD_SECONDS)
    targets = config.notify.webhook
    for event in events:
        pending = []
        for target in targets:
            if target.name in event.delivered_to or not wants(target, event):
                continue
            if await rate_limited(connection, target, event):
                log.info("notification_rate_limited", notification_event=event.event, target=target.name)
                observe(target.name, "rate_limited")
                continue
            pending.append(target)
        body = {"id": event.id, **event.payload}
        answers = await asyncio.gather(*(deliver(session, target, body) for target in pending))
        delivered = [target.name for target, answer in zip(pending, answers, strict=True) if answer.ok]
        failed = [(target, answer) for target, answer in zip(pending, answers, strict=True) if not answer.ok]
        for target, answer in zip(pending, answers, strict=True):
            observe(target.name, "delivered" if answer.ok else "failed")
            if answer.ok:
                log.info(
                    "notification_delivered",
                    notification_event=event.event,
                    notification_id=event.id,
                    target=target.name,
                    attempt=event.attempts,
                )
        give_up = bool(failed) and event.attempts >= config.notify.max_attempts
        wait = retry_wait(config.notify.retry_waits, event.attempts)
        for target, answer in failed:
            (log.error if give_up else log.warning)(
                "notification_undeliverable" if give_up else "notification_delivery_failed",
                notification_event=event.event,
                notification_id=event.id,
                target=target.name,
                url=target.safe_url,
                attempt=event.attempts,
                max_attempts=config.notify.max_attempts,
                answer=answer.detail,
                retry_in_seconds=None if give_up else wait,
            )
        await outbox.record_delivery(
            connection,
            event.id,
            delivered_to=delivered,
            done=not failed,
            error="; ".join(f"{t.name}: {a.detail}" for t, a in failed) or None,
            retry_in_seconds=wait,
            give_up=give_up,
        )
    return len(events)


async def run_sender(
    pool: asyncpg.Pool,
    config: Callable[[], Config],
    *,
    observe: Callable[[str, str], None],
    on_database_error: Callable[[BaseException], None],
) -> None:
    """The daemon's `notifier` task: forever, a pass every second (at once again while there is more)."""
    failing = False
    async with aiohttp.ClientSession() as session:
        while True:
            taken = 0
            current = config()
            if current.notify.webhook:
                try:
                    async with pool.acquire() as connection:
                        taken = await send_due(connection, session, current, observe=observe)
                    if failing:
                        log.info("notifications_sending_again")
                    failing = False
                except Exception as exc:
                    if is_connection_error(exc):
                        on_database_error(exc)
                    elif not failing:
                        # Alerts must never stop runs: a bug here is logged once, and the events wait in the
                        # outbox (each is held for HOLD_SECONDS, then due again).
                        log.error("notifications_failed", exc_info=exc, detail="the alerts wait in the outbox")
                        failing = True
            if taken < BATCH:
                await asyncio.sleep(IDLE_SECONDS)

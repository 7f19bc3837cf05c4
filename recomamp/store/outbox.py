"""The notification outbox: events written with the state change they report, taken by senders with
SKIP LOCKED so that each is delivered once over all replicas."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recomamp.domain.alerts import Event
from recomamp.store.db import Connection, Queryable

INSERT_EVENT = "INSERT INTO notifications (event, subject, payload) VALUES ($1, $2, $3)"

# An event is held by one sender for `$2` seconds (next_attempt_at moves on); a sender that dies
# mid-delivery leaves it due again after that.
TAKE_DUE = """
UPDATE notifications SET next_attempt_at = now() + make_interval(secs => $2), attempts = attempts + 1
WHERE id IN (
    SELECT id FROM notifications
    WHERE done_at IS NULL AND failed_at IS NULL AND next_attempt_at <= now()
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
RETURNING id, event, subject, payload, created_at, attempts, delivered_to
"""

RECORD_DELIVERED = """
UPDATE notifications
SET delivered_to = COALESCE((SELECT array_agg(DISTINCT t) FROM unnest(delivered_to || $2::text[]) t), '{}'),
    done_at = CASE WHEN $3 THEN now() ELSE done_at END, last_error = $4,
    next_attempt_at = CASE WHEN $3 THEN next_attempt_at ELSE now() + make_interval(secs => $5) END,
    failed_at = CASE WHEN NOT $3 AND $6 THEN now() ELSE failed_at END
WHERE id = $1
"""

# The last delivery of an event of this name and subject: rate limits per schedule.
LAST_DELIVERED = """
SELECT max(done_at) FROM notifications
WHERE event = $1 AND subject = $2 AND done_at IS NOT NULL AND id <> $3 AND cardinality(delivered_to) > 0
"""

PRUNE = """
DELETE FROM notifications
WHERE done_at < now() - make_interval(days => $1) OR failed_at < now() - make_interval(days => $1)
"""

COUNTS = """
SELECT count(*) FILTER (WHERE done_at IS NULL AND failed_at IS NULL) AS pending,
       count(*) FILTER (WHERE failed_at IS NOT NULL) AS failed
FROM notifications
"""


@dataclass(frozen=True)
class StoredEvent:
    id: int
    event: str
    subject: str | None
    payload: dict[str, Any]
    created_at: datetime
    attempts: int
    delivered_to: list[str]


async def insert_events(connection: Queryable, events: Sequence[Event]) -> None:
    for event in events:
        await connection.execute(INSERT_EVENT, event.name.value, event.subject, event.payload())


async def take_due(connection: Connection, *, limit: int, hold_seconds: float) -> list[StoredEvent]:
    async with connection.transaction():
        rows = await connection.fetch(TAKE_DUE, limit, hold_seconds)
    return [
        StoredEvent(
            id=row["id"],
            event=row["event"],
            subject=row["subject"],
            payload=row["payload"] if isinstance(row["payload"], dict) else json.loads(row["payload"]),
            created_at=row["created_at"],
            attempts=row["attempts"],
            delivered_to=list(row["delivered_to"] or []),
        )
        for row in rows
    ]


async def record_delivery(
    connection: Queryable,
    event_id: int,
    *,
    delivered_to: Sequence[str],
    done: bool,
    error: str | None,
    retry_in_seconds: float,
    give_up: bool,
) -> None:
    await connection.execute(RECORD_DELIVERED, event_id, list(delivered_to), done, error, retry_in_seconds, give_up)


async def last_delivered(connection: Queryable, event: str, subject: str, excluding: int) -> datetime | None:
    value: datetime | None = await connection.fetchval(LAST_DELIVERED, event, subject, excluding)
    return value


async def prune(connection: Queryable, *, keep_days: int) -> int:
    status = await connection.execute(PRUNE, keep_days)
    return int(status.split()[-1])


async def counts(connection: Queryable) -> tuple[int, int]:
    row = await connection.fetchrow(COUNTS)
    assert row is not None
    return int(row["pending"]), int(row["failed"])

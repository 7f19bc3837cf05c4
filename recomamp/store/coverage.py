"""What coverage and freshness read (the runs recorded per window, each schedule's newest loaded window) and
write (a schedule's lateness episode, with its event in the same transaction)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from recomamp.domain.alerts import Event
from recomamp.domain.coverage import RunFact
from recomamp.store.db import Connection, Queryable
from recomamp.store.outbox import insert_events

# Every run recorded for the windows that start in [$2, $3]: skipped ones too (a coalesced misfire).
WINDOW_RUNS = """
SELECT id, schedule_id, window_start, window_end, status, error_kind, wait_reason,
       COALESCE(snowflake_rows, result_rows) AS rows, COALESCE(snowflake_finished_at, finished_at) AS loaded_at
FROM schedule_runs
WHERE schedule_id = ANY($1::bigint[]) AND window_start >= $2 AND window_start <= $3
ORDER BY schedule_id, window_start, id
"""

# The oldest window a schedule has a run for: where its coverage starts by default.
OLDEST_WINDOW = "SELECT min(window_start) FROM schedule_runs WHERE schedule_id = $1"

# Each schedule of a user (or every active schedule) with its cadence, its grace and lateness episode, and
# its newest loaded window (through the partial index of migration 0008: one index probe per schedule).
SCHEDULES_FRESHNESS = """
SELECT s.id, s.name, u.email AS user_email, s.is_active, s.preset, s.timezone, s.time_of_day, s.day_of_week,
       s.day_of_month, s.cron_expression, s.lookback_days, s.data_lag_days, s.created_at,
       s.freshness_grace_seconds, s.late_since, loaded.window_start AS newest_start, loaded.window_end AS newest_end
FROM workflow_schedules s JOIN users u ON u.id = s.owner_id
LEFT JOIN LATERAL (
    SELECT window_start, window_end FROM schedule_runs r
    WHERE r.schedule_id = s.id AND r.status = 'succeeded' AND r.window_end IS NOT NULL
    ORDER BY r.window_end DESC LIMIT 1
) loaded ON TRUE
WHERE ($1::text IS NULL OR lower(u.email) = lower($1)) AND ($2::bigint IS NULL OR s.id = $2)
  AND ($3 OR s.is_active)
ORDER BY s.id
"""

USER_EXISTS = "SELECT EXISTS (SELECT 1 FROM users WHERE lower(email) = lower($1))"

# The lateness episode flips once: the replica whose UPDATE changes the row writes the event; the others
# find it already flipped, so one `schedule_late` (and one `schedule_recovered`) per episode.
MARK_LATE = "UPDATE workflow_schedules SET late_since = $2 WHERE id = $1 AND late_since IS NULL RETURNING id"
MARK_RECOVERED = """
UPDATE workflow_schedules s SET late_since = NULL
FROM (SELECT id, late_since FROM workflow_schedules WHERE id = $1 FOR UPDATE) before
WHERE s.id = before.id AND s.late_since IS NOT NULL
RETURNING before.late_since
"""

SET_GRACE = "UPDATE workflow_schedules SET freshness_grace_seconds = $2, updated_at = now() WHERE id = $1 RETURNING id"

LATE_SCHEDULES = """
SELECT s.id, s.name, u.email AS user_email, s.late_since
FROM workflow_schedules s JOIN users u ON u.id = s.owner_id
WHERE s.late_since IS NOT NULL AND s.is_active ORDER BY s.late_since, s.id
"""


def _fact(row: Any) -> RunFact:
    return RunFact(
        run_id=row["id"],
        window_start=row["window_start"],
        window_end=row["window_end"],
        status=row["status"],
        error_kind=row["error_kind"],
        wait_reason=row["wait_reason"],
        rows=row["rows"],
        loaded_at=row["loaded_at"],
    )


async def window_runs(
    connection: Queryable, schedule_ids: Sequence[int], first: datetime, last: datetime
) -> dict[int, list[RunFact]]:
    """The runs of each schedule whose window starts in [first, last]."""
    found: dict[int, list[RunFact]] = {schedule_id: [] for schedule_id in schedule_ids}
    for row in await connection.fetch(WINDOW_RUNS, list(schedule_ids), first, last):
        found[row["schedule_id"]].append(_fact(row))
    return found


async def oldest_window(connection: Queryable, schedule_id: int) -> datetime | None:
    value: datetime | None = await connection.fetchval(OLDEST_WINDOW, schedule_id)
    return value


async def schedules_freshness(
    connection: Queryable,
    *,
    user_email: str | None = None,
    schedule_id: int | None = None,
    include_paused: bool = False,
) -> list[dict[str, Any]]:
    rows = await connection.fetch(SCHEDULES_FRESHNESS, user_email, schedule_id, include_paused)
    return [dict(row) for row in rows]


async def user_exists(connection: Queryable, email: str) -> bool:
    return bool(await connection.fetchval(USER_EXISTS, email))


async def mark_late(connection: Connection, schedule_id: int, since: datetime, events: Sequence[Event]) -> bool:
    """Start a lateness episode and write its events, once: False when another replica started it first."""
    async with connection.transaction():
        if await connection.fetchval(MARK_LATE, schedule_id, since) is None:
            return False
        await insert_events(connection, events)
    return True


async def mark_recovered(connection: Connection, schedule_id: int, events_for: Any) -> bool:
    """End a lateness episode and write its events (built from when it started), once."""
    async with connection.transaction():
        late_since = await connection.fetchval(MARK_RECOVERED, schedule_id)
        if late_since is None:
            return False
        await insert_events(connection, events_for(late_since))
    return True


async def set_grace(connection: Queryable, schedule_id: int, grace_seconds: int | None) -> bool:
    return await connection.fetchval(SET_GRACE, schedule_id, grace_seconds) is not None


async def late_schedules(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(LATE_SCHEDULES)]

"""Schedules: claiming the due ones into runs, and what the CLI does to them."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recomamp.domain.schedules import Cadence, Preset, catch_up, window_for
from recomamp.logs import get_logger
from recomamp.store.db import Connection

log = get_logger(__name__)

WAKEUP_CHANNEL = "recomamp_wakeup"

CADENCE_COLUMNS = (
    "preset, timezone, time_of_day, day_of_week, day_of_month, cron_expression, lookback_days, data_lag_days"
)

# The poll's query: an index range scan on workflow_schedules_due. SKIP LOCKED lets replicas claim
# disjoint batches at once; the row locks hold until the runs are inserted and next_run_at has moved.
SELECT_DUE = f"""
SELECT id, instance_id, next_run_at, {CADENCE_COLUMNS}
FROM workflow_schedules
WHERE is_active AND next_run_at <= $1
ORDER BY next_run_at
LIMIT $2
FOR UPDATE SKIP LOCKED
"""

INSERT_RUNS = """
INSERT INTO schedule_runs (
    schedule_id, instance_id, scheduled_for, missed_fires_skipped, window_start, window_end, window_timezone,
    snowflake_status
)
SELECT r.schedule_id, r.instance_id, r.scheduled_for, r.skipped, r.window_start, r.window_end, r.window_timezone,
       CASE WHEN s.snowflake_enabled THEN 'pending' ELSE 'skipped' END
FROM unnest($1::bigint[], $2::bigint[], $3::timestamptz[], $4::int[], $5::timestamptz[], $6::timestamptz[],
            $7::text[]) AS r(schedule_id, instance_id, scheduled_for, skipped, window_start, window_end,
                             window_timezone)
JOIN workflow_schedules s ON s.id = r.schedule_id
ON CONFLICT (schedule_id, scheduled_for) DO NOTHING
"""

MOVE_NEXT_RUN = """
UPDATE workflow_schedules s SET next_run_at = m.next_run_at, updated_at = now()
FROM unnest($1::bigint[], $2::timestamptz[]) AS m(id, next_run_at)
WHERE s.id = m.id
"""

PAUSE_BROKEN = """
UPDATE workflow_schedules SET is_active = FALSE, paused_reason = $2, updated_at = now() WHERE id = $1
"""


def cadence_from_row(row: Any) -> Cadence:
    return Cadence(
        preset=Preset(row["preset"]),
        timezone=row["timezone"],
        time_of_day=row["time_of_day"],
        day_of_week=row["day_of_week"],
        day_of_month=row["day_of_month"],
        cron_expression=row["cron_expression"],
        lookback_days=row["lookback_days"],
        data_lag_days=row["data_lag_days"],
    )


@dataclass(frozen=True)
class ClaimOutcome:
    schedules: int
    runs_created: int
    fires_skipped: int


async def claim_due(connection: Connection, now: datetime, batch_size: int) -> ClaimOutcome:
    """Turn one batch of due schedules into runs, and move each schedule's next_run_at. One transaction."""
    async with connection.transaction():
        rows = await connection.fetch(SELECT_DUE, now, batch_size)
        if not rows:
            return ClaimOutcome(0, 0, 0)
        columns: list[list[Any]] = [[] for _ in range(7)]
        moves: tuple[list[int], list[datetime]] = ([], [])
        skipped_total = 0
        for row in rows:
            try:
                cadence = cadence_from_row(row)
                plan = catch_up(cadence, row["next_run_at"], now)
                window = window_for(cadence, plan.fire_at)
            except ValueError as exc:
                # A schedule that cannot fire (edited by hand in the database) must not block the others.
                log.error("schedule_cannot_fire", schedule_id=row["id"], error=str(exc))
                await connection.execute(PAUSE_BROKEN, row["id"], f"paused: {exc}")
                continue
            if plan.skipped:
                log.warning(
                    "missed_fires_coalesced",
                    schedule_id=row["id"],
                    skipped=plan.skipped,
                    fire_at=plan.fire_at.isoformat(),
                )
            skipped_total += plan.skipped
            for column, value in zip(
                columns,
                (
                    row["id"],
                    row["instance_id"],
                    plan.fire_at,
                    plan.skipped,
                    window.start,
                    window.end,
                    window.timezone,
                ),
                strict=True,
            ):
                column.append(value)
            moves[0].append(row["id"])
            moves[1].append(plan.next_run_at)
        status = await connection.execute(INSERT_RUNS, *columns)
        await connection.execute(MOVE_NEXT_RUN, *moves)
        created = int(status.split()[-1])
        return ClaimOutcome(len(rows), created, skipped_total)


async def claim_all_due(connection: Connection, now: datetime, batch_size: int) -> ClaimOutcome:
    schedules = runs = skipped = 0
    while True:
        outcome = await claim_due(connection, now, batch_size)
        schedules += outcome.schedules
        runs += outcome.runs_created
        skipped += outcome.fires_skipped
        if outcome.schedules < batch_size:
            return ClaimOutcome(schedules, runs, skipped)

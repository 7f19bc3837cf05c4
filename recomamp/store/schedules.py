"""Schedules: turning the due ones into runs (fetch, plan off the event loop, apply)."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import UTC, datetime, time
from typing import Any

from recomamp.domain.misfires import FirePlan, MisfirePolicy, PlannedFire, plan_due
from recomamp.domain.models import ScheduleCreateCustom, ScheduleCreatePreset, ScheduleResponse
from recomamp.domain.runs import PRIORITY, Trigger
from recomamp.domain.schedules import Cadence, Preset
from recomamp.logs import get_logger
from recomamp.store.catalog import NotFound
from recomamp.store.db import Connection, Queryable
from recomamp.store.runs import LeaseOnCreate, NewRun, RunLease, insert_runs, lease_room

log = get_logger(__name__)

WAKEUP_CHANNEL = "recomamp_wakeup"

CADENCE_COLUMNS = (
    "preset, timezone, time_of_day, day_of_week, day_of_month, cron_expression, lookback_days, data_lag_days"
)

# The poll's query: an index range scan on workflow_schedules_due. No lock is taken here: plans are
# computed off the event loop, then applied in a short transaction that re-checks each schedule.
SELECT_DUE = f"""
SELECT id, instance_id, next_run_at, misfire_policy, catch_up_limit, {CADENCE_COLUMNS}
FROM workflow_schedules
WHERE is_active AND next_run_at <= $1 AND (next_run_at, id) > ($3, $4)
ORDER BY next_run_at, id
LIMIT $2
"""

# The schedules a plan was computed for, still as they were (SKIP LOCKED: another replica has the rest).
LOCK_PLANNED = """
SELECT id, next_run_at FROM workflow_schedules
WHERE id = ANY($1::bigint[]) AND is_active
FOR UPDATE SKIP LOCKED
"""

MOVE_NEXT_RUN = """
UPDATE workflow_schedules s SET next_run_at = m.next_run_at, updated_at = now()
FROM unnest($1::bigint[], $2::timestamptz[]) AS m(id, next_run_at)
WHERE s.id = m.id
"""

PAUSE_BROKEN = """
UPDATE workflow_schedules SET is_active = FALSE, paused_reason = $2, updated_at = now() WHERE id = $1
"""

NEXT_DUE = "SELECT min(next_run_at) FROM workflow_schedules WHERE is_active"


def cadence_from_row(row: Any) -> Cadence:
    return _cadence(
        row["preset"],
        row["timezone"],
        row["time_of_day"],
        row["day_of_week"],
        row["day_of_month"],
        row["cron_expression"],
        row["lookback_days"],
        row["data_lag_days"],
    )


@functools.lru_cache(maxsize=4096)
def _cadence(
    preset: str,
    timezone: str,
    time_of_day: time | None,
    day_of_week: int | None,
    day_of_month: int | None,
    cron_expression: str | None,
    lookback_days: int | None,
    data_lag_days: int,
) -> Cadence:
    """Validated once per distinct cadence (bounded): thousands of schedules share a handful of cadences."""
    return Cadence(
        preset=Preset(preset),
        timezone=timezone,
        time_of_day=time_of_day,
        day_of_week=day_of_week,
        day_of_month=day_of_month,
        cron_expression=cron_expression,
        lookback_days=lookback_days,
        data_lag_days=data_lag_days,
    )


@dataclass(frozen=True)
class DueSchedule:
    id: int
    instance_row_id: int
    next_run_at: datetime
    cadence: Cadence | None  # None: the stored cadence cannot fire (edited by hand)
    problem: str | None
    misfire_policy: MisfirePolicy
    catch_up_limit: int


@dataclass(frozen=True)
class SchedulePlan:
    schedule_id: int
    instance_row_id: int
    due_at: datetime  # next_run_at the plan was computed from
    plan: FirePlan | None
    problem: str | None = None


@dataclass(frozen=True)
class ClaimOutcome:
    schedules: int
    runs_created: int
    fires_skipped: int
    leases: list[RunLease] = field(default_factory=list)  # runs created already leased: start them now


_BEFORE_ALL = (datetime.min.replace(tzinfo=UTC), 0)
_POLICIES = {policy.value: policy for policy in MisfirePolicy}


async def fetch_due(
    connection: Queryable, now: datetime, limit: int, *, after: tuple[datetime, int] = _BEFORE_ALL
) -> list[DueSchedule]:
    """Due schedules in (next_run_at, id) order, after `after`: disjoint batches, without locks."""
    due: list[DueSchedule] = []
    for row in await connection.fetch(SELECT_DUE, now, limit, after[0], after[1]):
        try:
            cadence: Cadence | None = cadence_from_row(row)
            problem = None
        except ValueError as exc:
            cadence, problem = None, str(exc)
        due.append(
            DueSchedule(
                row["id"],
                row["instance_id"],
                row["next_run_at"],
                cadence,
                problem,
                _POLICIES[row["misfire_policy"]],
                row["catch_up_limit"],
            )
        )
    return due


def plan_schedules(due: list[DueSchedule], now: datetime) -> list[SchedulePlan]:
    """Pure and bounded (see domain.misfires); the daemon runs it in a thread, never on the event loop."""
    plans = []
    for schedule in due:
        if schedule.cadence is None:
            plans.append(
                SchedulePlan(schedule.id, schedule.instance_row_id, schedule.next_run_at, None, schedule.problem)
            )
            continue
        try:
            plan = plan_due(
                schedule.cadence, schedule.next_run_at, now, schedule.misfire_policy, schedule.catch_up_limit
            )
        except ValueError as exc:
            plans.append(SchedulePlan(schedule.id, schedule.instance_row_id, schedule.next_run_at, None, str(exc)))
            continue
        plans.append(SchedulePlan(schedule.id, schedule.instance_row_id, schedule.next_run_at, plan))
    return plans


async def apply_plans(
    connection: Connection, plans: list[SchedulePlan], lease: LeaseOnCreate | None = None
) -> ClaimOutcome:
    """Create the planned runs and move each schedule's next_run_at, in one transaction. A schedule that
    another replica claimed meanwhile (locked, or next_run_at moved) is left alone. With `lease`, the runs
    this replica has room for are created already leased to it."""
    if not plans:
        return ClaimOutcome(0, 0, 0)
    async with connection.transaction():
        # Lost in a server crash, this transaction is simply done again: the runs and the moved next_run_at
        # go together. No need to wait for the disk.
        await connection.execute("SET LOCAL synchronous_commit = off")
        locked = {
            row["id"]: row["next_run_at"]
            for row in await connection.fetch(LOCK_PLANNED, [p.schedule_id for p in plans])
        }
        new_runs: list[NewRun] = []
        moves: tuple[list[int], list[datetime]] = ([], [])
        claimed = skipped_total = 0
        for item in plans:
            if locked.get(item.schedule_id) != item.due_at:
                continue
            claimed += 1
            if item.plan is None:
                log.error("schedule_cannot_fire", schedule_id=item.schedule_id, error=item.problem)
                await connection.execute(PAUSE_BROKEN, item.schedule_id, f"paused: {item.problem}")
                continue
            plan = item.plan
            skipped = plan.skipped_count
            if skipped:
                log.warning(
                    "missed_fires",
                    schedule_id=item.schedule_id,
                    runs=len(plan.runs),
                    skipped=skipped,
                    more_skipped=plan.more_skipped,
                    latest_fire=plan.runs[-1].fire_at.isoformat(),
                )
            skipped_total += skipped
            for fire in plan.skipped:
                new_runs.append(_new_run(item.schedule_id, fire, Trigger.SCHEDULE, status="skipped"))
            for index, fire in enumerate(plan.runs):
                latest = index == len(plan.runs) - 1
                new_runs.append(
                    _new_run(
                        item.schedule_id,
                        fire,
                        Trigger.SCHEDULE if latest else Trigger.CATCH_UP,
                        missed=skipped if latest else 0,
                    )
                )
            assert plan.next_run_at is not None
            moves[0].append(item.schedule_id)
            moves[1].append(plan.next_run_at)
        leased = None
        if lease is not None and lease.room > 0:
            instances = {p.schedule_id: p.instance_row_id for p in plans}
            leased = await lease_room(connection, lease, instances, new_runs)
        created = await insert_runs(
            connection,
            new_runs,
            leased=leased,
            lease_owner=lease.owner if lease is not None else None,
            lease_seconds=lease.lease_seconds if lease is not None else 0.0,
        )
        if moves[0]:
            await connection.execute(MOVE_NEXT_RUN, *moves)
        return ClaimOutcome(
            claimed,
            sum(1 for c in created if c.status != "skipped"),
            skipped_total,
            [c.lease for c in created if c.lease is not None],
        )


def _new_run(
    schedule_id: int, fire: PlannedFire, trigger: Trigger, *, status: str = "pending", missed: int = 0
) -> NewRun:
    return NewRun(
        schedule_id=schedule_id,
        scheduled_for=fire.fire_at,
        window_start=fire.window.start,
        window_end=fire.window.end,
        window_timezone=fire.window.timezone,
        trigger=trigger.value,
        priority=PRIORITY[trigger],
        status=status,
        missed_fires_skipped=missed,
    )


async def next_due_at(connection: Queryable) -> datetime | None:
    value: datetime | None = await connection.fetchval(NEXT_DUE)
    return value


# --- the catalog of schedules, as operators manage them ---------------------------------------------------

INSERT_SCHEDULE = """
INSERT INTO workflow_schedules (
    name, owner_id, instance_id, sql_query, workflow_id, parameter_values, preset, time_of_day, day_of_week,
    day_of_month, cron_expression, timezone, lookback_days, data_lag_days, next_run_at, auto_pause_on_failure,
    failure_threshold, snowflake_enabled, snowflake_table_name, snowflake_schema_name, snowflake_key_columns,
    misfire_policy, catch_up_limit, allow_overlap
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22, $23,
          $24)
RETURNING id
"""

SELECT_SCHEDULE = """
SELECT s.*, u.email AS user_email, i.instance_id AS instance_id
FROM workflow_schedules s JOIN users u ON u.id = s.owner_id JOIN amc_instances i ON i.id = s.instance_id
"""

UPDATABLE = (
    "name",
    "sql_query",
    "workflow_id",
    "parameter_values",
    "time_of_day",
    "day_of_week",
    "day_of_month",
    "cron_expression",
    "timezone",
    "lookback_days",
    "data_lag_days",
    "auto_pause_on_failure",
    "failure_threshold",
    "snowflake_enabled",
    "snowflake_table_name",
    "snowflake_schema_name",
    "snowflake_key_columns",
    "misfire_policy",
    "catch_up_limit",
    "allow_overlap",
)

LOADED_WINDOWS = """
SELECT DISTINCT window_start, window_end FROM schedule_runs
WHERE schedule_id = $1 AND snowflake_status = 'completed'
ORDER BY window_start
"""


async def notify_wakeup(connection: Queryable) -> None:
    """Wake every daemon: a schedule's next fire may have moved, or a run is due now."""
    await connection.execute(f"NOTIFY {WAKEUP_CHANNEL}")


async def create_schedule(
    connection: Connection,
    *,
    schedule: ScheduleCreatePreset | ScheduleCreateCustom,
    owner_id: int,
    instance_row_id: int,
    next_run_at: datetime,
) -> int:
    cadence = schedule.cadence()
    async with connection.transaction():
        schedule_id = await connection.fetchval(
            INSERT_SCHEDULE,
            schedule.name,
            owner_id,
            instance_row_id,
            schedule.sql_query,
            schedule.workflow_id,
            schedule.parameter_values,
            cadence.preset.value,
            cadence.time_of_day,
            cadence.day_of_week,
            cadence.day_of_month,
            cadence.cron_expression,
            cadence.timezone,
            cadence.lookback_days,
            cadence.data_lag_days,
            next_run_at,
            schedule.auto_pause_on_failure,
            schedule.failure_threshold,
            schedule.snowflake_on,
            schedule.snowflake_table_name,
            schedule.snowflake_schema_name,
            schedule.snowflake_key_columns,
            schedule.misfire_policy,
            schedule.catch_up_limit,
            schedule.allow_overlap,
        )
        await notify_wakeup(connection)
    return int(schedule_id)


async def schedule_row(connection: Queryable, schedule_id: int) -> dict[str, Any]:
    row = await connection.fetchrow(SELECT_SCHEDULE + " WHERE s.id = $1", schedule_id)
    if row is None:
        raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
    return dict(row)


async def get_schedule(connection: Queryable, schedule_id: int) -> ScheduleResponse:
    return ScheduleResponse.from_row(await schedule_row(connection, schedule_id))


async def list_schedules(connection: Queryable, user_email: str | None = None) -> list[ScheduleResponse]:
    if user_email:
        rows = await connection.fetch(SELECT_SCHEDULE + " WHERE lower(u.email) = lower($1) ORDER BY s.id", user_email)
    else:
        rows = await connection.fetch(SELECT_SCHEDULE + " ORDER BY s.id")
    return [ScheduleResponse.from_row(dict(row)) for row in rows]


async def update_schedule(
    connection: Connection, schedule_id: int, changes: dict[str, Any], next_run_at: datetime | None
) -> None:
    """Write validated changes (services.schedules checks them against the stored schedule first)."""
    unknown = set(changes) - set(UPDATABLE)
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    assignments = [f"{column} = ${index}" for index, column in enumerate(changes, start=2)]
    values = list(changes.values())
    if next_run_at is not None:
        assignments.append(f"next_run_at = ${len(values) + 2}")
        values.append(next_run_at)
    async with connection.transaction():
        status = await connection.execute(
            f"UPDATE workflow_schedules SET {', '.join(assignments)}, updated_at = now() WHERE id = $1",
            schedule_id,
            *values,
        )
        if status.endswith(" 0"):
            raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
        await notify_wakeup(connection)


async def set_active(connection: Connection, schedule_id: int, active: bool, next_run_at: datetime | None) -> None:
    async with connection.transaction():
        status = await connection.execute(
            "UPDATE workflow_schedules SET is_active = $2, paused_reason = CASE WHEN $2 THEN NULL ELSE 'paused by an "
            "operator' END, consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures END, "
            "next_run_at = COALESCE($3, next_run_at), updated_at = now() WHERE id = $1 "
            "AND (archived_at IS NULL OR NOT $2)",
            schedule_id,
            active,
            next_run_at,
        )
        if status.endswith(" 0"):
            archived_at = await connection.fetchval(ARCHIVED_AT, schedule_id)
            if archived_at is not None:
                raise ValueError(
                    f"schedule: {schedule_id} was archived on {archived_at:%Y-%m-%d} (removed from the fleet file), "
                    "and its history is kept as it is; add it to the fleet file again for a new schedule"
                )
            raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
        await notify_wakeup(connection)


async def delete_schedule(connection: Queryable, schedule_id: int) -> None:
    status = await connection.execute("DELETE FROM workflow_schedules WHERE id = $1", schedule_id)
    if status.endswith(" 0"):
        raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")


# Archived (`apply --prune`), not deleted: the runs keep their schedule, a run in flight finishes (runs carry
# their own query and target), and the schedule never fires again.
ARCHIVE_SCHEDULE = """
UPDATE workflow_schedules
SET archived_at = now(), is_active = FALSE, next_run_at = NULL, paused_reason = $2, updated_at = now()
WHERE id = $1 AND archived_at IS NULL
"""


ARCHIVED_AT = "SELECT archived_at FROM workflow_schedules WHERE id = $1"


async def archive_schedule(connection: Queryable, schedule_id: int, reason: str) -> None:
    status = await connection.execute(ARCHIVE_SCHEDULE, schedule_id, reason)
    if status.endswith(" 0"):
        raise NotFound(f"schedule: no live schedule {schedule_id}; see `recomamp schedules list`")
    await notify_wakeup(connection)


async def loaded_windows(connection: Queryable, schedule_id: int) -> list[tuple[datetime, datetime]]:
    return [(row["window_start"], row["window_end"]) for row in await connection.fetch(LOADED_WINDOWS, schedule_id)]


async def make_due(connection: Queryable, schedule_id: int, at: datetime) -> None:
    """Set when a schedule next fires (the sandbox makes its schedules due, as if their fire time had passed)."""
    await connection.execute("UPDATE workflow_schedules SET next_run_at = $2 WHERE id = $1", schedule_id, at)

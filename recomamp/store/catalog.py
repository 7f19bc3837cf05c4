"""Users, AMC instances and schedules, as the CLI manages them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import asyncpg

from recomamp.domain.models import ScheduleCreateCustom, ScheduleCreatePreset, ScheduleResponse, ScheduleUpdate
from recomamp.domain.schedules import Cadence, next_fire, window_for
from recomamp.store.db import Connection, Queryable
from recomamp.store.schedules import CADENCE_COLUMNS, WAKEUP_CHANNEL, cadence_from_row


class NotFound(LookupError):
    """An unknown user, instance, schedule or run: the message names it and how to list what exists."""


async def add_user(connection: Queryable, email: str) -> int:
    if "@" not in email:
        raise ValueError(f"email: {email!r} is not an email address")
    try:
        user_id = await connection.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email.strip())
    except asyncpg.UniqueViolationError:
        raise ValueError(f"email: a user {email} already exists") from None
    return int(user_id)


async def user_id_for(connection: Queryable, email: str) -> int:
    user_id = await connection.fetchval("SELECT id FROM users WHERE lower(email) = lower($1)", email)
    if user_id is None:
        raise NotFound(
            f"user: no user {email}; add one with `recomamp users add {email}`, or see `recomamp users list`"
        )
    return int(user_id)


async def add_instance(
    connection: Queryable,
    user_id: int,
    *,
    instance_id: str,
    advertiser_id: str,
    marketplace_id: str,
    region: str,
    name: str | None = None,
) -> int:
    if region not in ("na", "eu", "fe"):
        raise ValueError(f"region: {region!r} is not a region; use na, eu or fe")
    try:
        row_id = await connection.fetchval(
            "INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id, region, name) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            user_id,
            instance_id,
            advertiser_id,
            marketplace_id,
            region,
            name,
        )
    except asyncpg.UniqueViolationError:
        raise ValueError(f"instance_id: this user already has instance {instance_id}") from None
    return int(row_id)


async def instance_row_id(connection: Queryable, user_id: int, instance_id: str) -> int:
    row_id = await connection.fetchval(
        "SELECT id FROM amc_instances WHERE owner_id = $1 AND instance_id = $2", user_id, instance_id
    )
    if row_id is None:
        raise NotFound(
            f"instance: the user has no AMC instance {instance_id}; add it with `recomamp instances add`, "
            "or see `recomamp instances list`"
        )
    return int(row_id)


INSERT_SCHEDULE = """
INSERT INTO workflow_schedules (
    name, owner_id, instance_id, sql_query, workflow_id, parameter_values, preset, time_of_day, day_of_week,
    day_of_month, cron_expression, timezone, lookback_days, data_lag_days, next_run_at, auto_pause_on_failure,
    failure_threshold, snowflake_enabled, snowflake_table_name, snowflake_schema_name, snowflake_key_columns
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21)
RETURNING id
"""

SELECT_SCHEDULE = """
SELECT s.*, u.email AS user_email, i.instance_id AS instance_id
FROM workflow_schedules s JOIN users u ON u.id = s.owner_id JOIN amc_instances i ON i.id = s.instance_id
"""


async def create_schedule(
    connection: Queryable, schedule: ScheduleCreatePreset | ScheduleCreateCustom, now: datetime
) -> int:
    user_id = await user_id_for(connection, schedule.user_email)
    instance = await instance_row_id(connection, user_id, schedule.instance_id)
    cadence = schedule.cadence()
    schedule_id = await connection.fetchval(
        INSERT_SCHEDULE,
        schedule.name,
        user_id,
        instance,
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
        next_fire(cadence, now),
        schedule.auto_pause_on_failure,
        schedule.failure_threshold,
        schedule.snowflake_on,
        schedule.snowflake_table_name,
        schedule.snowflake_schema_name,
        schedule.snowflake_key_columns,
    )
    return int(schedule_id)


async def get_schedule(connection: Queryable, schedule_id: int) -> ScheduleResponse:
    row = await connection.fetchrow(SELECT_SCHEDULE + " WHERE s.id = $1", schedule_id)
    if row is None:
        raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
    return ScheduleResponse.from_row(dict(row))


async def list_schedules(connection: Queryable, user_email: str | None = None) -> list[ScheduleResponse]:
    if user_email:
        rows = await connection.fetch(SELECT_SCHEDULE + " WHERE lower(u.email) = lower($1) ORDER BY s.id", user_email)
    else:
        rows = await connection.fetch(SELECT_SCHEDULE + " ORDER BY s.id")
    return [ScheduleResponse.from_row(dict(row)) for row in rows]


_UPDATABLE = (
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
)


async def update_schedule(connection: Connection, schedule_id: int, update: ScheduleUpdate, now: datetime) -> None:
    changes = update.changes()
    unknown = set(changes) - set(_UPDATABLE)
    if unknown:
        raise ValueError(f"cannot update {', '.join(sorted(unknown))}")
    async with connection.transaction():
        row = await connection.fetchrow(
            f"SELECT {CADENCE_COLUMNS}, sql_query, workflow_id, snowflake_enabled, snowflake_table_name "
            "FROM workflow_schedules WHERE id = $1 FOR UPDATE",
            schedule_id,
        )
        if row is None:
            raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
        merged: dict[str, Any] = {**dict(row), **changes}
        if "snowflake_table_name" in changes and "snowflake_enabled" not in changes and changes["snowflake_table_name"]:
            merged["snowflake_enabled"] = True
        if bool(merged["sql_query"]) == bool(merged["workflow_id"]):
            raise ValueError("sql_query / workflow_id: a schedule runs exactly one: ad-hoc SQL or a saved workflow")
        if merged["snowflake_enabled"] and not merged["snowflake_table_name"]:
            raise ValueError("snowflake_table_name: required when Snowflake is enabled")
        cadence = cadence_from_row(merged)  # raises InvalidSchedule for a bad combination
        assignments = [f"{column} = ${index}" for index, column in enumerate(changes, start=2)]
        values = list(changes.values())
        if "snowflake_enabled" in merged and "snowflake_enabled" not in changes:
            assignments.append(f"snowflake_enabled = ${len(values) + 2}")
            values.append(merged["snowflake_enabled"])
        assignments.append(f"next_run_at = ${len(values) + 2}")
        values.append(next_fire(cadence, now))
        await connection.execute(
            f"UPDATE workflow_schedules SET {', '.join(assignments)}, updated_at = now() WHERE id = $1",
            schedule_id,
            *values,
        )


async def set_active(connection: Queryable, schedule_id: int, active: bool, now: datetime) -> None:
    row = await connection.fetchrow(f"SELECT {CADENCE_COLUMNS} FROM workflow_schedules WHERE id = $1", schedule_id)
    if row is None:
        raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
    # Resuming starts from the next fire after now: the fires missed while paused are not owed.
    next_run = next_fire(cadence_from_row(row), now) if active else None
    await connection.execute(
        "UPDATE workflow_schedules SET is_active = $2, paused_reason = CASE WHEN $2 THEN NULL ELSE 'paused by an "
        "operator' END, consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures END, "
        "next_run_at = COALESCE($3, next_run_at), updated_at = now() WHERE id = $1",
        schedule_id,
        active,
        next_run,
    )


async def delete_schedule(connection: Queryable, schedule_id: int) -> None:
    status = await connection.execute("DELETE FROM workflow_schedules WHERE id = $1", schedule_id)
    if status.endswith(" 0"):
        raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")


async def run_now(connection: Connection, schedule_id: int, now: datetime) -> int:
    """A manual run, due at once, that leaves the regular cadence alone. NOTIFY wakes the daemons."""
    async with connection.transaction():
        row = await connection.fetchrow(
            f"SELECT id, instance_id, snowflake_enabled, {CADENCE_COLUMNS} FROM workflow_schedules WHERE id = $1",
            schedule_id,
        )
        if row is None:
            raise NotFound(f"schedule: no schedule {schedule_id}; see `recomamp schedules list`")
        cadence: Cadence = cadence_from_row(row)
        window = window_for(cadence, now)
        run_id = await connection.fetchval(
            "INSERT INTO schedule_runs (schedule_id, instance_id, scheduled_for, trigger, window_start, window_end, "
            "window_timezone, snowflake_status) VALUES ($1, $2, $3, 'manual', $4, $5, $6, $7) "
            "ON CONFLICT (schedule_id, scheduled_for) DO NOTHING RETURNING id",
            schedule_id,
            row["instance_id"],
            now,
            window.start,
            window.end,
            window.timezone,
            "pending" if row["snowflake_enabled"] else "skipped",
        )
        if run_id is None:
            raise ValueError("a run for this schedule at this very instant already exists; try again")
        await connection.execute(f"NOTIFY {WAKEUP_CHANNEL}")
    return int(run_id)

"""What operators ask of runs and do to them (services.runs, the CLI): list, show, cancel, window states,
reruns after re-authentication."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from recomamp.store.db import Queryable

ACTIVE_FOR_WINDOW = """
SELECT id, status, lease_owner FROM schedule_runs
WHERE schedule_id = $1 AND window_start = $2 AND window_end = $3 AND status IN ('pending', 'running')
"""

WINDOW_STATES = """
SELECT DISTINCT ON (window_start, window_end) window_start, window_end, status, id
FROM schedule_runs
WHERE schedule_id = $1 AND window_start >= $2 AND window_start <= $3 AND status <> 'skipped'
ORDER BY window_start, window_end,
         (status IN ('pending', 'running')) DESC, (status = 'succeeded') DESC, id DESC
"""

RUN_COLUMNS = """
r.id, r.schedule_id, s.name AS schedule_name, u.email AS user_email, i.instance_id AS amc_instance_id,
r.scheduled_for, r.trigger, r.priority, r.status, r.step, r.attempt, r.claims, r.interruptions,
r.missed_fires_skipped, r.window_start, r.window_end, r.window_timezone,
r.query_sql, r.query_workflow_id, r.query_parameters, r.target_enabled, r.target_table_name, r.target_schema_name,
r.target_key_columns, r.amc_execution_id, r.amc_status, r.amc_status_reason, r.amc_expire_time, r.result_files,
r.result_rows, r.results_path, r.results_bytes, r.results_kept_until, r.snowflake_status, r.snowflake_table,
r.snowflake_rows, r.snowflake_error, r.error_kind, r.error_message, r.wait_reason, r.not_before, r.lease_owner,
r.lease_expires_at, r.cancelled_by, r.cancel_requested_at, r.created_at, r.started_at, r.submitted_at,
r.amc_finished_at, r.downloaded_at, r.snowflake_finished_at, r.finished_at
"""
RUN_FROM = """
FROM schedule_runs r JOIN workflow_schedules s ON s.id = r.schedule_id JOIN users u ON u.id = s.owner_id
JOIN amc_instances i ON i.id = r.instance_id
"""

# An operator cancels: a pending run at once; a running one too (its holder's next fenced write fails,
# since the token is cleared). What AMC runs for it is cancelled by the caller.
CANCEL_RUN = """
WITH before AS (SELECT id, status AS previous_status FROM schedule_runs WHERE id = $1 FOR UPDATE)
UPDATE schedule_runs r SET status = 'cancelled', step = 'finished', cancelled_by = $2, cancel_requested_at = now(),
    finished_at = now(), lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL, wait_reason = NULL,
    error_kind = 'cancelled', error_message = 'cancelled by ' || $2, updated_at = now()
FROM before b
WHERE r.id = b.id AND r.status IN ('pending', 'running')
RETURNING r.id, b.previous_status, r.amc_execution_id, r.lease_owner
"""

CANCEL_QUEUED_BACKFILL = """
UPDATE schedule_runs SET status = 'cancelled', step = 'finished', cancelled_by = $2, cancel_requested_at = now(),
    finished_at = now(), error_kind = 'cancelled', error_message = 'backfill cancelled by ' || $2, updated_at = now()
WHERE schedule_id = $1 AND trigger = 'backfill' AND status = 'pending' AND step = 'queued' AND amc_execution_id IS NULL
RETURNING id
"""

ACTIVE_RUNS_OF_SCHEDULE = """
SELECT id FROM schedule_runs WHERE schedule_id = $1 AND status IN ('pending', 'running') ORDER BY id
"""

FAILED_FOR_REAUTH = """
SELECT DISTINCT ON (r.schedule_id, r.window_start, r.window_end) r.id, r.schedule_id, r.window_start, r.window_end,
       r.window_timezone, r.scheduled_for
FROM schedule_runs r JOIN workflow_schedules s ON s.id = r.schedule_id
WHERE s.owner_id = $1 AND r.status = 'failed' AND r.error_kind = 'reauth_required' AND r.finished_at >= $2
  AND NOT EXISTS (
      SELECT 1 FROM schedule_runs o WHERE o.schedule_id = r.schedule_id AND o.window_start = r.window_start
        AND o.window_end = r.window_end AND (o.status IN ('pending', 'running', 'succeeded'))
  )
ORDER BY r.schedule_id, r.window_start, r.window_end, r.id DESC
"""

PROGRESS = """
SELECT status, count(*) AS n FROM schedule_runs WHERE id = ANY($1::bigint[]) GROUP BY status
"""


async def active_run_for_window(
    connection: Queryable, schedule_id: int, window_start: datetime, window_end: datetime
) -> dict[str, Any] | None:
    row = await connection.fetchrow(ACTIVE_FOR_WINDOW, schedule_id, window_start, window_end)
    return dict(row) if row is not None else None


async def window_states(
    connection: Queryable, schedule_id: int, first: datetime, last: datetime
) -> dict[tuple[datetime, datetime], tuple[str, int]]:
    """Each window's most telling run (active, else succeeded, else the newest): (status, run id)."""
    rows = await connection.fetch(WINDOW_STATES, schedule_id, first, last)
    return {(row["window_start"], row["window_end"]): (row["status"], row["id"]) for row in rows}


async def list_runs(
    connection: Queryable,
    *,
    schedule_id: int | None = None,
    status: str | None = None,
    trigger: str | None = None,
    run_ids: Sequence[int] | None = None,
    limit: int = 50,
) -> list[dict[str, Any]]:
    conditions: list[str] = []
    values: list[object] = []
    for column, value in (("r.schedule_id", schedule_id), ("r.status", status), ("r.trigger", trigger)):
        if value is not None:
            values.append(value)
            conditions.append(f"{column} = ${len(values)}")
    if run_ids is not None:
        values.append(list(run_ids))
        conditions.append(f"r.id = ANY(${len(values)}::bigint[])")
    values.append(limit)
    where = f" WHERE {' AND '.join(conditions)}" if conditions else ""
    rows = await connection.fetch(
        f"SELECT {RUN_COLUMNS} {RUN_FROM}{where} ORDER BY r.id DESC LIMIT ${len(values)}", *values
    )
    return [dict(row) for row in rows]


async def show_run(connection: Queryable, run_id: int) -> dict[str, Any] | None:
    row = await connection.fetchrow(f"SELECT {RUN_COLUMNS} {RUN_FROM} WHERE r.id = $1", run_id)
    return dict(row) if row is not None else None


async def cancel_run(connection: Queryable, run_id: int, cancelled_by: str) -> dict[str, Any] | None:
    """Cancel a pending or running run. None when it is not active (finished, or unknown)."""
    row = await connection.fetchrow(CANCEL_RUN, run_id, cancelled_by)
    return dict(row) if row is not None else None


async def cancel_queued_backfill(connection: Queryable, schedule_id: int, cancelled_by: str) -> list[int]:
    return [row["id"] for row in await connection.fetch(CANCEL_QUEUED_BACKFILL, schedule_id, cancelled_by)]


async def active_runs_of_schedule(connection: Queryable, schedule_id: int) -> list[int]:
    return [row["id"] for row in await connection.fetch(ACTIVE_RUNS_OF_SCHEDULE, schedule_id)]


async def failed_for_reauth(connection: Queryable, user_id: int, since: datetime) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(FAILED_FOR_REAUTH, user_id, since)]


async def progress(connection: Queryable, run_ids: Sequence[int]) -> dict[str, int]:
    return {row["status"]: int(row["n"]) for row in await connection.fetch(PROGRESS, list(run_ids))}

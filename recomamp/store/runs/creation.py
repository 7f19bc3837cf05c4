"""Creating runs: one statement for scheduled fires, catch-up, run-now, backfills and reruns, and the lease a
replica with room takes on the runs it creates."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from recomamp.store.db import Connection, Queryable
from recomamp.store.runs.leases import CLAIM_LOCK, COUNT_LEASED, RunLease


@dataclass(frozen=True)
class NewRun:
    schedule_id: int
    scheduled_for: datetime
    window_start: datetime
    window_end: datetime
    window_timezone: str
    trigger: str
    priority: int = 0
    status: str = "pending"  # or 'skipped': a window a coalesced misfire passed over
    missed_fires_skipped: int = 0


# What the run will send and where it will load is copied from the schedule here, in the same statement:
# a later edit of the schedule never changes an existing run. A window that already has an active run,
# or a fire that already has its run, is left alone (ON CONFLICT DO NOTHING).
INSERT_RUNS = """
INSERT INTO schedule_runs (
    schedule_id, instance_id, scheduled_for, trigger, priority, status, missed_fires_skipped,
    window_start, window_end, window_timezone, snowflake_status,
    query_sql, query_workflow_id, query_parameters, target_enabled, target_table_name, target_schema_name,
    target_key_columns, error_message, finished_at, step, lease_token, lease_owner, lease_expires_at, claims
)
SELECT r.schedule_id, s.instance_id, r.scheduled_for, r.trigger, r.priority,
       CASE WHEN r.leased THEN 'running' ELSE r.status END, r.skipped,
       r.window_start, r.window_end, r.window_timezone,
       CASE WHEN r.status = 'skipped' OR NOT COALESCE(s.snowflake_enabled, FALSE) THEN 'skipped' ELSE 'pending' END,
       s.sql_query, s.workflow_id, s.parameter_values, COALESCE(s.snowflake_enabled, FALSE), s.snowflake_table_name,
       s.snowflake_schema_name, s.snowflake_key_columns,
       CASE WHEN r.status = 'skipped' THEN 'skipped: a later window of the same schedule ran instead (misfire policy '
            || s.misfire_policy || '); fill it with `recomamp schedules backfill`' END,
       CASE WHEN r.status = 'skipped' THEN now() END,
       CASE WHEN r.status = 'skipped' THEN 'finished' ELSE 'queued' END,
       CASE WHEN r.leased THEN gen_random_uuid() END,
       CASE WHEN r.leased THEN $11 END,
       CASE WHEN r.leased THEN now() + make_interval(secs => $12) END,
       CASE WHEN r.leased THEN 1 ELSE 0 END
FROM unnest($1::bigint[], $2::timestamptz[], $3::text[], $4::smallint[], $5::text[], $6::int[], $7::timestamptz[],
            $8::timestamptz[], $9::text[], $10::boolean[])
     AS r(schedule_id, scheduled_for, trigger, priority, status, skipped, window_start, window_end, window_timezone,
          leased)
JOIN workflow_schedules s ON s.id = r.schedule_id
ON CONFLICT DO NOTHING
RETURNING id, schedule_id, window_start, status, lease_token
"""


@dataclass(frozen=True)
class CreatedRun:
    id: int
    schedule_id: int
    window_start: datetime
    status: str
    lease: RunLease | None  # created leased: start it now


async def insert_runs(
    connection: Queryable,
    runs: Sequence[NewRun],
    *,
    leased: Sequence[bool] | None = None,
    lease_owner: str | None = None,
    lease_seconds: float = 0.0,
) -> list[CreatedRun]:
    """Create runs; those flagged in `leased` are created already leased to `lease_owner`."""
    if not runs:
        return []
    rows = await connection.fetch(
        INSERT_RUNS,
        [r.schedule_id for r in runs],
        [r.scheduled_for for r in runs],
        [r.trigger for r in runs],
        [r.priority for r in runs],
        [r.status for r in runs],
        [r.missed_fires_skipped for r in runs],
        [r.window_start for r in runs],
        [r.window_end for r in runs],
        [r.window_timezone for r in runs],
        list(leased) if leased is not None and lease_owner is not None else [False] * len(runs),
        lease_owner,
        lease_seconds,
    )
    return [
        CreatedRun(
            row["id"],
            row["schedule_id"],
            row["window_start"],
            row["status"],
            RunLease(row["id"], row["lease_token"], 1) if row["lease_token"] is not None else None,
        )
        for row in rows
    ]


# Instances with runnable runs waiting (not leased, due): a run created now must queue behind them.
INSTANCES_WITH_BACKLOG = """
SELECT DISTINCT instance_id FROM schedule_runs
WHERE status IN ('pending', 'running') AND (lease_token IS NULL OR lease_expires_at <= now())
  AND (not_before IS NULL OR not_before <= now()) AND cancel_requested_at IS NULL
"""


@dataclass(frozen=True)
class LeaseOnCreate:
    """Lease new runs as they are created, when the creating replica has room (no separate claim)."""

    owner: str
    lease_seconds: float
    room: int  # this replica's free run slots
    max_global: int
    max_per_instance: int


async def lease_room(
    connection: Connection, request: LeaseOnCreate, schedule_instances: dict[int, int], runs: list[NewRun]
) -> list[bool]:
    """Mark which new runs to create leased: within the limits, oldest first, and only on instances whose
    earlier runs are not waiting (so the dispatcher's fair order still holds). Call inside the creating
    transaction: it takes the claim lock, so its counts hold until the commit."""
    await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", CLAIM_LOCK)
    leased = {row["instance_id"]: row["n"] for row in await connection.fetch(COUNT_LEASED)}
    room = min(request.room, request.max_global - sum(leased.values()))
    if room <= 0:
        return [False] * len(runs)
    backlog = {row["instance_id"] for row in await connection.fetch(INSTANCES_WITH_BACKLOG)}
    chosen: set[int] = set()
    for index in sorted(range(len(runs)), key=lambda i: (runs[i].priority, runs[i].scheduled_for)):
        run = runs[index]
        instance = schedule_instances.get(run.schedule_id)
        if room <= 0:
            break
        if (
            run.status == "pending"
            and instance is not None
            and instance not in backlog
            and leased.get(instance, 0) < request.max_per_instance
        ):
            leased[instance] = leased.get(instance, 0) + 1
            room -= 1
            chosen.add(index)
    return [index in chosen for index in range(len(runs))]

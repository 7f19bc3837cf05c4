"""Runs: leases, the shared concurrency limits, each step's state, and the outcome.

Every write of a run's state is fenced on `lease_owner`: a replica that lost a run's lease (it stalled
past the lease, and another replica adopted the run) cannot overwrite what the new owner records.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recomamp.config import Region
from recomamp.store.db import Connection, Queryable

# Claims are serialised across replicas for a few milliseconds, so that the counts of runs in flight
# (global and per instance) that they check cannot be raced past the limits.
CLAIM_LOCK = "recomamp.claim_runs"

COUNT_LEASED = """
SELECT instance_id, count(*) AS n FROM schedule_runs
WHERE status = 'running' AND lease_owner IS NOT NULL AND lease_expires_at > now()
GROUP BY instance_id
"""

# Runs nobody holds: new ones, ones released on shutdown, ones whose owner died (lease expired), and
# ones waiting out a retry delay (lease_expires_at in the future with no owner).
SELECT_CLAIMABLE = """
SELECT id, instance_id FROM schedule_runs
WHERE status IN ('pending', 'running')
  AND (lease_expires_at IS NULL OR lease_expires_at <= now())
ORDER BY scheduled_for, id
LIMIT $1
FOR UPDATE SKIP LOCKED
"""

TAKE_LEASE = """
UPDATE schedule_runs
SET lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3), status = 'running',
    attempt = attempt + 1, started_at = COALESCE(started_at, now()), updated_at = now()
WHERE id = ANY($1::bigint[])
RETURNING id
"""

RENEW_LEASES = """
UPDATE schedule_runs SET lease_expires_at = now() + make_interval(secs => $3)
WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND status = 'running'
RETURNING id
"""

RELEASE_LEASES = """
UPDATE schedule_runs SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = ANY($1::bigint[]) AND lease_owner = $2 AND status = 'running'
"""

DEFER_RUN = """
UPDATE schedule_runs
SET lease_owner = NULL, lease_expires_at = now() + make_interval(secs => $3), error_kind = $4,
    error_message = $5, updated_at = now()
WHERE id = $1 AND lease_owner = $2
"""

LOAD_RUN = """
SELECT r.*, s.name AS schedule_name, s.sql_query, s.workflow_id, s.parameter_values, s.snowflake_enabled,
       s.snowflake_table_name, s.snowflake_schema_name, s.snowflake_key_columns, s.owner_id,
       i.instance_id AS amc_instance_id, i.advertiser_id, i.marketplace_id, i.region,
       u.email AS user_email
FROM schedule_runs r
JOIN workflow_schedules s ON s.id = r.schedule_id
JOIN amc_instances i ON i.id = r.instance_id
JOIN users u ON u.id = s.owner_id
WHERE r.id = $1
"""

# Step updates. $1 run id, $2 owner; the rest per statement.
SET_STEP = """
UPDATE schedule_runs SET step = $3, updated_at = now() WHERE id = $1 AND lease_owner = $2
"""
MARK_SUBMITTING = """
UPDATE schedule_runs
SET step = 'submitting', submit_marker = COALESCE(submit_marker, $3),
    submit_started_at = COALESCE(submit_started_at, now()), token_checked_at = COALESCE(token_checked_at, now()),
    updated_at = now()
WHERE id = $1 AND lease_owner = $2
RETURNING submit_marker, submit_started_at
"""
MARK_SUBMITTED = """
UPDATE schedule_runs SET step = 'submitted', amc_execution_id = $3, amc_status = $4, submitted_at = now(),
    updated_at = now()
WHERE id = $1 AND lease_owner = $2
"""
SET_AMC_STATUS = """
UPDATE schedule_runs SET amc_status = $3, amc_status_reason = $4, updated_at = now(),
    amc_finished_at = CASE WHEN $5 THEN now() ELSE amc_finished_at END
WHERE id = $1 AND lease_owner = $2
"""
MARK_DOWNLOADED = """
UPDATE schedule_runs SET step = 'downloading', result_files = $3, result_rows = $4, downloaded_at = now(),
    updated_at = now()
WHERE id = $1 AND lease_owner = $2
"""
SET_SNOWFLAKE = """
UPDATE schedule_runs SET step = CASE WHEN $3 = 'uploading' THEN 'uploading' ELSE step END,
    snowflake_status = $3, snowflake_table = COALESCE($4, snowflake_table), snowflake_rows = $5,
    snowflake_error = $6,
    snowflake_finished_at = CASE WHEN $3 IN ('completed', 'failed') THEN now() ELSE snowflake_finished_at END,
    updated_at = now()
WHERE id = $1 AND ($2::text IS NULL OR lease_owner = $2)
"""
FINISH_RUN = """
UPDATE schedule_runs SET status = $3, step = 'finished', error_kind = $4, error_message = $5,
    finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND lease_owner = $2
RETURNING schedule_id
"""
# A success resets the count; a failure adds one and, past the threshold, pauses the schedule.
COUNT_OUTCOME = """
UPDATE workflow_schedules
SET consecutive_failures = CASE WHEN $2 THEN 0 ELSE consecutive_failures + 1 END,
    is_active = CASE
        WHEN NOT $2 AND auto_pause_on_failure AND consecutive_failures + 1 >= failure_threshold THEN FALSE
        ELSE is_active END,
    paused_reason = CASE
        WHEN NOT $2 AND auto_pause_on_failure AND consecutive_failures + 1 >= failure_threshold
        THEN 'auto-paused after ' || (consecutive_failures + 1) || ' consecutive failures'
        ELSE paused_reason END,
    updated_at = now()
WHERE id = $1
RETURNING consecutive_failures, is_active, auto_pause_on_failure, failure_threshold
"""


async def claim_runs(
    connection: Connection,
    *,
    owner: str,
    lease_seconds: float,
    max_global: int,
    max_per_instance: int,
    limit: int,
) -> list[int]:
    """Lease up to `limit` runnable runs, within the global and per-instance limits over all replicas."""
    if limit <= 0:
        return []
    async with connection.transaction():
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", CLAIM_LOCK)
        leased = Counter({row["instance_id"]: row["n"] for row in await connection.fetch(COUNT_LEASED)})
        room = min(limit, max_global - sum(leased.values()))
        if room <= 0:
            return []
        candidates = await connection.fetch(SELECT_CLAIMABLE, max(room * 4, 50))
        chosen: list[int] = []
        for row in candidates:
            if len(chosen) >= room:
                break
            if leased[row["instance_id"]] >= max_per_instance:
                continue
            leased[row["instance_id"]] += 1
            chosen.append(row["id"])
        if not chosen:
            return []
        rows = await connection.fetch(TAKE_LEASE, chosen, owner, lease_seconds)
        return [row["id"] for row in rows]


async def renew_leases(connection: Queryable, owner: str, run_ids: list[int], lease_seconds: float) -> set[int]:
    rows = await connection.fetch(RENEW_LEASES, run_ids, owner, lease_seconds)
    return {row["id"] for row in rows}


async def release_leases(connection: Queryable, owner: str, run_ids: list[int]) -> None:
    await connection.execute(RELEASE_LEASES, run_ids, owner)


@dataclass(frozen=True)
class RunContext:
    """A run, with what it needs from its schedule, AMC instance and user."""

    id: int
    schedule_id: int
    scheduled_for: datetime
    trigger: str
    status: str
    step: str
    attempt: int
    lease_owner: str | None
    window_start: datetime
    window_end: datetime
    window_timezone: str
    submit_marker: str | None
    amc_execution_id: str | None
    amc_status: str | None
    sql_query: str | None
    workflow_id: str | None
    parameter_values: dict[str, str] | None
    snowflake_enabled: bool | None
    snowflake_table_name: str | None
    snowflake_schema_name: str | None
    snowflake_key_columns: list[str] | None
    owner_id: int
    amc_instance_id: str
    advertiser_id: str
    marketplace_id: str
    region: Region
    user_email: str

    @classmethod
    def from_row(cls, row: Any) -> RunContext:
        return cls(**{name: row[name] for name in cls.__dataclass_fields__})


async def load_run(connection: Queryable, run_id: int) -> RunContext | None:
    row = await connection.fetchrow(LOAD_RUN, run_id)
    return RunContext.from_row(row) if row is not None else None


@dataclass(frozen=True)
class OutcomeCount:
    consecutive_failures: int
    paused: bool
    threshold: int


async def finish_run(
    connection: Connection,
    run_id: int,
    owner: str,
    *,
    status: str,
    error_kind: str | None,
    error_message: str | None,
) -> OutcomeCount | None:
    """Record the outcome and count it on the schedule. None when this replica no longer holds the run."""
    async with connection.transaction():
        schedule_id = await connection.fetchval(FINISH_RUN, run_id, owner, status, error_kind, error_message)
        if schedule_id is None:
            return None
        counted = await connection.fetchrow(COUNT_OUTCOME, schedule_id, status == "succeeded")
        assert counted is not None
        return OutcomeCount(
            consecutive_failures=counted["consecutive_failures"],
            paused=counted["auto_pause_on_failure"] and not counted["is_active"],
            threshold=counted["failure_threshold"],
        )


def marker_for(run_id: int, attempt_token: str) -> str:
    return f"run{run_id}-{attempt_token}"

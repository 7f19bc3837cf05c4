"""A run's steps as its claim records them, and its outcome: every write here is fenced by the claim's lease
(store.runs.leases), so a claim that lost the run writes nothing and stops."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recomamp.domain.alerts import OutcomeFacts, RunNotice, events_for_outcome
from recomamp.store.db import Connection, Queryable
from recomamp.store.outbox import insert_events
from recomamp.store.runs.leases import LeaseLost, RunLease, fenced

# An attempt is counted when this claim starts where the last counted one started (no progress since).
BEGIN_ATTEMPT = """
UPDATE schedule_runs
SET attempt = CASE WHEN attempt = 0 OR step IS NOT DISTINCT FROM attempt_step THEN attempt + 1 ELSE attempt END,
    attempt_step = step, lease_worked = TRUE, started_at = COALESCE(started_at, $3), updated_at = now()
WHERE id = $1 AND lease_token = $2
RETURNING attempt, claims, interruptions
"""

LOAD_RUN = """
SELECT r.id, r.schedule_id, s.name AS schedule_name, r.trigger, r.status, r.step, r.attempt, r.claims,
       r.interruptions, r.scheduled_for, r.window_start, r.window_end, r.window_timezone, r.submit_marker,
       r.submit_started_at, r.amc_execution_id, r.amc_status, r.query_sql, r.query_workflow_id, r.query_parameters,
       r.target_enabled, r.target_table_name, r.target_schema_name, r.target_key_columns, r.snowflake_table,
       r.results_path, r.error_message, r.lease_owner, r.lease_token, r.lease_expires_at, r.cancel_requested_at,
       s.owner_id, u.email AS user_email, r.instance_id AS instance_row_id, i.instance_id AS amc_instance_id,
       i.advertiser_id, i.marketplace_id, i.region, i.api_endpoint, r.downloaded_at
FROM schedule_runs r
JOIN workflow_schedules s ON s.id = r.schedule_id
JOIN amc_instances i ON i.id = r.instance_id
JOIN users u ON u.id = s.owner_id
WHERE r.id = $1
"""

SET_STEP = "UPDATE schedule_runs SET step = $3, updated_at = now() WHERE id = $1 AND lease_token = $2"
# What the next claim compares its step with to count an attempt (BEGIN_ATTEMPT).
SET_ATTEMPT_STEP = "UPDATE schedule_runs SET attempt_step = $3, updated_at = now() WHERE id = $1 AND lease_token = $2"

# The marker is persisted before the POST: whoever adopts a run that died mid-POST searches AMC for
# the execution instead of sending a second, billed one.
MARK_SUBMITTING = """
UPDATE schedule_runs
SET step = 'submitting', submit_marker = COALESCE(submit_marker, $3),
    submit_started_at = COALESCE(submit_started_at, now()), token_checked_at = COALESCE(token_checked_at, now()),
    updated_at = now()
WHERE id = $1 AND lease_token = $2
RETURNING submit_marker, submit_started_at
"""
MARK_SUBMITTED = """
UPDATE schedule_runs SET step = 'submitted', amc_execution_id = $3, amc_status = $4, submitted_at = now(),
    updated_at = now()
WHERE id = $1 AND lease_token = $2
"""
SET_AMC_STATUS = """
UPDATE schedule_runs SET amc_status = $3, amc_status_reason = $4, amc_expire_time = COALESCE($6, amc_expire_time),
    amc_finished_at = CASE WHEN $5 THEN now() ELSE amc_finished_at END, updated_at = now()
WHERE id = $1 AND lease_token = $2
"""
MARK_DOWNLOADED = """
UPDATE schedule_runs SET step = 'downloading', result_files = $3, result_rows = $4, results_path = $5,
    results_bytes = $6, downloaded_at = COALESCE(downloaded_at, now()), updated_at = now()
WHERE id = $1 AND lease_token = $2
"""
SET_SNOWFLAKE = """
UPDATE schedule_runs SET step = CASE WHEN $3 = 'uploading' THEN 'uploading' ELSE step END,
    snowflake_status = $3, snowflake_table = COALESCE($4, snowflake_table), snowflake_rows = $5,
    snowflake_error = $6, result_rows = COALESCE($5, result_rows),
    snowflake_finished_at = CASE WHEN $3 IN ('completed', 'failed') THEN now() ELSE snowflake_finished_at END,
    updated_at = now()
WHERE id = $1 AND lease_token = $2
"""
SET_RESULTS_KEPT = """
UPDATE schedule_runs SET results_path = $2::text, results_bytes = $3::bigint, results_kept_until = $4::timestamptz,
    updated_at = now()
WHERE id = $1
"""

FINISH_RUN = """
UPDATE schedule_runs SET status = $3, step = 'finished', error_kind = $4, error_message = $5, wait_reason = NULL,
    finished_at = now(), lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND lease_token = $2
RETURNING schedule_id
"""
# A success resets the count; a failure adds one and, past the threshold, pauses the schedule.
COUNT_OUTCOME = """
WITH before AS (SELECT id, consecutive_failures AS failures_before, is_active AS was_active
                FROM workflow_schedules WHERE id = $1 FOR UPDATE)
UPDATE workflow_schedules s
SET consecutive_failures = CASE WHEN $2 THEN 0 ELSE s.consecutive_failures + 1 END,
    is_active = CASE
        WHEN NOT $2 AND s.auto_pause_on_failure AND s.consecutive_failures + 1 >= s.failure_threshold THEN FALSE
        ELSE s.is_active END,
    paused_reason = CASE
        WHEN NOT $2 AND s.auto_pause_on_failure AND s.consecutive_failures + 1 >= s.failure_threshold
        THEN 'auto-paused after ' || (s.consecutive_failures + 1) || ' consecutive failures'
        ELSE s.paused_reason END,
    updated_at = now()
FROM before b
WHERE s.id = b.id
RETURNING s.consecutive_failures, s.is_active, b.was_active, b.failures_before, s.auto_pause_on_failure,
          s.failure_threshold, s.name, s.owner_id
"""

# A wait (AMC's quota) gives back what this claim counted: `attempt` returns to $7 (NULL: keep it).
DEFER_RUN = """
UPDATE schedule_runs
SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL, status = 'pending',
    not_before = now() + make_interval(secs => $3), error_kind = $4, error_message = $5, wait_reason = $6,
    attempt = COALESCE($7::int, attempt), updated_at = now()
WHERE id = $1 AND lease_token = $2
"""

RUN_STATE = "SELECT status, cancelled_by FROM schedule_runs WHERE id = $1"


@dataclass(frozen=True)
class RunRecord:
    """A run, with what it needs from its schedule, AMC instance and user."""

    id: int
    schedule_id: int
    schedule_name: str
    trigger: str
    status: str
    step: str
    attempt: int
    claims: int
    interruptions: int
    scheduled_for: datetime
    window_start: datetime
    window_end: datetime
    window_timezone: str
    submit_marker: str | None
    submit_started_at: datetime | None
    amc_execution_id: str | None
    amc_status: str | None
    query_sql: str | None
    query_workflow_id: str | None
    query_parameters: dict[str, str]
    target_enabled: bool
    target_table_name: str | None
    target_schema_name: str | None
    target_key_columns: list[str] | None
    snowflake_table: str | None
    results_path: str | None
    error_message: str | None
    lease_owner: str | None
    lease_token: uuid.UUID | None
    lease_expires_at: datetime | None
    cancel_requested_at: datetime | None
    owner_id: int
    user_email: str
    instance_row_id: int
    amc_instance_id: str
    advertiser_id: str
    marketplace_id: str
    region: str
    api_endpoint: str | None
    downloaded_at: datetime | None  # when a claim first downloaded the result (later claims keep it)

    @classmethod
    def from_row(cls, row: Any) -> RunRecord:
        values = {name: row[name] for name in cls.__dataclass_fields__}
        values["query_parameters"] = dict(values["query_parameters"] or {})
        return cls(**values)


@dataclass(frozen=True)
class Attempt:
    number: int
    claims: int
    interruptions: int


async def begin_attempt(connection: Queryable, lease: RunLease, started_at: datetime) -> Attempt:
    """This claim starts work: it counts as an attempt from now on (lease churn without work does not)."""
    row = await connection.fetchrow(BEGIN_ATTEMPT, lease.run_id, lease.token, started_at)
    if row is None:
        raise LeaseLost(lease.run_id)
    return Attempt(row["attempt"], row["claims"], row["interruptions"])


async def load_run(connection: Queryable, run_id: int) -> RunRecord | None:
    row = await connection.fetchrow(LOAD_RUN, run_id)
    return RunRecord.from_row(row) if row is not None else None


async def set_step(connection: Queryable, lease: RunLease, step: str) -> None:
    await fenced(connection, SET_STEP, lease, step)


async def set_attempt_step(connection: Queryable, lease: RunLease, attempt_step: str) -> None:
    await fenced(connection, SET_ATTEMPT_STEP, lease, attempt_step)


async def mark_submitting(connection: Queryable, lease: RunLease, marker: str) -> tuple[str, datetime]:
    row = await connection.fetchrow(MARK_SUBMITTING, lease.run_id, lease.token, marker)
    if row is None:
        raise LeaseLost(lease.run_id)
    return row["submit_marker"], row["submit_started_at"]


async def mark_submitted(connection: Queryable, lease: RunLease, execution_id: str, status: str) -> None:
    await fenced(connection, MARK_SUBMITTED, lease, execution_id, status)


async def set_amc_status(
    connection: Queryable,
    lease: RunLease,
    status: str,
    reason: str | None,
    *,
    terminal: bool,
    expire_time: datetime | None,
) -> None:
    await fenced(connection, SET_AMC_STATUS, lease, status, reason, terminal, expire_time)


async def mark_downloaded(
    connection: Queryable, lease: RunLease, *, files: int, rows: int | None, path: str, size: int
) -> None:
    await fenced(connection, MARK_DOWNLOADED, lease, files, rows, path, size)


async def set_snowflake(
    connection: Queryable, lease: RunLease, status: str, table: str | None, rows: int | None, error: str | None
) -> None:
    await fenced(connection, SET_SNOWFLAKE, lease, status, table, rows, error)


async def set_results_kept(
    connection: Queryable, run_id: int, *, path: str | None, size: int | None, kept_until: datetime | None
) -> None:
    await connection.execute(SET_RESULTS_KEPT, run_id, path, size, kept_until)


async def defer_run(
    connection: Queryable,
    lease: RunLease,
    *,
    delay_seconds: float,
    kind: str,
    message: str,
    wait_reason: str | None = None,
    attempt_before: int | None = None,
) -> None:
    """Release the run to be tried again after `delay_seconds`. A wait (quota) passes `attempt_before`,
    the attempt count before this claim, so that waiting costs no attempt."""
    await fenced(connection, DEFER_RUN, lease, delay_seconds, kind, message, wait_reason, attempt_before)


async def finish_run(
    connection: Connection,
    lease: RunLease,
    *,
    status: str,
    error_kind: str | None,
    error_message: str | None,
    notice: RunNotice | None = None,
) -> OutcomeFacts:
    """Record the outcome, count it on the schedule, and write the alerts it causes, in one transaction."""
    async with connection.transaction():
        schedule_id = await connection.fetchval(
            FINISH_RUN, lease.run_id, lease.token, status, error_kind, error_message
        )
        if schedule_id is None:
            raise LeaseLost(lease.run_id)
        if status == "cancelled":
            return OutcomeFacts(status, error_kind, error_message, 0, False, 0, 0)
        counted = await connection.fetchrow(COUNT_OUTCOME, schedule_id, status == "succeeded")
        assert counted is not None
        outcome = OutcomeFacts(
            status=status,
            error_kind=error_kind,
            error_message=error_message,
            consecutive_failures=counted["consecutive_failures"],
            paused_now=bool(counted["was_active"] and not counted["is_active"]),
            failures_before=counted["failures_before"],
            threshold=counted["failure_threshold"],
        )
        if notice is not None:
            await insert_events(connection, events_for_outcome(notice, outcome))
        return outcome


async def run_state(connection: Queryable, run_id: int) -> tuple[str, str | None] | None:
    """(status, cancelled_by) of a run, or None when it was deleted: why a claim was lost."""
    row = await connection.fetchrow(RUN_STATE, run_id)
    return (row["status"], row["cancelled_by"]) if row is not None else None


def marker_for(run_id: int, attempt_token: str) -> str:
    return f"recomamp-run{run_id}-{attempt_token}"


EXPIRED_KEPT = """
SELECT id, results_path FROM schedule_runs
WHERE results_path IS NOT NULL AND results_kept_until IS NOT NULL AND results_kept_until < now()
"""


async def expired_kept_results(connection: Queryable) -> list[tuple[int, str]]:
    return [(row["id"], row["results_path"]) for row in await connection.fetch(EXPIRED_KEPT)]

"""Runs: claims and leases, every step's state, and the outcome. All SQL on `schedule_runs` lives here.

Fencing: each claim mints a new `lease_token`, and every write on the run is conditioned on
(id, lease_token). A write that matches no row means this claim is over (another replica adopted the
run after this one stalled past its lease, an operator cancelled it, or it was deleted): the write
raises `LeaseLost`, and the caller stops before its next side effect. A lease that has expired but that
nobody took is still this claim's: its writes pass, and the heartbeat renews it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recomamp.domain.alerts import OutcomeFacts, RunNotice, events_for_outcome
from recomamp.domain.runs import ACTIVE_STATUSES
from recomamp.store.db import Connection, Queryable
from recomamp.store.outbox import insert_events


class LeaseLost(Exception):
    """This claim of the run is over: it was adopted, cancelled or deleted. Stop; record nothing."""

    def __init__(self, run_id: int) -> None:
        super().__init__(f"run {run_id}: this claim no longer holds the run")
        self.run_id = run_id


@dataclass(frozen=True)
class RunLease:
    """One claim of one run. Every write on the run carries it."""

    run_id: int
    token: uuid.UUID
    # The run's claim count when this claim was taken: it only grows, so it orders claims. Snowflake's load
    # ledger keeps the highest claim that wrote, and a lower one cannot commit after it.
    claim: int = 0


# Claims are serialised across replicas for a few milliseconds, so that the counts of runs in flight
# (global and per instance) they check cannot be raced past the limits.
CLAIM_LOCK = "recomamp.claim_runs"

COUNT_LEASED = """
SELECT instance_id, count(*) AS n FROM schedule_runs
WHERE status = 'running' AND lease_token IS NOT NULL AND lease_expires_at > now()
GROUP BY instance_id
"""

# Runnable runs, fairly: each AMC instance offers its own oldest runs (by priority, then due time) up to
# its remaining per-instance room, and the instances take turns (rank 1 of every instance, then rank 2…),
# so one instance's backlog never holds back another's.
SELECT_CLAIMABLE = """
WITH leased AS (
    SELECT instance_id, count(*) AS n FROM schedule_runs
    WHERE status = 'running' AND lease_token IS NOT NULL AND lease_expires_at > now()
    GROUP BY instance_id
), instances AS (
    SELECT DISTINCT instance_id FROM schedule_runs WHERE status IN ('pending', 'running')
)
SELECT c.id
FROM instances i
LEFT JOIN leased l ON l.instance_id = i.instance_id
CROSS JOIN LATERAL (
    SELECT r.id, r.priority, r.scheduled_for,
           row_number() OVER (ORDER BY r.priority, r.scheduled_for, r.id) AS rank
    FROM schedule_runs r
    WHERE r.instance_id = i.instance_id
      AND r.status IN ('pending', 'running')
      AND (r.lease_token IS NULL OR r.lease_expires_at <= now())
      AND (r.not_before IS NULL OR r.not_before <= now())
      AND r.cancel_requested_at IS NULL
    ORDER BY r.priority, r.scheduled_for, r.id
    LIMIT GREATEST($1 - COALESCE(l.n, 0), 0)
) c
ORDER BY c.rank, c.priority, c.scheduled_for, c.id
LIMIT $2
"""

# A new token per claim. A claim that finds the previous claim's lease expired after it had started
# work counts an interruption: that holder stopped mid-run (crashed, killed or stalled).
TAKE_LEASES = """
UPDATE schedule_runs
SET lease_token = gen_random_uuid(), lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
    status = 'running', claims = claims + 1,
    interruptions = interruptions + CASE WHEN lease_token IS NOT NULL AND lease_worked THEN 1 ELSE 0 END,
    lease_worked = FALSE, not_before = NULL, wait_reason = NULL, updated_at = now()
WHERE id IN (SELECT id FROM schedule_runs WHERE id = ANY($1::bigint[]) FOR UPDATE SKIP LOCKED)
RETURNING id, lease_token, claims
"""

RENEW_LEASES = """
UPDATE schedule_runs r SET lease_expires_at = now() + make_interval(secs => $3)
FROM unnest($1::bigint[], $2::uuid[]) AS l(id, token)
WHERE r.id = l.id AND r.lease_token = l.token
RETURNING r.id
"""

# Drain: the run goes back to pending, at its step; the next claim (here or elsewhere) continues it.
RELEASE_LEASES = """
UPDATE schedule_runs r
SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL, status = 'pending', updated_at = now()
FROM unnest($1::bigint[], $2::uuid[]) AS l(id, token)
WHERE r.id = l.id AND r.lease_token = l.token
"""

# Immediately before a side effect that cannot be undone (the AMC POST, the Snowflake COMMIT): this claim
# must still hold the run, and gets a full lease for the side effect. A lease that expired while nobody
# took it (the token is unchanged, so no other claim exists) is still this claim's.
CHECK_FRESH = """
UPDATE schedule_runs SET lease_expires_at = now() + make_interval(secs => $3)
WHERE id = $1 AND lease_token = $2
RETURNING id
"""

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

RUN_STATE = "SELECT status, cancelled_by, lease_token FROM schedule_runs WHERE id = $1"


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


async def claim_runs(
    connection: Connection,
    *,
    owner: str,
    lease_seconds: float,
    max_global: int,
    max_per_instance: int,
    limit: int,
    exclude: Sequence[int] = (),
) -> list[RunLease]:
    """Lease up to `limit` runnable runs, within the global and per-instance limits over all replicas."""
    if limit <= 0:
        return []
    async with connection.transaction():
        # A claim lost in a server crash is made again; its coroutines find their token gone at the first
        # write, and every irreversible step (the POST, the COMMIT) checks the lease with a durable write.
        await connection.execute("SET LOCAL synchronous_commit = off")
        await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", CLAIM_LOCK)
        leased = sum(row["n"] for row in await connection.fetch(COUNT_LEASED))
        room = min(limit, max_global - leased)
        if room <= 0:
            return []
        # A run this process still works on holds a live lease, so it is not claimable; but one whose lease ran
        # out while its coroutine goes on must not get a second coroutine here: dropped (cheaply, here).
        skip = set(exclude)
        candidates = await connection.fetch(SELECT_CLAIMABLE, max_per_instance, room)
        chosen = [row["id"] for row in candidates if row["id"] not in skip]
        if not chosen:
            return []
        rows = await connection.fetch(TAKE_LEASES, chosen, owner, lease_seconds)
        return [RunLease(row["id"], row["lease_token"], row["claims"]) for row in rows]


async def renew_leases(connection: Queryable, leases: Sequence[RunLease], lease_seconds: float) -> set[int]:
    """Extend every lease this process holds; returns the ids still held (the others were taken)."""
    if not leases:
        return set()
    rows = await connection.fetch(
        RENEW_LEASES, [lease.run_id for lease in leases], [lease.token for lease in leases], lease_seconds
    )
    return {row["id"] for row in rows}


async def release_leases(connection: Queryable, leases: Sequence[RunLease]) -> None:
    if leases:
        await connection.execute(RELEASE_LEASES, [lease.run_id for lease in leases], [lease.token for lease in leases])


async def check_fresh(connection: Queryable, lease: RunLease, *, lease_seconds: float) -> None:
    """Raise LeaseLost unless this claim still holds the run; renew its lease for the side effect to come."""
    if await connection.fetchval(CHECK_FRESH, lease.run_id, lease.token, lease_seconds) is None:
        raise LeaseLost(lease.run_id)


async def _fenced(connection: Queryable, sql: str, lease: RunLease, *args: object) -> None:
    status = await connection.execute(sql, lease.run_id, lease.token, *args)
    if status.endswith(" 0"):
        raise LeaseLost(lease.run_id)


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
    await _fenced(connection, SET_STEP, lease, step)


async def set_attempt_step(connection: Queryable, lease: RunLease, attempt_step: str) -> None:
    await _fenced(connection, SET_ATTEMPT_STEP, lease, attempt_step)


async def mark_submitting(connection: Queryable, lease: RunLease, marker: str) -> tuple[str, datetime]:
    row = await connection.fetchrow(MARK_SUBMITTING, lease.run_id, lease.token, marker)
    if row is None:
        raise LeaseLost(lease.run_id)
    return row["submit_marker"], row["submit_started_at"]


async def mark_submitted(connection: Queryable, lease: RunLease, execution_id: str, status: str) -> None:
    await _fenced(connection, MARK_SUBMITTED, lease, execution_id, status)


async def set_amc_status(
    connection: Queryable,
    lease: RunLease,
    status: str,
    reason: str | None,
    *,
    terminal: bool,
    expire_time: datetime | None,
) -> None:
    await _fenced(connection, SET_AMC_STATUS, lease, status, reason, terminal, expire_time)


async def mark_downloaded(
    connection: Queryable, lease: RunLease, *, files: int, rows: int | None, path: str, size: int
) -> None:
    await _fenced(connection, MARK_DOWNLOADED, lease, files, rows, path, size)


async def set_snowflake(
    connection: Queryable, lease: RunLease, status: str, table: str | None, rows: int | None, error: str | None
) -> None:
    await _fenced(connection, SET_SNOWFLAKE, lease, status, table, rows, error)


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
    await _fenced(connection, DEFER_RUN, lease, delay_seconds, kind, message, wait_reason, attempt_before)


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


def active_statuses() -> list[str]:
    return list(ACTIVE_STATUSES)


# --- creating runs: one statement for scheduled fires, catch-up, run-now, backfills and reruns -------------


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


EXPIRED_KEPT = """
SELECT id, results_path FROM schedule_runs
WHERE results_path IS NOT NULL AND results_kept_until IS NOT NULL AND results_kept_until < now()
"""


async def expired_kept_results(connection: Queryable) -> list[tuple[int, str]]:
    return [(row["id"], row["results_path"]) for row in await connection.fetch(EXPIRED_KEPT)]


# --- operations on runs (services.runs) --------------------------------------------------------------------

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

# retry-upload takes a fenced lease like a run: refused while a replica (or another retry-upload) holds one.
LEASE_FOR_UPLOAD = """
UPDATE schedule_runs
SET lease_token = gen_random_uuid(), lease_owner = $2, lease_expires_at = now() + make_interval(secs => $3),
    claims = claims + 1, updated_at = now()
WHERE id = $1 AND status IN ('succeeded', 'failed') AND (lease_token IS NULL OR lease_expires_at <= now())
RETURNING lease_token, claims
"""
FINISH_UPLOAD = """
UPDATE schedule_runs
SET status = CASE WHEN $3 AND status = 'failed' AND error_kind = 'snowflake' THEN 'succeeded' ELSE status END,
    error_kind = CASE WHEN $3 AND error_kind = 'snowflake' THEN NULL ELSE error_kind END,
    error_message = CASE WHEN $3 AND error_kind = 'snowflake' THEN NULL ELSE error_message END,
    -- The run had ended before the retry (LEASE_FOR_UPLOAD takes only an ended run): its step is that again,
    -- not the `uploading` the load step wrote on the way.
    step = 'finished',
    lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND lease_token = $2
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


async def lease_for_upload(connection: Queryable, run_id: int, owner: str, lease_seconds: float) -> RunLease | None:
    row = await connection.fetchrow(LEASE_FOR_UPLOAD, run_id, owner, lease_seconds)
    return RunLease(run_id, row["lease_token"], row["claims"]) if row is not None else None


async def finish_upload(connection: Queryable, lease: RunLease, *, loaded: bool) -> None:
    await _fenced(connection, FINISH_UPLOAD, lease, loaded)


async def failed_for_reauth(connection: Queryable, user_id: int, since: datetime) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(FAILED_FOR_REAUTH, user_id, since)]


async def progress(connection: Queryable, run_ids: Sequence[int]) -> dict[str, int]:
    return {row["status"]: int(row["n"]) for row in await connection.fetch(PROGRESS, list(run_ids))}

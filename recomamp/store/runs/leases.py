"""Claims and leases of runs: who may work on a run now. Fencing lives here.

Each claim mints a new `lease_token`, and every write on the run is conditioned on (id, lease_token). A write
that matches no row means this claim is over (another replica adopted the run after this one stalled past its
lease, an operator cancelled it, or it was deleted): the write raises `LeaseLost`, and the caller stops before
its next side effect. A lease that has expired but that nobody took is still this claim's: its writes pass,
and the heartbeat renews it.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from recomamp.store.db import Connection, Queryable


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


async def fenced(connection: Queryable, sql: str, lease: RunLease, *args: object) -> None:
    status = await connection.execute(sql, lease.run_id, lease.token, *args)
    if status.endswith(" 0"):
        raise LeaseLost(lease.run_id)


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


async def lease_for_upload(connection: Queryable, run_id: int, owner: str, lease_seconds: float) -> RunLease | None:
    row = await connection.fetchrow(LEASE_FOR_UPLOAD, run_id, owner, lease_seconds)
    return RunLease(run_id, row["lease_token"], row["claims"]) if row is not None else None


async def finish_upload(connection: Queryable, lease: RunLease, *, loaded: bool) -> None:
    await fenced(connection, FINISH_UPLOAD, lease, loaded)

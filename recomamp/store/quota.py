"""AMC's ad-hoc execution quota, counted in Postgres so that every replica shares one count.

A slot is taken (one row in amc_submissions) immediately before each POST /workflowExecutions, under a
per-instance advisory lock and fenced by the run's lease. The window is rolling: a slot frees when the
submission it counts is `window_seconds` old. A backfill never takes a slot while a scheduled run of the
same instance waits for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from recomamp.domain.alerts import quota_event
from recomamp.store.db import Connection, Queryable
from recomamp.store.outbox import insert_events
from recomamp.store.runs import LeaseLost, RunLease

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('recomamp.amc_quota.' || $1, 0))"

BLOCKED = "SELECT blocked_until, reason FROM amc_quota_blocks WHERE instance_key = $1 AND blocked_until > now()"

USED = """
SELECT count(*) AS used, min(submitted_at) AS oldest FROM (
    SELECT submitted_at FROM amc_submissions
    WHERE instance_key = $1 AND submitted_at > now() - make_interval(secs => $2)
    ORDER BY submitted_at DESC
    LIMIT $3
) recent
"""

# Runs of this AMC instance that wait for a slot and go before this one (a backfill waits for them).
WAITING_AHEAD = """
SELECT count(*) FROM schedule_runs r JOIN amc_instances i ON i.id = r.instance_id
WHERE r.status = 'pending' AND r.wait_reason = 'amc_quota' AND r.priority < $2 AND r.id <> $3
  AND i.instance_id = $1
"""

TAKE = """
INSERT INTO amc_submissions (instance_key, run_id)
SELECT $1, r.id FROM schedule_runs r WHERE r.id = $2 AND r.lease_token = $3
RETURNING id
"""

RECENT_ALERT = """
SELECT 1 FROM notifications WHERE event = 'quota_exhausted' AND subject = $1
  AND created_at > now() - make_interval(secs => $2)
"""

BLOCK = """
INSERT INTO amc_quota_blocks (instance_key, blocked_until, reason) VALUES ($1, $2, $3)
ON CONFLICT (instance_key) DO UPDATE SET blocked_until = GREATEST(amc_quota_blocks.blocked_until, $2),
    reason = EXCLUDED.reason, created_at = now()
"""

USAGE = """
SELECT instance_key, count(*) AS used FROM amc_submissions
WHERE submitted_at > now() - make_interval(secs => $1)
GROUP BY instance_key ORDER BY instance_key
"""

PRUNE = "DELETE FROM amc_submissions WHERE submitted_at < now() - make_interval(secs => $1)"


@dataclass(frozen=True)
class SlotDecision:
    granted: bool
    used: int
    limit: int
    next_slot: datetime | None = None  # when not granted: the earliest time a slot may free
    reason: str | None = None


async def take_slot(
    connection: Connection,
    lease: RunLease,
    *,
    instance_key: str,
    amc_instance_id: str,
    priority: int,
    limit: int,
    window_seconds: float,
) -> SlotDecision:
    """Take one submission slot for `lease`'s run, or say when one frees."""
    async with connection.transaction():
        await connection.execute(LOCK, instance_key)
        now: datetime = await connection.fetchval("SELECT now()")
        blocked = await connection.fetchrow(BLOCKED, instance_key)
        if blocked is not None:
            return SlotDecision(False, limit, limit, blocked["blocked_until"], blocked["reason"])
        usage = await connection.fetchrow(USED, instance_key, window_seconds, limit)
        assert usage is not None
        used = int(usage["used"])
        if used >= limit:
            next_slot = usage["oldest"] + timedelta(seconds=window_seconds)
            if await connection.fetchval(RECENT_ALERT, f"quota:{instance_key}", window_seconds) is None:
                await insert_events(connection, [quota_event(instance_key, used, limit, next_slot, lease.run_id)])
            return SlotDecision(False, used, limit, next_slot, "the daily ad-hoc quota is used up")
        if priority > 0 and used + 1 >= limit:
            ahead = await connection.fetchval(WAITING_AHEAD, amc_instance_id, priority, lease.run_id)
            if ahead:
                # The last slot goes to a scheduled run that waits for it, not to a backfill.
                return SlotDecision(
                    False, used, limit, now + timedelta(seconds=60), "the last slot is kept for scheduled runs"
                )
        if await connection.fetchval(TAKE, instance_key, lease.run_id, lease.token) is None:
            raise LeaseLost(lease.run_id)
        return SlotDecision(True, used + 1, limit)


async def block(connection: Queryable, instance_key: str, until: datetime, reason: str) -> None:
    await connection.execute(BLOCK, instance_key, until, reason)


async def usage(connection: Queryable, window_seconds: float) -> dict[str, int]:
    return {row["instance_key"]: int(row["used"]) for row in await connection.fetch(USAGE, window_seconds)}


async def prune(connection: Queryable, window_seconds: float) -> int:
    status = await connection.execute(PRUNE, window_seconds)
    return int(status.split()[-1])

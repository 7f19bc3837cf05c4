"""AMC's ad-hoc execution quota, counted in Postgres so that every replica shares one count.

A slot is taken (one row in amc_submissions) immediately before each POST /workflowExecutions, under a
per-instance advisory lock and fenced by the run's lease, in the one transaction that lets the run submit.
The window is rolling: a slot frees when the submission it counts is `window_seconds` old, counted from
when AMC's answer came back (`posted`), since AMC counts the POST when it receives it. A backfill never
takes a slot while a scheduled run of the same instance waits for one. When AMC refuses a POST our count
let through, `refused` gives the slot back and blocks the instance until AMC's next slot.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from recomamp.domain.alerts import quota_event
from recomamp.domain.quota import RefusalWait, kept_slot_recheck_at, next_slot_after_refusal
from recomamp.store.db import Connection, Queryable
from recomamp.store.outbox import insert_events
from recomamp.store.runs import LeaseLost, RunLease

LOCK = "SELECT pg_advisory_xact_lock(hashtextextended('recomamp.amc_quota.' || $1, 0))"

# The time after the lock is ours: now() would be when the transaction began, before it waited for the lock.
NOW = "SELECT clock_timestamp()"

BLOCKED = "SELECT blocked_until, reason FROM amc_quota_blocks WHERE instance_key = $1 AND blocked_until > $2"

# $4 is NOW's answer. Only the latest `limit` rows matter: the oldest of them is the one that frees next.
USED = """
SELECT count(*) AS used, min(submitted_at) AS oldest FROM (
    SELECT submitted_at FROM amc_submissions
    WHERE instance_key = $1 AND submitted_at > $4::timestamptz - make_interval(secs => $2)
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
INSERT INTO amc_submissions (instance_key, run_id, submitted_at)
SELECT $1, r.id, $4 FROM schedule_runs r WHERE r.id = $2 AND r.lease_token = $3
RETURNING id
"""

# AMC answered (or the POST's fate is uncertain): the slot counts from now, which is after AMC counted it.
POSTED = "UPDATE amc_submissions SET submitted_at = clock_timestamp() WHERE id = $1"

# AMC refused the POST: it created nothing and counted nothing, so neither do we.
GIVE_BACK = "DELETE FROM amc_submissions WHERE id = $1"

RECENT_ALERT = """
SELECT 1 FROM notifications WHERE event = 'quota_exhausted' AND subject = $1
  AND created_at > now() - make_interval(secs => $2)
"""

BLOCK = """
INSERT INTO amc_quota_blocks (instance_key, blocked_until, reason) VALUES ($1, $2, $3)
ON CONFLICT (instance_key) DO UPDATE SET blocked_until = GREATEST(amc_quota_blocks.blocked_until, $2),
    reason = EXCLUDED.reason, created_at = now()
RETURNING blocked_until
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
    slot_id: int | None = None  # when granted: the row to stamp once AMC answered (`posted`)


@dataclass(frozen=True)
class Refusal:
    """AMC refused a POST our count let through: what our count said, and until when the instance waits."""

    local_used: int  # our count in the window, without the refused POST
    limit: int
    wait: RefusalWait
    first: bool  # no block was in force: this refusal is the one that says so in the log


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
        now: datetime = await connection.fetchval(NOW)
        blocked = await connection.fetchrow(BLOCKED, instance_key, now)
        if blocked is not None:
            return SlotDecision(False, limit, limit, blocked["blocked_until"], blocked["reason"])
        usage = await connection.fetchrow(USED, instance_key, window_seconds, limit, now)
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
                    False,
                    used,
                    limit,
                    kept_slot_recheck_at(now, window_seconds),
                    "the last slot is kept for scheduled runs",
                )
        slot_id = await connection.fetchval(TAKE, instance_key, lease.run_id, lease.token, now)
        if slot_id is None:
            raise LeaseLost(lease.run_id)
        return SlotDecision(True, used + 1, limit, slot_id=int(slot_id))


async def posted(connection: Queryable, slot_id: int) -> None:
    """The POST that took `slot_id` came back (created, or uncertain): its slot counts from now."""
    await connection.execute(POSTED, slot_id)


async def refused(
    connection: Connection,
    *,
    slot_id: int | None,
    instance_key: str,
    limit: int,
    window_seconds: float,
    retry_after_seconds: float | None,
    fallback_seconds: float,
    detail: str,
) -> Refusal:
    """AMC refused the POST that took `slot_id` for its quota: give the slot back, and block the instance (for
    every replica) until AMC's next slot, so that no other run sends it a POST it would refuse."""
    async with connection.transaction():
        await connection.execute(LOCK, instance_key)
        if slot_id is not None:
            await connection.execute(GIVE_BACK, slot_id)
        now: datetime = await connection.fetchval(NOW)
        already = await connection.fetchrow(BLOCKED, instance_key, now)
        usage = await connection.fetchrow(USED, instance_key, window_seconds, limit, now)
        assert usage is not None
        local_used = int(usage["used"])
        wait = next_slot_after_refusal(
            now=now,
            local_used=local_used,
            local_oldest=usage["oldest"],
            window_seconds=window_seconds,
            retry_after_seconds=retry_after_seconds,
            fallback_seconds=fallback_seconds,
        )
        reason = (
            f"AMC refused an execution for its quota while our count said {local_used} of {limit}: {detail}; "
            f"nothing is submitted to this instance before {wait.until:%Y-%m-%d %H:%M:%S} UTC"
        )
        # An earlier block may reach further (AMC's Retry-After, say): the run waits for whichever is later.
        until: datetime = await connection.fetchval(BLOCK, instance_key, wait.until, reason)
        if until > wait.until:
            wait = RefusalWait(until, "block_in_force")
        return Refusal(local_used, limit, wait, first=already is None)


async def block(connection: Queryable, instance_key: str, until: datetime, reason: str) -> None:
    await connection.execute(BLOCK, instance_key, until, reason)


async def usage(connection: Queryable, window_seconds: float) -> dict[str, int]:
    return {row["instance_key"]: int(row["used"]) for row in await connection.fetch(USAGE, window_seconds)}


async def prune(connection: Queryable, window_seconds: float) -> int:
    status = await connection.execute(PRUNE, window_seconds)
    return int(status.split()[-1])

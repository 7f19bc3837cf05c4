"""Claiming runs: the global and per-instance limits hold across replicas, counted in the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg

from recomamp.domain.runs import LOAD_QUEUED_ATTEMPT_STEP, Step
from recomamp.store.runs import RunLease, begin_attempt, claim_runs, set_attempt_step, set_step


async def _seed(
    db: asyncpg.Connection, runs_per_instance: int, instances: tuple[str, ...] = ("i1", "i2"), *, start_minute: int = 0
) -> None:
    if await db.fetchval("SELECT count(*) FROM users") == 0:
        await db.execute("INSERT INTO users (email) VALUES ('u@example.com')")
    for instance in instances:
        instance_id = await db.fetchval(
            "INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id) "
            "VALUES (1, $1, 'E', 'M') RETURNING id",
            instance,
        )
        schedule_id = await db.fetchval(
            "INSERT INTO workflow_schedules (name, owner_id, instance_id, sql_query, preset, time_of_day) "
            "VALUES ('s', 1, $1, 'SELECT 1', 'daily', '06:00') RETURNING id",
            instance_id,
        )
        base = datetime(2026, 11, 1, tzinfo=UTC)
        for n in range(runs_per_instance):
            await db.execute(
                "INSERT INTO schedule_runs (schedule_id, instance_id, scheduled_for) VALUES ($1, $2, $3)",
                schedule_id,
                instance_id,
                base + timedelta(minutes=start_minute + n),
            )


async def _leased_by_instance(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch(
        "SELECT i.instance_id, count(*) AS n FROM schedule_runs r JOIN amc_instances i ON i.id = r.instance_id "
        "WHERE r.lease_owner IS NOT NULL GROUP BY 1"
    )
    return {row["instance_id"]: row["n"] for row in rows}


async def test_limits_hold_across_replicas(db: asyncpg.Connection, db_dsn: str) -> None:
    await _seed(db, runs_per_instance=10)
    first = await claim_runs(db, owner="a", lease_seconds=60, max_global=5, max_per_instance=3, limit=100)
    assert len(first) == 5
    leased = await _leased_by_instance(db)
    assert max(leased.values()) <= 3
    other = await asyncpg.connect(db_dsn)
    try:
        # Another replica, with room of its own, gets nothing: the global count is shared.
        assert await claim_runs(other, owner="b", lease_seconds=60, max_global=5, max_per_instance=3, limit=100) == []
        # When a lease expires, its run is claimable again, by anyone, and counted once, with a new token.
        await db.execute(
            "UPDATE schedule_runs SET lease_expires_at = now() - interval '1 second' WHERE id = $1", first[0].run_id
        )
        again = await claim_runs(other, owner="b", lease_seconds=60, max_global=5, max_per_instance=3, limit=100)
        assert [lease.run_id for lease in again] == [first[0].run_id]
        assert again[0].token != first[0].token
    finally:
        await other.close()
    row = await db.fetchrow("SELECT claims, attempt, interruptions FROM schedule_runs WHERE id = $1", first[0].run_id)
    assert row is not None
    # Claimed twice, but no claim started work: lease churn costs no attempt and is no interruption.
    assert (row["claims"], row["attempt"], row["interruptions"]) == (2, 0, 0)


async def test_a_busy_instance_does_not_block_another(db: asyncpg.Connection) -> None:
    await _seed(db, runs_per_instance=10)
    claimed = await claim_runs(db, owner="a", lease_seconds=60, max_global=8, max_per_instance=2, limit=100)
    assert await _leased_by_instance(db) == {"i1": 2, "i2": 2}
    assert len(claimed) == 4


async def test_one_instances_backlog_never_starves_another(db: asyncpg.Connection) -> None:
    """300 older runs on one instance (limit 3), 5 newer on another: both get runs in the first pass."""
    await _seed(db, runs_per_instance=300, instances=("busy",))
    await _seed(db, runs_per_instance=5, instances=("idle",), start_minute=10_000)
    claimed = await claim_runs(db, owner="a", lease_seconds=60, max_global=20, max_per_instance=3, limit=20)
    assert await _leased_by_instance(db) == {"busy": 3, "idle": 3}
    assert len(claimed) == 6


async def test_scheduled_runs_are_claimed_before_backfills(db: asyncpg.Connection) -> None:
    await _seed(db, runs_per_instance=4, instances=("i1",))
    # The older two are a backfill's: lower priority.
    await db.execute("UPDATE schedule_runs SET trigger = 'backfill', priority = 10 WHERE id IN (1, 2)")
    claimed = await claim_runs(db, owner="a", lease_seconds=60, max_global=2, max_per_instance=2, limit=2)
    assert sorted(lease.run_id for lease in claimed) == [3, 4]


async def _claim_after_the_last_one_died(db: asyncpg.Connection, owner: str) -> RunLease:
    await db.execute("UPDATE schedule_runs SET lease_expires_at = now() - interval '1 second'")
    (lease,) = await claim_runs(db, owner=owner, lease_seconds=60, max_global=5, max_per_instance=5, limit=5)
    return lease


async def test_a_claim_that_died_queued_for_a_snowflake_thread_uses_no_attempt(db: asyncpg.Connection) -> None:
    await _seed(db, runs_per_instance=1, instances=("i1",))
    started = datetime.now(UTC)
    lease = await _claim_after_the_last_one_died(db, "a")
    assert (await begin_attempt(db, lease, started)).number == 1
    await set_step(db, lease, Step.UPLOADING.value)
    # The next claim resumes the upload (progress since the first: not counted) and waits for a thread
    # behind other loads; its replica dies there.
    lease = await _claim_after_the_last_one_died(db, "b")
    assert (await begin_attempt(db, lease, started)).number == 1
    await set_attempt_step(db, lease, LOAD_QUEUED_ATTEMPT_STEP)
    lease = await _claim_after_the_last_one_died(db, "c")
    assert (await begin_attempt(db, lease, started)).number == 1  # it never started the load: not an attempt
    # This claim gets a thread and starts the load, and its replica dies mid-load: the next claim counts.
    await set_attempt_step(db, lease, LOAD_QUEUED_ATTEMPT_STEP)
    await set_attempt_step(db, lease, Step.UPLOADING.value)
    lease = await _claim_after_the_last_one_died(db, "d")
    assert (await begin_attempt(db, lease, started)).number == 2
    # And so does a claim after that one, if it dies at the same step again.
    lease = await _claim_after_the_last_one_died(db, "e")
    assert (await begin_attempt(db, lease, started)).number == 3

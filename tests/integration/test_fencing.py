"""Exactly-once under stalls: real replicas paused with SIGSTOP, a heartbeat blocked by a table lock, and a
kill storm. Afterwards every run succeeded, with exactly one AMC execution, loaded into Snowflake exactly once
over all replicas, and no process ever ran two coroutines for one run."""

from __future__ import annotations

import asyncio
import random
import re
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from recomamp.crypto import SecretBox
from recomamp.sandbox.embedded import FakeSnowflake
from recomamp.sandbox.simulator import AmcSimulator, Fault
from recomamp.store.db import create_pool
from tests.conftest import ConfigWriter
from tests.integration.conftest import add_user, make_lwa
from tests.integration.processes import Replica, count_events, overlapping_coroutines, stop_all
from tests.integration.world import (
    add_due_schedule,
    add_snowflake,
    add_tenant,
    snowflake_rows,
    wait_until,
    write_world_config,
)

pytestmark = pytest.mark.slow

LEASE = {"lease_seconds": 3.0, "heartbeat_interval_seconds": 1.0}
_MARKER = re.compile(r"recomamp-run(\d+)-")


def executions_per_run(simulator: AmcSimulator) -> Counter[int]:
    """AMC executions created, by the run whose marker they carry."""
    counts: Counter[int] = Counter()
    for execution in simulator.executions.values():
        match = _MARKER.search(execution.workflow_id + " " + (execution.sql_query or ""))
        assert match is not None, execution
        counts[int(match.group(1))] += 1
    return counts


async def seed(
    pool: asyncpg.Pool,
    box: SecretBox,
    simulator: AmcSimulator,
    snow: FakeSnowflake,
    runs: int,
    *,
    instances: int = 4,
) -> tuple[str, list[int]]:
    database = f"FENCE_{uuid.uuid4().hex[:8].upper()}"
    simulator.default_profile.rows = 30
    simulator.default_profile.files = 1
    simulator.adhoc_quota = None
    tenants = [await add_tenant(pool, box, simulator, f"t{i}@example.com", f"amcF{i}") for i in range(instances)]
    for tenant in tenants:
        await add_snowflake(pool, box, tenant, snow.host, snow.port, database)
    schedules = [
        await add_due_schedule(pool, tenants[i % instances], f"s{i}", table="fenced_results") for i in range(runs)
    ]
    return database, schedules


def replica_config(write_config: ConfigWriter, db_dsn: str, simulator: AmcSimulator, **daemon: object) -> Path:
    return write_world_config(
        write_config,
        db_dsn,
        simulator,
        amc={"adhoc_executions_per_day": 10_000},
        **LEASE,
        max_concurrent_runs=40,
        max_runs_per_instance=40,
        run_retry_delay_seconds=0.5,
        **daemon,
    )


async def outcome(pool: asyncpg.Pool) -> tuple[Counter[str], int]:
    rows = await pool.fetch("SELECT status, attempt FROM schedule_runs WHERE status <> 'skipped'")
    return Counter(r["status"] for r in rows), max((r["attempt"] for r in rows), default=0)


async def all_succeeded(pool: asyncpg.Pool, runs: int) -> bool:
    statuses, _ = await outcome(pool)
    return statuses["succeeded"] == runs


def assert_exactly_once(simulator: AmcSimulator, replicas: list[Replica], runs: int) -> None:
    per_run = executions_per_run(simulator)
    assert len(per_run) == runs and set(per_run.values()) == {1}, per_run
    # One committed load per run, even when a replica froze between its fence check and its COMMIT: the
    # Snowflake load ledger makes the adopter find that commit and write nothing again.
    loads = count_events(replicas, "snowflake_load_completed")
    assert len(loads) == runs and set(loads.values()) == {1}, loads
    assert overlapping_coroutines(replicas) == []


async def rows_per_schedule(snow: FakeSnowflake, database: str) -> dict[int, int]:
    rows = await snowflake_rows(
        snow, database, 'SELECT "RECOMAMP_SCHEDULE_ID", COUNT(*) FROM AMC.FENCED_RESULTS GROUP BY 1'
    )
    return {int(k): int(v) for k, v in rows}


# Its phases have deadlines of their own (each says what it waits for), up to 2.5 minutes in all on a
# loaded machine: past pytest's 120 s default, which killed it mid-storm under a CPU hog.
@pytest.mark.timeout(300)
async def test_a_replica_paused_for_several_leases_alone_and_then_beside_another_never_doubles_a_run(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
    tmp_path: Path,
) -> None:
    runs = 20
    database, _ = await seed(pool, box, simulator, fakesnow_server, runs)
    simulator.default_profile.running_seconds = 6  # the runs poll AMC while the replica is frozen
    config = replica_config(write_config, db_dsn, simulator)
    a = Replica("a", config, tmp_path, env={"RECOMAMP_LOGGING__LEVEL": "debug"})
    b = Replica("b", config, tmp_path, env={"RECOMAMP_LOGGING__LEVEL": "debug"})
    try:
        # Alone: frozen for four leases while its runs poll; on resume nobody else took them.
        await a.start()
        await wait_until(lambda: len(simulator.executions) == runs, seconds=30, what="every run to be submitted")
        a.pause()
        await asyncio.sleep(12)
        a.resume()
        # Beside another: frozen again while b runs; b adopts what a held once the leases expire.
        await b.start()
        await asyncio.sleep(1.0)
        a.pause()
        await asyncio.sleep(8)
        a.resume()
        await wait_until(lambda: all_succeeded(pool, runs), seconds=90, what="every run to succeed")
    finally:
        await stop_all([a, b])
    statuses, _ = await outcome(pool)
    assert statuses == Counter({"succeeded": runs})
    assert_exactly_once(simulator, [a, b], runs)
    assert set((await rows_per_schedule(fakesnow_server, database)).values()) == {30}
    assert any(e["event"] == "run_lease_lost" for e in a.events())  # b did take runs from the frozen a


async def test_a_heartbeat_blocked_by_a_table_lock_never_doubles_a_run(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
    tmp_path: Path,
) -> None:
    runs = 12
    await seed(pool, box, simulator, fakesnow_server, runs)
    simulator.default_profile.running_seconds = 4
    config = replica_config(write_config, db_dsn, simulator)
    replicas = [Replica(n, config, tmp_path, env={"RECOMAMP_LOGGING__LEVEL": "debug"}) for n in ("a", "b")]
    locker = await asyncpg.connect(db_dsn)
    try:
        for replica in replicas:
            await replica.start()
        await wait_until(lambda: len(simulator.executions) >= 6, seconds=30, what="runs to be submitted")
        # Nobody can renew, write or claim for two leases; then everybody races for the expired leases.
        async with locker.transaction():
            await locker.execute("LOCK TABLE schedule_runs IN ACCESS EXCLUSIVE MODE")
            await asyncio.sleep(7)
        await wait_until(lambda: all_succeeded(pool, runs), seconds=90, what="every run to succeed")
    finally:
        await locker.close()
        await stop_all(replicas)
    assert_exactly_once(simulator, replicas, runs)


# Its phases have deadlines of their own (each says what it waits for), up to 2.5 minutes in all on a
# loaded machine: past pytest's 120 s default, which killed it mid-storm under a CPU hog.
@pytest.mark.timeout(300)
async def test_a_kill_storm_loses_nothing_doubles_nothing_and_burns_no_attempts(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
    tmp_path: Path,
) -> None:
    runs = 40
    database, schedules = await seed(pool, box, simulator, fakesnow_server, runs)
    simulator.default_profile.running_seconds = 1.5
    config = replica_config(write_config, db_dsn, simulator, max_run_attempts=5)
    replicas = [Replica(n, config, tmp_path, env={"RECOMAMP_LOGGING__LEVEL": "debug"}) for n in ("a", "b")]
    chooser = random.Random(7)
    kills = 0
    try:
        for replica in replicas:
            await replica.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 40
        while loop.time() < deadline and not await all_succeeded(pool, runs):
            await asyncio.sleep(chooser.uniform(2.0, 4.0))
            victim = chooser.choice(replicas)
            await victim.kill()
            kills += 1
            await victim.start()
        await wait_until(lambda: all_succeeded(pool, runs), seconds=90, what="every run to succeed")
    finally:
        await stop_all(replicas)
    assert kills >= 3
    statuses, most_attempts = await outcome(pool)
    assert statuses == Counter({"succeeded": runs})
    assert most_attempts < 5  # nobody gave up, and nobody came close
    per_run = executions_per_run(simulator)
    assert len(per_run) == runs and set(per_run.values()) == {1}
    assert overlapping_coroutines(replicas) == []
    assert await rows_per_schedule(fakesnow_server, database) == dict.fromkeys(schedules, 30)


async def test_a_refresh_lease_is_short_and_renewed_while_its_holder_lives(
    db_dsn: str, simulator: AmcSimulator, box: SecretBox, http: aiohttp.ClientSession
) -> None:
    """The refresh lease lasts 0.5 s here and the refresh 1.5 s (a 503, a wait, then OK): the holder renews it,
    so the other replica waits for its token instead of refreshing again. Short, so that a replica killed
    mid-refresh holds its user up for the lease only (a lease as long as the retry sequence stalled the
    kill-storm test for minutes)."""
    from recomamp.config import RetrySettings
    from recomamp.domain.retry import TokenPolicy
    from recomamp.services.tokens import TokenService

    policy = TokenPolicy.from_settings(RetrySettings(lwa_server_error_waits=(1.5, 1.5)), refresh_margin_seconds=300)
    pools = [await create_pool(db_dsn, size=3, command_timeout=10, connect_timeout=5) for _ in range(2)]
    try:
        user_id = await add_user(pools[0], box, "lin@example.com", simulator.add_user("lin@example.com"))
        simulator.add_faults("lwa_token", Fault.http(503), user="lin@example.com")
        holder, other = (
            TokenService(
                pool, make_lwa(http, simulator), box, policy, wait_poll_seconds=0.05, refresh_lease_seconds=0.5
            )
            for pool in pools
        )
        first = asyncio.create_task(holder.access_token(user_id))
        while simulator.calls["lwa_token"] == 0:  # the holder has the lease and met the 503
            await asyncio.sleep(0.01)
        tokens = await asyncio.gather(first, other.access_token(user_id))
        lease = await pools[0].fetchval("SELECT refresh_lease_token FROM users WHERE id = $1", user_id)
    finally:
        for pool in pools:
            await pool.close()
    assert tokens[0] == tokens[1]
    assert simulator.calls["lwa_token"] == 2  # one sequence (503, OK): the other replica never refreshed
    assert lease is None  # released when the refresh ended


async def test_two_replicas_refresh_one_user_through_503s_with_one_sequence_and_no_command_timeout(
    db_dsn: str, simulator: AmcSimulator, box: SecretBox, http: aiohttp.ClientSession
) -> None:
    """LWA answers 503, 503, then OK, with real waits between attempts; a command timeout shorter than the
    whole sequence proves nobody holds a transaction (or waits on a lock) across it."""
    from recomamp.config import RetrySettings
    from recomamp.domain.retry import TokenPolicy
    from recomamp.services.tokens import TokenService

    policy = TokenPolicy.from_settings(RetrySettings(lwa_server_error_waits=(0.6, 0.6)), refresh_margin_seconds=300)
    pools = [await create_pool(db_dsn, size=5, command_timeout=0.5, connect_timeout=5) for _ in range(2)]
    try:
        user_id = await add_user(pools[0], box, "ada@example.com", simulator.add_user("ada@example.com"))
        simulator.add_faults("lwa_token", Fault.http(503), Fault.http(503), user="ada@example.com")
        services = [
            TokenService(pool, make_lwa(http, simulator), box, policy, wait_poll_seconds=0.05) for pool in pools
        ]
        tokens = await asyncio.gather(*(service.access_token(user_id) for service in services for _ in range(5)))
    finally:
        for pool in pools:
            await pool.close()
    assert len(set(tokens)) == 1
    assert simulator.calls["lwa_token"] == 3  # one sequence: 503, 503, OK

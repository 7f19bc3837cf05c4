"""AMC's ad-hoc quota, counted locally, against the simulator's own count of it (time-compressed windows).

AMC counts a POST when it handles it. Our count must never free a slot before AMC does, however long a POST
takes; and when AMC refuses one our count let through, the run waits for AMC's next slot (not an hour) and lands.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Iterator
from datetime import timedelta

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.daemon.process import Daemon
from recomamp.sandbox.simulator import AmcSimulator, Fault
from recomamp.store import quota as quota_store
from recomamp.testing import LogCapture, capture_logs
from tests.conftest import ConfigWriter
from tests.integration.world import add_due_schedule, add_tenant, wait_until, write_world_config


@pytest.fixture
def log_stream() -> Iterator[LogCapture]:
    with capture_logs() as captured:
        yield captured


async def serve_until_succeeded(daemon: Daemon, pool: asyncpg.Pool, count: int, what: str) -> None:
    serving = asyncio.create_task(daemon.run())
    try:

        async def landed() -> bool:
            return bool(await pool.fetchval("SELECT count(*) FROM schedule_runs WHERE status = 'succeeded'") == count)

        # Generous: each wait is a few seconds of quota window; the deadline only stops a hung test.
        await wait_until(landed, seconds=90, what=what)
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(serving, 30) == 0


async def test_a_slow_post_keeps_its_slot_until_amc_frees_it(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    """The edge of the rolling window: the first POST reaches AMC 1 s after its slot was taken. Counted from when
    the slot was taken, our window freed it 1 s before AMC's did, and the second run's POST was refused."""
    window = 2.0
    simulator.adhoc_quota = 1
    simulator.quota_window_seconds = window
    simulator.add_faults("create_execution", Fault.slow(1.0))
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcS")
    for name in ("first", "second"):
        await add_due_schedule(pool, tenant, name)
    config = write_world_config(
        write_config, db_dsn, simulator, amc={"adhoc_executions_per_day": 1, "quota_window_seconds": window}
    )
    await serve_until_succeeded(wiring.daemon(load_config(config)), pool, 2, "both runs to land, one slot per window")
    assert simulator.pending_faults() == 0  # the slow POST happened
    assert simulator.calls["quota_refusal"] == 0  # we never sent AMC a POST it had no slot for
    assert len(simulator.executions_for("amcS")) == 2


async def test_amc_refuses_while_our_count_says_free_and_the_run_waits_for_the_next_slot_and_lands(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    log_stream: LogCapture,
) -> None:
    """Another tool used one of the instance's two slots: our count says 1 of 2 when AMC says 2 of 2."""
    window = 3.0
    simulator.adhoc_quota = 2
    simulator.quota_window_seconds = window
    simulator.submissions["amcR"] = deque([time.time()])  # the other tool's execution
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcR")
    for name in ("first", "second"):
        await add_due_schedule(pool, tenant, name)
    config = write_world_config(
        write_config,
        db_dsn,
        simulator,
        # The fixed back-off is an hour: a run that waited for it would never land within the test.
        amc={"adhoc_executions_per_day": 2, "quota_window_seconds": window, "quota_refusal_backoff_seconds": 3600},
    )
    await serve_until_succeeded(
        wiring.daemon(load_config(config)), pool, 2, "the refused run to land at AMC's next slot"
    )
    assert simulator.calls["quota_refusal"] == 1
    created = sorted(e.created_monotonic for e in simulator.executions_for("amcR"))
    assert len(created) == 2
    # The refused run went in once our first execution aged out of AMC's window: a window later, not an hour.
    assert window - 0.1 <= created[1] - created[0] <= window + 10
    (corrected,) = log_stream.events("amc_quota_count_corrected")
    assert (corrected["local_used"], corrected["amc_used"], corrected["limit"]) == (1, 2, 2)
    assert corrected["wait_basis"] == "our_oldest_submission"
    # The refused POST gave its slot back: our count holds the two executions AMC created, no more.
    assert await pool.fetchval("SELECT count(*) FROM amc_submissions") == 2
    waited = await pool.fetchval("SELECT count(*) FROM schedule_runs WHERE claims > 1 AND attempt = 1")
    assert waited == 1  # the wait cost no attempt


async def test_a_refusal_while_a_block_is_in_force_waits_for_the_block_and_is_not_logged_again(
    pool: asyncpg.Pool,
) -> None:
    async def refuse(retry_after: float | None) -> quota_store.Refusal:
        async with pool.acquire() as connection:
            return await quota_store.refused(
                connection,
                slot_id=None,
                instance_key="https://amc/amcX",
                limit=30,
                window_seconds=86_400,
                retry_after_seconds=retry_after,
                fallback_seconds=3600,
                detail="quota exceeded",
            )

    # None of ours in the window and no Retry-After: nothing to count from, so the fallback (an hour).
    first = await refuse(None)
    assert first.first and (first.wait.basis, first.local_used) == ("fallback", 0)
    # Another run's POST, in flight meanwhile, is refused with a Retry-After of 2 minutes: the block reaches further.
    second = await refuse(120)
    assert not second.first  # one log line for the episode, not one per refused run
    assert (second.wait.basis, second.wait.until) == ("block_in_force", first.wait.until)
    now = await pool.fetchval("SELECT now()")
    assert timedelta(minutes=59) < first.wait.until - now <= timedelta(minutes=60)
    assert await pool.fetchval("SELECT blocked_until FROM amc_quota_blocks") == first.wait.until
    # Once the block is over, AMC's Retry-After is the wait.
    await pool.execute("UPDATE amc_quota_blocks SET blocked_until = now() - interval '1 second'")
    third = await refuse(120)
    assert third.first and third.wait.basis == "retry_after"
    assert timedelta(seconds=110) < third.wait.until - now <= timedelta(seconds=125)

"""Windows are the unit of truth: backfill, run-now and misfires, against real Postgres through the services
the CLI calls. A window gets at most one active run, and a window that succeeded gets no new run."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter
from datetime import UTC, date, datetime, timedelta

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.domain.models import ScheduleCreatePreset
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services import schedules
from recomamp.services.schedules import ScheduleRefused
from tests.conftest import ConfigWriter
from tests.integration.test_cli import cli
from tests.integration.world import add_due_schedule, add_tenant, wait_until, write_world_config

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


async def _weekly(db: asyncpg.Connection, **fields: object) -> int:
    if await db.fetchval("SELECT count(*) FROM users") == 0:
        await db.execute("INSERT INTO users (email) VALUES ('ada@example.com')")
        await db.execute(
            "INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id) "
            "VALUES (1, 'amc1', 'E', 'M')"
        )
    schedule = ScheduleCreatePreset(
        name="weekly",
        user_email="ada@example.com",
        instance_id="amc1",
        sql_query="SELECT 1",
        preset="weekly",
        day_of_week="monday",
        time_of_day="06:00",
        timezone="America/New_York",
        **fields,
    )
    return await schedules.create(db, schedule, NOW - timedelta(days=120))


async def _runs(db: asyncpg.Connection, schedule_id: int) -> list[asyncpg.Record]:
    return await db.fetch(
        "SELECT id, trigger, status, window_start, window_end FROM schedule_runs WHERE schedule_id = $1 "
        "ORDER BY window_start",
        schedule_id,
    )


async def test_a_backfill_of_eight_weekly_windows_makes_eight_runs_and_again_none(db: asyncpg.Connection) -> None:
    schedule_id = await _weekly(db)
    plan = await schedules.backfill(db, schedule_id, date(2026, 9, 1), date(2026, 10, 26), NOW)
    assert len(plan.created) == 8
    runs = await _runs(db, schedule_id)
    assert [r["trigger"] for r in runs] == ["backfill"] * 8
    starts = [r["window_start"] for r in runs]
    assert all(later - earlier == timedelta(days=7) for earlier, later in itertools.pairwise(starts))
    # The windows tile: each starts where the one before ended.
    assert all(runs[i]["window_end"] == runs[i + 1]["window_start"] for i in range(7))

    again = await schedules.backfill(db, schedule_id, date(2026, 9, 1), date(2026, 10, 26), NOW)
    assert again.created == []
    assert {w.state for w in again.windows} == {"pending"}
    assert len(await _runs(db, schedule_id)) == 8

    # A window that failed is run again by the next backfill; one that succeeded is not.
    await db.execute("UPDATE schedule_runs SET status = 'failed' WHERE id = $1", runs[0]["id"])
    await db.execute("UPDATE schedule_runs SET status = 'succeeded' WHERE id = $1", runs[1]["id"])
    third = await schedules.backfill(db, schedule_id, date(2026, 9, 1), date(2026, 10, 26), NOW)
    assert len(third.created) == 1
    assert [w.state for w in third.windows][:2] == ["created", "succeeded"]


async def test_a_backfill_with_no_complete_window_says_where_windows_start(db: asyncpg.Connection) -> None:
    schedule_id = await _weekly(db)
    with pytest.raises(ScheduleRefused, match="windows start on"):
        await schedules.backfill(db, schedule_id, date(2027, 1, 5), date(2027, 1, 6), NOW)
    with pytest.raises(ScheduleRefused, match="is before --from"):
        await schedules.backfill(db, schedule_id, date(2026, 10, 1), date(2026, 9, 1), NOW)


async def test_run_now_twice_is_refused_while_the_window_has_an_active_run(db: asyncpg.Connection) -> None:
    schedule_id = await _weekly(db)
    first = await schedules.run_now(db, schedule_id, NOW)
    with pytest.raises(ScheduleRefused, match=rf"run {first.run_id} is already pending .*runs cancel {first.run_id}"):
        await schedules.run_now(db, schedule_id, NOW)
    # Once it succeeded, a deliberate re-run of the same window is allowed: it replaces the window's rows.
    await db.execute("UPDATE schedule_runs SET status = 'succeeded' WHERE id = $1", first.run_id)
    second = await schedules.run_now(db, schedule_id, NOW)
    assert second.window == first.window
    runs = await _runs(db, schedule_id)
    assert [(r["trigger"], r["status"]) for r in runs] == [("manual", "succeeded"), ("manual", "pending")]


async def test_run_now_names_the_real_window_starts_for_a_date_off_the_grid(db: asyncpg.Connection) -> None:
    schedule_id = await _weekly(db)
    with pytest.raises(ScheduleRefused, match="is not the start of a window"):
        await schedules.run_now(db, schedule_id, NOW, window_start=date(2026, 11, 4))  # a Wednesday


@pytest.mark.parametrize(
    ("policy", "expected"),
    [
        ("catch_up", {("catch_up", "succeeded"): 2, ("schedule", "succeeded"): 1}),
        ("coalesce", {("schedule", "succeeded"): 1, ("schedule", "skipped"): 2}),
    ],
)
async def test_after_a_three_day_outage_catch_up_runs_each_window_and_coalesce_runs_the_latest(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
    policy: str,
    expected: dict[tuple[str, str], int],
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amc1")
    schedule_id = await add_due_schedule(pool, tenant, "daily", overdue_days=2)  # three fires missed
    await pool.execute("UPDATE workflow_schedules SET misfire_policy = $2 WHERE id = $1", schedule_id, policy)
    config = load_config(write_world_config(write_config, db_dsn, simulator))
    assert await wiring.daemon(config, once=True).run() == 0
    runs = await pool.fetch(
        "SELECT trigger, status, window_start, window_end FROM schedule_runs WHERE schedule_id = $1 "
        "ORDER BY window_start",
        schedule_id,
    )
    assert dict(Counter((r["trigger"], r["status"]) for r in runs)) == expected
    # Three distinct daily windows, tiled, whichever policy ran them.
    assert len({r["window_start"] for r in runs}) == 3
    assert all(runs[i]["window_end"] == runs[i + 1]["window_start"] for i in range(2))
    executions = simulator.calls["create_execution"]
    assert executions == sum(n for (_, status), n in expected.items() if status == "succeeded")


async def test_cancelling_a_running_run_cancels_its_execution_and_writes_nothing_to_snowflake(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    write_config: ConfigWriter,
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amc1")
    simulator.profile("amc1").running_seconds = 60  # long enough to be cancelled while it runs
    schedule_id = await add_due_schedule(pool, tenant, "daily", table="daily_results")
    config_path = write_world_config(write_config, db_dsn, simulator)
    daemon = wiring.daemon(load_config(config_path))
    serving = asyncio.create_task(daemon.run())

    async def submitted() -> bool:
        return bool(await pool.fetchval("SELECT amc_execution_id IS NOT NULL FROM schedule_runs"))

    await wait_until(submitted, seconds=45, what="the run to submit its execution")
    run_id = await pool.fetchval("SELECT id FROM schedule_runs WHERE schedule_id = $1", schedule_id)
    assert await cli(config_path, "runs", "cancel", str(run_id)) == 0

    async def cancelled() -> bool:
        return bool(await pool.fetchval("SELECT status FROM schedule_runs WHERE id = $1", run_id) == "cancelled")

    await wait_until(cancelled, seconds=45, what="the run to be cancelled before its execution ends on its own")
    daemon.request_stop()
    assert await serving == 0
    run = await pool.fetchrow("SELECT * FROM schedule_runs WHERE id = $1", run_id)
    assert run is not None
    assert run["cancelled_by"]
    assert run["snowflake_status"] in ("skipped", "pending")  # no load was attempted
    [execution] = simulator.executions_for("amc1")
    assert execution.status(time.monotonic()) == "CANCELLED"
    assert simulator.calls["download_file"] == 0
    assert simulator.calls["create_execution"] == 1

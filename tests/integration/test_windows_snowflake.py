"""Windows end to end, into the Snowflake emulator: whatever mix of scheduled runs, run-nows, re-runs, grid
edits, backfills under AMC's quota and retry-uploads after the result expired, no natural key (event_date,
campaign_id) lands twice in a schedule's table, and no window is lost."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.domain.models import ScheduleCreatePreset, ScheduleUpdate
from recomamp.domain.schedules import latest_fire
from recomamp.sandbox.embedded import FakeSnowflake, free_port
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services import schedules
from recomamp.services.schedules import ScheduleRefused
from recomamp.store import schedules as schedule_store
from tests.conftest import ConfigWriter
from tests.integration.test_cli import cli
from tests.integration.world import Tenant, add_snowflake, add_tenant, snowflake_rows, wait_until, write_world_config


async def key_counts(snow: FakeSnowflake, database: str, table: str) -> tuple[int, int, int]:
    """(rows, distinct natural keys, windows) in the schedule's table."""
    rows = await snowflake_rows(
        snow,
        database,
        "SELECT COUNT(*), COUNT(DISTINCT (event_date, campaign_id)), COUNT(DISTINCT recomamp_window_start) "
        f"FROM AMC.{table}",
    )
    total, keys, windows = rows[0]
    return int(total), int(keys), int(windows)


async def snowflake_tenant(
    pool: asyncpg.Pool, box: SecretBox, simulator: AmcSimulator, snow: FakeSnowflake, instance: str
) -> tuple[Tenant, str]:
    database = f"WIN_{uuid.uuid4().hex[:8].upper()}"
    await snowflake_rows(snow, "", f"CREATE DATABASE IF NOT EXISTS {database}")
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", instance)
    await add_snowflake(pool, box, tenant, snow.host, snow.port, database)
    return tenant, database


async def create_schedule(pool: asyncpg.Pool, tenant: Tenant, preset: str, table: str, **fields: Any) -> int:
    now = datetime.now(UTC)
    async with pool.acquire() as connection:
        return await schedules.create(
            connection,
            ScheduleCreatePreset(
                name=f"{preset} {table}",
                user_email=tenant.email,
                instance_id=tenant.instance,
                sql_query="SELECT event_date, campaign_id FROM sponsored_ads_traffic",
                preset=preset,
                time_of_day="06:00",
                day_of_week="monday" if preset == "weekly" else None,
                day_of_month=1 if preset == "monthly" else None,
                timezone="UTC",
                snowflake_table_name=table,
                **fields,
            ),
            now,
        )


async def once(config_path: Path) -> int:
    return await wiring.daemon(load_config(config_path), once=True).run()


@pytest.mark.parametrize("preset", ["daily", "weekly", "monthly"])
async def test_scheduled_run_now_twice_and_retry_upload_never_land_a_natural_key_twice(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
    preset: str,
) -> None:
    tenant, database = await snowflake_tenant(pool, box, simulator, fakesnow_server, "amcW")
    schedule_id = await create_schedule(pool, tenant, preset, "series")
    async with pool.acquire() as connection:  # due at its latest fire on the grid, as if the daemon had been down
        row = await schedule_store.schedule_row(connection, schedule_id)
        fire = latest_fire(schedule_store.cadence_from_row(row), datetime.now(UTC))
        assert fire is not None
        await schedule_store.make_due(connection, schedule_id, fire)
    config = write_world_config(write_config, db_dsn, simulator)
    assert await once(config) == 0  # the scheduled fire
    for _ in range(2):  # run-now twice: the same (latest) window, each a deliberate re-run
        async with pool.acquire() as connection:
            await schedules.run_now(connection, schedule_id, datetime.now(UTC))
        assert await once(config) == 0
    first = await pool.fetchval("SELECT min(id) FROM schedule_runs WHERE schedule_id = $1", schedule_id)
    assert await cli(config, "runs", "retry-upload", str(first)) == 0
    runs = await pool.fetch("SELECT status, window_start FROM schedule_runs WHERE schedule_id = $1", schedule_id)
    assert [r["status"] for r in runs] == ["succeeded"] * 3 and len({r["window_start"] for r in runs}) == 1
    total, keys, windows = await key_counts(fakesnow_server, database, "SERIES")
    assert (total, windows) == (keys, 1) and total > 0


async def test_a_grid_moving_edit_is_refused_without_keys_and_merged_with_them(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
) -> None:
    tenant, database = await snowflake_tenant(pool, box, simulator, fakesnow_server, "amcG")
    schedule_id = await create_schedule(pool, tenant, "weekly", "weekly_series")
    config = write_world_config(write_config, db_dsn, simulator)
    async with pool.acquire() as connection:
        await schedules.run_now(connection, schedule_id, datetime.now(UTC))
    assert await once(config) == 0
    before = await key_counts(fakesnow_server, database, "WEEKLY_SERIES")
    # A lag 3 days shorter moves every weekly window by 3 days: it would overlap the loaded one.
    async with pool.acquire() as connection:
        with pytest.raises(ScheduleRefused, match="moves the grid"):
            await schedules.update(connection, schedule_id, ScheduleUpdate(data_lag_days=11), datetime.now(UTC))
        # With key columns the overlap is merged on them: allowed, and nothing lands twice.
        await schedules.update(
            connection,
            schedule_id,
            ScheduleUpdate(data_lag_days=11, snowflake_key_columns=["event_date", "campaign_id"]),
            datetime.now(UTC),
        )
        await schedules.run_now(connection, schedule_id, datetime.now(UTC))
    assert await once(config) == 0
    total, keys, windows = await key_counts(fakesnow_server, database, "WEEKLY_SERIES")
    assert total == keys  # the three overlapping days were replaced, key by key
    assert keys > before[1] and windows == 2


async def test_a_backfill_under_a_quota_of_five_a_day_lands_every_window_and_never_exceeds_it(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
) -> None:
    """Time-compressed: a 'day' of 4 s. Twelve daily windows through five slots a day."""
    tenant, database = await snowflake_tenant(pool, box, simulator, fakesnow_server, "amcQ")
    simulator.adhoc_quota = 5
    simulator.quota_window_seconds = 4.0
    schedule_id = await create_schedule(pool, tenant, "daily", "backfilled")
    today = datetime.now(UTC).date()
    async with pool.acquire() as connection:
        plan = await schedules.backfill(
            connection, schedule_id, today - timedelta(days=40), today - timedelta(days=29), datetime.now(UTC)
        )
    assert len(plan.created) == 12
    config = write_world_config(
        write_config, db_dsn, simulator, amc={"adhoc_executions_per_day": 5, "quota_window_seconds": 4.0}
    )
    daemon = wiring.daemon(load_config(config))
    serving = asyncio.create_task(daemon.run())
    try:

        async def all_landed() -> bool:
            statuses = await pool.fetch("SELECT status FROM schedule_runs WHERE schedule_id = $1", schedule_id)
            return [r["status"] for r in statuses] == ["succeeded"] * 12

        # Three quota windows (12 s) at the least; generous for a loaded machine: only a hung run reaches it.
        await wait_until(all_landed, seconds=90, what="twelve backfilled windows to land")
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(serving, 30) == 0
    submitted = sorted(e.created_monotonic for e in simulator.executions_for("amcQ"))
    assert len(submitted) == 12
    # Never more than five in any window of the quota's length, so AMC never refused one. Each slot counts from
    # when AMC answered, so this holds however long a POST takes; 10 ms is for the simulator's monotonic clock
    # against Postgres' wall clock, not for a busy machine.
    assert all(submitted[i + 5] - submitted[i] >= 4.0 - 0.01 for i in range(len(submitted) - 5))
    assert simulator.calls["quota_refusal"] == 0
    waited = await pool.fetchval(
        "SELECT count(*) FROM schedule_runs WHERE schedule_id = $1 AND claims > 1", schedule_id
    )
    assert waited >= 5  # the rest waited for a slot instead of failing
    total, keys, windows = await key_counts(fakesnow_server, database, "BACKFILLED")
    assert (total, windows) == (keys, 12)


async def test_snowflake_down_past_the_result_expiry_is_loaded_later_from_the_kept_copy(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
) -> None:
    tenant, database = await snowflake_tenant(pool, box, simulator, fakesnow_server, "amcK")
    simulator.result_ttl_seconds = 2.0  # AMC's download links and results expire
    dead = free_port()  # Snowflake does not answer here
    await add_snowflake(pool, box, tenant, "127.0.0.1", dead, database)
    schedule_id = await create_schedule(pool, tenant, "daily", "kept")
    async with pool.acquire() as connection:
        await schedules.run_now(connection, schedule_id, datetime.now(UTC))
    config = write_world_config(write_config, db_dsn, simulator, keep_results_days=1)
    config.write_text(
        config.read_text().replace(
            "login_timeout_seconds = 10", "login_timeout_seconds = 2\nnetwork_timeout_seconds = 2"
        )
    )
    assert await once(config) == 1
    run = await pool.fetchrow("SELECT id, status, error_kind, results_path FROM schedule_runs")
    assert run is not None and (run["status"], run["error_kind"]) == ("failed", "snowflake")
    assert run["results_path"] and Path(run["results_path"]).exists()  # the result is kept
    await asyncio.sleep(2.5)  # past the result's expiry at AMC
    downloads = simulator.calls["download_file"]
    await add_snowflake(pool, box, tenant, fakesnow_server.host, fakesnow_server.port, database)  # Snowflake is back
    assert await cli(config, "runs", "retry-upload", str(run["id"])) == 0
    assert simulator.calls["download_file"] == downloads  # loaded from the kept copy, not from AMC
    assert await pool.fetchval("SELECT status FROM schedule_runs WHERE id = $1", run["id"]) == "succeeded"
    total, keys, windows = await key_counts(fakesnow_server, database, "KEPT")
    assert (total, windows) == (keys, 1) and total > 0

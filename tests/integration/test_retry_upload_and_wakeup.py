"""`runs retry-upload` after a Snowflake failure, and run-now waking a daemon through NOTIFY."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime

import asyncpg
import pytest

from recomamp import wiring
from recomamp.config import load_config
from recomamp.crypto import SecretBox
from recomamp.sandbox.embedded import FakeSnowflake
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services import schedules
from recomamp.services.runs import retry_upload
from recomamp.store import runs as run_store
from recomamp.wiring import open_services
from tests.conftest import ConfigWriter
from tests.integration.test_cli import cli
from tests.integration.world import add_due_schedule, add_snowflake, add_tenant, wait_until, write_world_config


async def test_a_failed_upload_is_loaded_again_from_fresh_links(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcA")
    await add_due_schedule(pool, tenant, "daily", table="daily_results")  # no Snowflake config yet
    config = load_config(write_world_config(write_config, db_dsn, simulator))
    assert await wiring.daemon(config, once=True).run() == 1
    run = await pool.fetchrow("SELECT * FROM schedule_runs")
    assert run is not None
    assert (run["status"], run["error_kind"], run["snowflake_status"]) == ("failed", "snowflake", "failed")
    assert "has no active Snowflake configuration" in run["error_message"]
    assert f"recomamp runs retry-upload {run['id']}" in run["error_message"]

    database = f"DB_{uuid.uuid4().hex[:8].upper()}"
    await add_snowflake(pool, box, tenant, fakesnow_server.host, fakesnow_server.port, database)
    assert run["results_path"] is not None  # the result is kept until it is loaded
    downloads_before = simulator.calls["download_urls"]
    async with open_services(config, replica="cli") as services:
        summary = await retry_upload(services, config, run["id"], owner="retry-upload:test")
        # The kept copy was loaded: AMC was not asked again.
        assert simulator.calls["download_urls"] == downloads_before
        # Loaded, so the kept copy is gone ([daemon] keep_results_days = 0): this one fetches fresh links.
        again = await retry_upload(services, config, run["id"], owner="retry-upload:test")
    assert simulator.calls["download_urls"] > downloads_before
    assert summary == again  # idempotent: the window is replaced
    assert summary == f"run {run['id']}: loaded 120 rows into {database}.AMC.DAILY_RESULTS"
    after = await pool.fetchrow("SELECT * FROM schedule_runs WHERE id = $1", run["id"])
    assert after is not None
    assert (after["status"], after["snowflake_status"], after["snowflake_rows"]) == ("succeeded", "completed", 120)
    assert (after["error_message"], after["lease_token"], after["results_path"]) == (None, None, None)
    assert simulator.calls["create_execution"] == 1


async def test_retry_upload_is_refused_naming_the_holder_while_another_holds_the_run(
    pool: asyncpg.Pool,
    db_dsn: str,
    box: SecretBox,
    simulator: AmcSimulator,
    fakesnow_server: FakeSnowflake,
    write_config: ConfigWriter,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ada@example.com", "amcA")
    await add_due_schedule(pool, tenant, "daily", table="daily_results")  # no Snowflake config: the load fails
    config_path = write_world_config(write_config, db_dsn, simulator)
    assert await wiring.daemon(load_config(config_path), once=True).run() == 1
    run_id = await pool.fetchval("SELECT id FROM schedule_runs")
    await add_snowflake(pool, box, tenant, fakesnow_server.host, fakesnow_server.port, f"DB_{uuid.uuid4().hex[:8]}")
    held = await run_store.lease_for_upload(pool, run_id, "retry-upload:other-shell", 60)
    assert held is not None
    capsys.readouterr()
    assert await cli(config_path, "runs", "retry-upload", str(run_id)) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1
    assert "held by retry-upload:other-shell" in error[0]
    assert "Traceback" not in error[0]
    # Nothing was loaded, and the holder's lease is untouched.
    row = await pool.fetchrow(
        "SELECT snowflake_status, lease_owner, lease_token FROM schedule_runs WHERE id = $1", run_id
    )
    assert row is not None
    assert (row["snowflake_status"], row["lease_owner"]) == ("failed", "retry-upload:other-shell")
    assert row["lease_token"] == held.token


async def listening(pool: asyncpg.Pool) -> bool:
    """A backend of the daemon's ran LISTEN (its last statement, on a connection that only waits)."""
    return bool(await pool.fetchval("SELECT count(*) > 0 FROM pg_stat_activity WHERE query LIKE 'LISTEN %'"))


async def test_run_now_wakes_a_sleeping_daemon(
    pool: asyncpg.Pool, db_dsn: str, box: SecretBox, simulator: AmcSimulator, write_config: ConfigWriter
) -> None:
    tenant = await add_tenant(pool, box, simulator, "ben@example.com", "amcB")
    schedule_id = await add_due_schedule(pool, tenant, "ben daily")
    await pool.execute(
        "UPDATE workflow_schedules SET next_run_at = now() + interval '1 day' WHERE id = $1", schedule_id
    )
    # A poll every 10 minutes: a wake-up within a minute is the NOTIFY's, however loaded the machine is.
    config = load_config(write_world_config(write_config, db_dsn, simulator, poll_interval_seconds=600.0))
    daemon = wiring.daemon(config)
    serving = asyncio.create_task(daemon.run())
    await wait_until(lambda: listening(pool), what="the daemon to LISTEN for wake-ups")
    await asyncio.sleep(1.0)  # past the first poll (the one at start): now it sleeps for ten minutes
    started = time.monotonic()
    async with pool.acquire() as connection:
        run_id = (await schedules.run_now(connection, schedule_id, datetime.now(UTC))).run_id

    async def succeeded() -> bool:
        return bool(await pool.fetchval("SELECT status FROM schedule_runs WHERE id = $1", run_id) == "succeeded")

    await wait_until(succeeded, seconds=60, what="the run-now run to succeed")
    woke_after = time.monotonic() - started
    daemon.request_stop()
    assert await serving == 0
    assert await pool.fetchval("SELECT status FROM schedule_runs WHERE id = $1", run_id) == "succeeded"
    assert woke_after < 60  # NOTIFY, not the 600 s poll
    next_run = await pool.fetchval("SELECT next_run_at FROM workflow_schedules WHERE id = $1", schedule_id)
    assert next_run > datetime.now(UTC)  # the regular cadence was left alone

"""A small world for daemon tests: Postgres, the simulator, and optionally fakesnow, wired by a config file."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from recomamp.config import Config, load_config
from recomamp.crypto import SecretBox
from recomamp.domain.models import ScheduleCreatePreset
from recomamp.sandbox.embedded import FakeSnowflake
from recomamp.sandbox.seed import add_sandbox_user
from recomamp.sandbox.simulator import AmcSimulator
from recomamp.services import schedules
from recomamp.store import schedules as schedule_store
from recomamp.store.snowflake_configs import SnowflakeConfigInput, save_config
from tests.conftest import ConfigWriter

FAST_RETRY = {
    "lwa_server_error_waits": [0.0],
    "lwa_throttle_waits": [0.0],
    "lwa_network_waits": [0.0],
    "amc_waits": [0.0],
    "amc_poll_initial_seconds": 0.02,
    "amc_poll_max_seconds": 0.1,
    "snowflake_waits": [0.0],
}


def write_world_config(
    write_config: ConfigWriter,
    dsn: str,
    simulator: AmcSimulator,
    amc: dict[str, object] | None = None,
    **daemon: object,
) -> Path:
    amc = amc or {}
    path = write_config(
        dsn=dsn,
        database={"outage_max_wait_seconds": 1.0},
        amazon={
            "client_id": simulator.client_id,
            "token_url": simulator.token_url,
            "amc_base_url": {"na": simulator.base_url, "eu": simulator.base_url, "fe": simulator.base_url},
            "request_timeout_seconds": 5.0,
        },
        daemon={
            "poll_interval_seconds": 0.2,
            "lease_seconds": 30.0,
            "drain_timeout_seconds": 5.0,
            "spool_dir": str(write_config.directory / "spool"),
            "control_socket": "",
            **daemon,
        },
        amc={"listing_lag_seconds": 0.05, **amc},
        metrics={"listen": ""},
        retry=FAST_RETRY,
        snowflake={"batch_rows": 1000, "thread_pool_size": 2, "login_timeout_seconds": 10},
    )
    # The writer puts its own client secret in the file: use the simulator's.
    (write_config.directory / "client_secret").write_text(simulator.client_secret + "\n")
    return path


@dataclass
class Tenant:
    email: str
    user_id: int
    instance: str


async def add_tenant(pool: asyncpg.Pool, box: SecretBox, simulator: AmcSimulator, email: str, instance: str) -> Tenant:
    # The advertiser id only has to differ between tenants; the instance id does that.
    user_id = await add_sandbox_user(pool, box, simulator, email, instance, advertiser_id=f"ENT-{instance}")
    return Tenant(email, user_id, instance)


async def add_snowflake(
    pool: asyncpg.Pool, box: SecretBox, tenant: Tenant, host: str, port: int, database: str
) -> None:
    await save_config(
        pool,
        tenant.user_id,
        SnowflakeConfigInput(
            account="acme-test",
            username="LOADER",
            database=database,
            default_schema="AMC",
            password="loader-password",
            host=host,
            port=port,
            protocol="http",
        ),
        encrypt=box.encrypt,
    )


async def add_due_schedule(
    pool: asyncpg.Pool, tenant: Tenant, name: str, *, table: str | None = None, overdue_days: int = 0
) -> int:
    now = datetime.now(UTC)
    async with pool.acquire() as connection:
        schedule_id = await schedules.create(
            connection,
            ScheduleCreatePreset(
                name=name,
                user_email=tenant.email,
                instance_id=tenant.instance,
                sql_query="SELECT campaign_id, SUM(impressions) FROM sponsored_ads_traffic GROUP BY 1",
                preset="daily",
                time_of_day=(now - timedelta(minutes=5)).strftime("%H:%M"),
                timezone="UTC",
                snowflake_table_name=table,
            ),
            now,
        )
        # Due now (or overdue): as if the daemon had been down.
        await schedule_store.make_due(connection, schedule_id, now - timedelta(days=overdue_days, minutes=5))
    return schedule_id


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], *, seconds: float = 60.0, what: str = "the condition"
) -> None:
    """Poll `condition` every 50 ms; fail the test, saying what never happened, after `seconds`. The default is
    generous: a condition met in a second on an idle machine may take many on a loaded one, and only a test
    that would hang reaches it."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {seconds:.0f} s waiting for {what}")


async def execution_submitted(pool: asyncpg.Pool, count: int = 1) -> bool:
    submitted = await pool.fetchval("SELECT count(*) FROM schedule_runs WHERE amc_execution_id IS NOT NULL")
    return bool(submitted == count)


def config_from(path: Path) -> Config:
    return load_config(path)


async def snowflake_rows(snow: FakeSnowflake, database: str, sql: str) -> list[tuple[Any, ...]]:
    """What the Snowflake emulator holds: one query over the real connector, off the event loop."""
    import snowflake.connector

    def query() -> list[tuple[Any, ...]]:
        connection = snowflake.connector.connect(
            account="x", user="x", password="x", host=snow.host, port=snow.port, protocol="http", database=database
        )
        try:
            cursor = connection.cursor()
            cursor.execute(sql)
            return list(cursor.fetchall())
        finally:
            connection.close()

    return await asyncio.to_thread(query)

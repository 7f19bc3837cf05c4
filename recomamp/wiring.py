"""The composition root: opens the adapters once (the pools, Login with Amazon, the AMC client, the Snowflake sink,
the metrics, the outage gate and the heartbeat) and hands them out, to the daemon and to the CLI's operations.

The daemon opens them once the database answers (`open_services`); a CLI command opens them for one operation, or
only a connection (`connect`). Nothing below this module opens an adapter of its own.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import aiohttp
import asyncpg

from recomamp.amazon.client import AmcClient
from recomamp.amazon.lwa import LwaClient
from recomamp.config import OWN_POOL_CONNECTIONS, Config
from recomamp.crypto import SecretBox
from recomamp.logs import register_secret
from recomamp.observe.metrics import Metrics
from recomamp.services.adapters import Services, amc_policy, token_policy
from recomamp.services.errors import DatabaseUnreachable
from recomamp.services.tokens import TokenService
from recomamp.snowflake.sink import SnowflakeSink
from recomamp.store.db import connect, create_pool, describe_dsn, is_connection_error
from recomamp.store.heartbeat import LeaseKeeper
from recomamp.store.outage import DatabaseGate, DatabaseHealth


def register_config_secrets(config: Config) -> None:
    """Secrets no log shape catches: mask their values wherever they might turn up."""
    register_secret(config.amazon.client_secret.get_secret_value())
    dsn = config.database.dsn.get_secret_value()
    password = dsn.split("://", 1)[-1].split("@", 1)[0].partition(":")[2] if "@" in dsn else ""
    register_secret(password)
    for target in config.notify.webhook:
        register_secret(target.url.get_secret_value())


@asynccontextmanager
async def open_services(
    config: Config,
    *,
    replica: str,
    health: DatabaseHealth | None = None,
    on_lease_lost: Callable[[int], None] = lambda _: None,
    metrics: Metrics | None = None,
) -> AsyncIterator[Services]:
    register_config_secrets(config)
    health = health or DatabaseHealth()
    dsn = config.database.dsn.get_secret_value()
    pool = await create_pool(
        dsn,
        size=config.pool_size,
        command_timeout=config.database.command_timeout_seconds,
        connect_timeout=config.database.connect_timeout_seconds,
    )
    control_pool = await create_pool(
        dsn,
        size=OWN_POOL_CONNECTIONS,
        command_timeout=config.database.command_timeout_seconds,
        connect_timeout=config.database.connect_timeout_seconds,
    )
    metrics = metrics or Metrics()
    try:
        async with aiohttp.ClientSession() as http:
            box = SecretBox(config.security.token_keys)
            lwa = LwaClient(
                http,
                token_url=config.amazon.token_url,
                client_id=config.amazon.client_id,
                client_secret=config.amazon.client_secret,
                timeout_seconds=config.amazon.request_timeout_seconds,
            )
            sink = SnowflakeSink(config.snowflake, config.retry)
            leases = LeaseKeeper(
                dsn,
                replica=replica,
                lease_seconds=config.daemon.lease_seconds,
                interval_seconds=config.daemon.heartbeat_seconds,
                health=health,
                command_timeout=config.database.command_timeout_seconds,
                connect_timeout=config.database.connect_timeout_seconds,
                on_lost=on_lease_lost,
            )
            services = Services(
                pool=pool,
                control_pool=control_pool,
                gate=DatabaseGate(health, max_wait=config.database.outage_max_wait_seconds),
                leases=leases,
                tokens=TokenService(pool, lwa, box, token_policy(config), observe=metrics.lwa_attempt),
                amc=AmcClient(http, client_id=config.amazon.client_id, policy=amc_policy(config)),
                sink=sink,
                http=http,
                metrics=metrics,
                _box=[box],
            )
            try:
                yield services
            finally:
                await sink.close(wait_seconds=0)
                await leases.close()
    finally:
        for each in (pool, control_pool):
            try:
                await asyncio.wait_for(each.close(), 10)
            except (TimeoutError, OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                each.terminate()


@asynccontextmanager
async def connection(config: Config) -> AsyncIterator[asyncpg.Connection]:
    """One connection for a CLI command. One that cannot be made is DatabaseUnreachable, naming the host."""
    dsn = config.database.dsn.get_secret_value()
    try:
        manager = connect(
            dsn,
            command_timeout=config.database.command_timeout_seconds,
            connect_timeout=config.database.connect_timeout_seconds,
        )
        opened = await manager.__aenter__()
    except Exception as exc:
        if is_connection_error(exc) or type(exc).__name__.startswith("Invalid"):
            raise DatabaseUnreachable(
                f"cannot reach the database at {describe_dsn(dsn)} ([database] dsn): {type(exc).__name__}: {exc}"
            ) from None
        raise
    try:
        yield opened
    finally:
        await manager.__aexit__(None, None, None)

"""The composition root: opens the adapters once (the pools, Login with Amazon, the AMC client, the Snowflake sink,
the metrics, the outage gate and the heartbeat) and hands them out, to the daemon and to the CLI's operations.

The daemon opens them once the database answers (`daemon()` hands it `open_services`); a CLI command opens them for
one operation. (A command that only reads or writes tables opens one connection, `services.database.connection`,
without importing this module: the adapters cost a second to import.)
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from pathlib import Path

import aiohttp
import asyncpg

from recomamp.amazon.client import AmcClient
from recomamp.amazon.lwa import LwaClient
from recomamp.config import OWN_POOL_CONNECTIONS, Config
from recomamp.crypto import SecretBox
from recomamp.daemon.process import Daemon, PipelineFactory
from recomamp.daemon.process import DaemonError as DaemonError  # re-exported: `recomamp run` reports it
from recomamp.logs import register_secret
from recomamp.observe.metrics import Metrics
from recomamp.services.adapters import Services, amc_policy, token_policy
from recomamp.services.tokens import REFRESH_LEASE_SECONDS, TokenService
from recomamp.snowflake.sink import SnowflakeSink
from recomamp.store.db import create_pool
from recomamp.store.heartbeat import LeaseKeeper
from recomamp.store.outage import DatabaseGate, DatabaseHealth
from recomamp.systemd import Notifier


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
                tokens=TokenService(
                    pool,
                    lwa,
                    box,
                    token_policy(config),
                    observe=metrics.lwa_attempt,
                    # As long as a run's lease, at most 15 s: a dead holder's goes as soon as its runs' do.
                    refresh_lease_seconds=min(REFRESH_LEASE_SECONDS, config.daemon.lease_seconds),
                ),
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


def daemon(
    config: Config,
    *,
    config_path: Path | None = None,
    once: bool = False,
    notifier: Notifier | None = None,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    pipeline_factory: PipelineFactory | None = None,
) -> Daemon:
    """The daemon over the real adapters: what `recomamp run` starts (the tests start it so too)."""
    return Daemon(
        config,
        open_services=open_services,
        config_path=config_path,
        once=once,
        notifier=notifier,
        clock=clock,
        pipeline_factory=pipeline_factory,
    )

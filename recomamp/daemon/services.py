"""The adapters a run needs, built from one config: used by the daemon and by the CLI's run operations."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
import asyncpg

from recomamp.amazon.client import AmcClient
from recomamp.amazon.lwa import LwaClient
from recomamp.amazon.transport import AmcRetryPolicy
from recomamp.config import OWN_POOL_CONNECTIONS, Config
from recomamp.crypto import SecretBox
from recomamp.daemon.database import DatabaseGate, DatabaseHealth
from recomamp.daemon.leases import LeaseKeeper
from recomamp.domain.retry import TokenPolicy
from recomamp.logs import register_secret
from recomamp.observe.metrics import Metrics
from recomamp.services.tokens import TokenService
from recomamp.snowflake.sink import SnowflakeSink
from recomamp.store.db import create_pool


def amc_policy(config: Config) -> AmcRetryPolicy:
    retry = config.retry
    return AmcRetryPolicy(
        max_attempts=retry.amc_max_attempts,
        waits=retry.amc_waits,
        retry_after_cap_seconds=retry.retry_after_cap_seconds,
        poll_initial_seconds=retry.amc_poll_initial_seconds,
        poll_max_seconds=retry.amc_poll_max_seconds,
        poll_multiplier=retry.amc_poll_multiplier,
        request_timeout_seconds=config.amazon.request_timeout_seconds,
        listing_lag_seconds=config.amc.listing_lag_seconds,
    )


def token_policy(config: Config) -> TokenPolicy:
    return TokenPolicy.from_settings(
        config.retry, config.amazon.token_refresh_margin_seconds, config.amazon.request_timeout_seconds
    )


def register_config_secrets(config: Config) -> None:
    """Secrets no log shape catches: mask their values wherever they might turn up."""
    register_secret(config.amazon.client_secret.get_secret_value())
    dsn = config.database.dsn.get_secret_value()
    password = dsn.split("://", 1)[-1].split("@", 1)[0].partition(":")[2] if "@" in dsn else ""
    register_secret(password)
    for target in config.notify.webhook:
        register_secret(target.url.get_secret_value())


@dataclass
class Services:
    pool: asyncpg.Pool  # the runs'
    control_pool: asyncpg.Pool  # the daemon's own tasks': they never queue behind runs
    gate: DatabaseGate
    leases: LeaseKeeper
    tokens: TokenService
    amc: AmcClient
    sink: SnowflakeSink
    http: aiohttp.ClientSession
    metrics: Metrics
    _box: list[SecretBox] = field(default_factory=list)

    def box(self) -> SecretBox:
        """The keys of now: a reload may have put a new key first."""
        return self._box[0]

    def reconfigure(self, config: Config) -> None:
        box = SecretBox(config.security.token_keys)
        self._box[:] = [box]
        self.tokens.reconfigure(token_policy(config), box)
        self.amc.reconfigure(amc_policy(config))
        self.sink.reconfigure(config.snowflake, config.retry)
        self.gate.reconfigure(config.database.outage_max_wait_seconds)
        self.leases.reconfigure(
            lease_seconds=config.daemon.lease_seconds, interval_seconds=config.daemon.heartbeat_seconds
        )


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

"""The adapters the application operations are handed (`recomamp.wiring` opens them), and the policies a config
gives them: one bundle for the daemon's runs and the CLI's operations alike."""

from __future__ import annotations

from dataclasses import dataclass, field

import aiohttp
import asyncpg

from recomamp.amazon.client import AmcClient
from recomamp.amazon.transport import AmcRetryPolicy
from recomamp.config import Config
from recomamp.crypto import SecretBox
from recomamp.domain.retry import TokenPolicy
from recomamp.observe.metrics import Metrics
from recomamp.services.tokens import TokenService
from recomamp.snowflake.sink import SnowflakeSink
from recomamp.store.heartbeat import LeaseKeeper
from recomamp.store.outage import DatabaseGate


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

"""The adapters a run needs, built from one config: used by the daemon and by `runs retry-upload`."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
import asyncpg

from recomamp.amazon.amc import AmcClient, AmcRetryPolicy
from recomamp.amazon.lwa import LwaClient
from recomamp.config import Config
from recomamp.crypto import SecretBox
from recomamp.daemon.pipeline import Services
from recomamp.snowflake.sink import SnowflakeSink
from recomamp.tokens import TokenPolicy, TokenService


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
    )


def token_policy(config: Config) -> TokenPolicy:
    return TokenPolicy.from_settings(config.retry, config.amazon.token_refresh_margin_seconds)


@asynccontextmanager
async def open_services(config: Config, pool: asyncpg.Pool) -> AsyncIterator[Services]:
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
        try:
            yield Services(
                pool=pool,
                tokens=TokenService(pool, lwa, box, token_policy(config)),
                amc=AmcClient(http, client_id=config.amazon.client_id, policy=amc_policy(config)),
                sink=sink,
                box=box,
            )
        finally:
            await asyncio.to_thread(sink.close)

"""AMC instance discovery: with the user's token, the accounts they can see and each account's instances."""

from __future__ import annotations

import os
import socket

from recomamp.amazon.accounts import AmcInstance
from recomamp.config import Config
from recomamp.daemon.services import open_services
from recomamp.services.load import UserTokenSource
from recomamp.store import catalog


def cli_replica() -> str:
    return f"cli:{socket.gethostname()}:{os.getpid()}"


async def discover(config: Config, email: str, *, region: str, add: bool) -> tuple[list[AmcInstance], int]:
    """(the instances found, how many were new). With `add`, each is stored with its apiEndpoint."""
    async with open_services(config, replica=cli_replica()) as services:
        user_id = await catalog.user_id_for(services.pool, email)
        tokens = UserTokenSource(services, user_id)
        base = config.amazon.amc_base_url.for_region(region)  # type: ignore[arg-type]
        found = await services.amc.accounts.discover(base, tokens)
        added = 0
        if add:
            async with services.pool.acquire() as connection, connection.transaction():
                for instance in found:
                    added += await catalog.upsert_discovered_instance(
                        connection,
                        user_id,
                        instance_id=instance.instance_id,
                        advertiser_id=instance.account.account_id,
                        marketplace_id=instance.account.marketplace_id,
                        region=region,
                        name=instance.instance_name,
                        api_endpoint=instance.api_endpoint,
                    )
    return found, added

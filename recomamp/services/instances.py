"""AMC instance discovery: with the user's token, the accounts they can see and each account's instances."""

from __future__ import annotations

import os
import socket
from typing import Any

from recomamp.amazon.accounts import AmcInstance
from recomamp.config import Config
from recomamp.services.adapters import Services
from recomamp.services.load import UserTokenSource
from recomamp.store import catalog
from recomamp.store.db import Queryable


def cli_replica() -> str:
    return f"cli:{socket.gethostname()}:{os.getpid()}"


async def discover(
    services: Services, config: Config, email: str, *, region: str, add: bool
) -> tuple[list[AmcInstance], int]:
    """(the instances found, how many were new). With `add`, each is stored with its apiEndpoint."""
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


async def add(
    connection: Queryable,
    email: str,
    *,
    instance_id: str,
    advertiser_id: str,
    marketplace_id: str,
    region: str,
    name: str | None,
) -> None:
    """An instance added by hand for the user. An unknown email is a LookupError that names it."""
    user_id = await catalog.user_id_for(connection, email)
    await catalog.add_instance(
        connection,
        user_id,
        instance_id=instance_id,
        advertiser_id=advertiser_id,
        marketplace_id=marketplace_id,
        region=region,
        name=name,
    )


async def list_all(connection: Queryable) -> list[dict[str, Any]]:
    return await catalog.list_instances(connection)

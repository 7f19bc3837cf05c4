"""Users and AMC instances, as operators manage them."""

from __future__ import annotations

from typing import Any

import asyncpg

from recomamp.store.db import Queryable


class NotFound(LookupError):
    """An unknown user, instance, schedule or run: the message names it and how to list what exists."""


async def add_user(connection: Queryable, email: str) -> int:
    if "@" not in email:
        raise ValueError(f"email: {email!r} is not an email address")
    try:
        user_id = await connection.fetchval("INSERT INTO users (email) VALUES ($1) RETURNING id", email.strip())
    except asyncpg.UniqueViolationError:
        raise ValueError(f"email: a user {email} already exists") from None
    return int(user_id)


async def user_id_for(connection: Queryable, email: str) -> int:
    user_id = await connection.fetchval("SELECT id FROM users WHERE lower(email) = lower($1)", email)
    if user_id is None:
        raise NotFound(
            f"user: no user {email}; add one with `recomamp users add {email}`, or see `recomamp users list`"
        )
    return int(user_id)


async def add_instance(
    connection: Queryable,
    user_id: int,
    *,
    instance_id: str,
    advertiser_id: str,
    marketplace_id: str,
    region: str,
    name: str | None = None,
) -> int:
    if region not in ("na", "eu", "fe"):
        raise ValueError(f"region: {region!r} is not a region; use na, eu or fe")
    try:
        row_id = await connection.fetchval(
            "INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id, region, name) "
            "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
            user_id,
            instance_id,
            advertiser_id,
            marketplace_id,
            region,
            name,
        )
    except asyncpg.UniqueViolationError:
        raise ValueError(f"instance_id: this user already has instance {instance_id}") from None
    return int(row_id)


async def instance_row_id(connection: Queryable, user_id: int, instance_id: str) -> int:
    row_id = await connection.fetchval(
        "SELECT id FROM amc_instances WHERE owner_id = $1 AND instance_id = $2", user_id, instance_id
    )
    if row_id is None:
        raise NotFound(
            f"instance: the user has no AMC instance {instance_id}; add it with `recomamp instances add`, "
            "or see `recomamp instances list`"
        )
    return int(row_id)


LIST_INSTANCES = """
SELECT i.id, u.email AS user_email, i.instance_id, i.advertiser_id, i.marketplace_id, i.region, i.name, i.api_endpoint
FROM amc_instances i JOIN users u ON u.id = i.owner_id ORDER BY i.id
"""

UPSERT_DISCOVERED = """
INSERT INTO amc_instances (owner_id, instance_id, advertiser_id, marketplace_id, region, name, api_endpoint)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (owner_id, instance_id) DO UPDATE SET advertiser_id = EXCLUDED.advertiser_id,
    marketplace_id = EXCLUDED.marketplace_id, name = COALESCE(EXCLUDED.name, amc_instances.name),
    api_endpoint = EXCLUDED.api_endpoint
RETURNING (xmax = 0) AS inserted
"""


async def list_instances(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(LIST_INSTANCES)]


async def upsert_discovered_instance(
    connection: Queryable,
    user_id: int,
    *,
    instance_id: str,
    advertiser_id: str,
    marketplace_id: str,
    region: str,
    name: str | None,
    api_endpoint: str | None,
) -> bool:
    """Store (or refresh) an instance found by discovery. True when it was new."""
    return bool(
        await connection.fetchval(
            UPSERT_DISCOVERED, user_id, instance_id, advertiser_id, marketplace_id, region, name, api_endpoint
        )
    )

"""Connections and the pool. JSON columns come back as Python objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from asyncpg.pool import PoolConnectionProxy

from recomamp.config import DatabaseSettings

# Anything that runs a query: a connection, a pool, or a connection borrowed from a pool.
Queryable = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy
# A single connection (its own, or borrowed from a pool): what a transaction needs.
Connection = asyncpg.Connection | PoolConnectionProxy


async def _init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(settings: DatabaseSettings) -> asyncpg.Pool:
    pool = await asyncpg.create_pool(
        settings.dsn.get_secret_value(),
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        command_timeout=settings.command_timeout_seconds,
        init=_init_connection,
    )
    assert pool is not None
    return pool


@asynccontextmanager
async def connect(settings: DatabaseSettings) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(
        settings.dsn.get_secret_value(), command_timeout=settings.command_timeout_seconds
    )
    await _init_connection(connection)
    try:
        yield connection
    finally:
        await connection.close()

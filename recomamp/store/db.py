"""Connections, the pool, and the one classifier of database failures. JSON columns come back as Python objects."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import asyncpg
from asyncpg.pool import PoolConnectionProxy

# Anything that runs a query: a connection, a pool, or a connection borrowed from a pool.
Queryable = asyncpg.Connection | asyncpg.Pool | PoolConnectionProxy
# A single connection (its own, or borrowed from a pool): what a transaction needs.
Connection = asyncpg.Connection | PoolConnectionProxy

# The database is away or going away: a server restarting, a network cut, a pool whose connections died.
# A retry heals these; anything else (a constraint, a syntax error) is a bug or bad data.
CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,  # 08xxx
    asyncpg.exceptions.OperatorInterventionError,  # 57xxx: shutdown, crash, cannot connect now, cancelled
    asyncpg.exceptions.TooManyConnectionsError,
    asyncpg.InterfaceError,  # the connection was closed under us
    asyncpg.exceptions.InternalClientError,  # a connection that died mid-query ("another operation is in progress")
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect or command timeout
)


def is_connection_error(exc: BaseException) -> bool:
    return isinstance(exc, CONNECTION_ERRORS)


def describe_dsn(dsn: str) -> str:
    """Where a DSN points, for messages: host, port and database, never the password."""
    parts = urlsplit(dsn)
    host = parts.hostname or "local socket"
    port = f":{parts.port}" if parts.port else ""
    return f"{host}{port}/{parts.path.lstrip('/') or '(default database)'}"


async def init_connection(connection: asyncpg.Connection) -> None:
    for type_name in ("json", "jsonb"):
        await connection.set_type_codec(type_name, encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def create_pool(
    dsn: str, *, size: int, command_timeout: float, connect_timeout: float, min_size: int = 0
) -> asyncpg.Pool:
    """A pool that opens connections when they are needed: creating it never fails on a database that is away."""
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min(min_size, size),
        max_size=size,
        command_timeout=command_timeout,
        timeout=connect_timeout,
        init=init_connection,
    )
    assert pool is not None
    return pool


async def open_connection(dsn: str, *, command_timeout: float, connect_timeout: float) -> asyncpg.Connection:
    connection = await asyncpg.connect(dsn, command_timeout=command_timeout, timeout=connect_timeout)
    await init_connection(connection)
    return connection


@asynccontextmanager
async def connect(
    dsn: str, *, command_timeout: float = 30.0, connect_timeout: float = 10.0
) -> AsyncIterator[asyncpg.Connection]:
    connection = await open_connection(dsn, command_timeout=command_timeout, connect_timeout=connect_timeout)
    try:
        yield connection
    finally:
        await connection.close()

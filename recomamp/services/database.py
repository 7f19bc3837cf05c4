"""The one connection a CLI command that reads or writes tables opens. Light to import on purpose: such a command
does not load the adapters (`recomamp.wiring`, a second of imports with the Snowflake connector)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

from recomamp.config import Config
from recomamp.services.errors import DatabaseUnreachable
from recomamp.store.db import connect, describe_dsn, is_connection_error


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

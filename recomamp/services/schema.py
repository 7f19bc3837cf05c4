"""The database schema, for `recomamp migrate`: up, down, and where each migration stands."""

from __future__ import annotations

from recomamp.store import migrations
from recomamp.store.db import Connection
from recomamp.store.migrations import MigrationState


async def migrate_up(connection: Connection, *, to: int | None) -> list[int]:
    """Apply the pending migrations (up to `to`), each in its own transaction; the versions applied."""
    return await migrations.migrate_up(connection, to=to)


async def migrate_down(connection: Connection, *, to: int) -> list[int]:
    """Roll back to `to`, newest first; the versions rolled back."""
    return await migrations.migrate_down(connection, to=to)


async def status(connection: Connection) -> list[MigrationState]:
    return await migrations.status(connection)

"""The run history as operators read it (`runs list`, `runs show`, `runs watch`). Reads only, and light to import on
purpose: these commands do not load the pipeline and the Snowflake connector that services.runs needs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recomamp.store import runs as run_store
from recomamp.store.db import Connection, Queryable


async def show(connection: Queryable, run_id: int) -> dict[str, Any] | None:
    """One run as `runs show` prints it (every step's time), or None when there is no such run."""
    return await run_store.show_run(connection, run_id)


async def list_recent(
    connection: Connection, *, schedule_id: int | None, status: str | None, trigger: str | None, limit: int
) -> list[dict[str, Any]]:
    """Runs, newest first, filtered as `runs list` asks."""
    return await run_store.list_runs(connection, schedule_id=schedule_id, status=status, trigger=trigger, limit=limit)


async def progress(connection: Connection, run_ids: Sequence[int]) -> dict[str, int]:
    """How many of these runs are in each status (what `runs watch` draws)."""
    return await run_store.progress(connection, run_ids)


async def in_flight_of_schedule(connection: Connection, schedule_id: int) -> list[int]:
    """The schedule's runs not yet ended (what `runs watch --schedule` follows)."""
    return await run_store.active_runs_of_schedule(connection, schedule_id)

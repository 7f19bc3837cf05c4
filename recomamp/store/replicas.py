"""Replicas that are alive: each heartbeat records itself, so `recomamp status` can say who holds what."""

from __future__ import annotations

from typing import Any

from recomamp.store.db import Queryable

BEAT = """
INSERT INTO replicas (name, hostname, pid, version, runs_held) VALUES ($1, $2, $3, $4, $5)
ON CONFLICT (name) DO UPDATE SET
    started_at = CASE WHEN replicas.pid <> EXCLUDED.pid OR replicas.stopped_at IS NOT NULL
                      THEN now() ELSE replicas.started_at END,
    hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, version = EXCLUDED.version,
    last_heartbeat_at = now(), runs_held = EXCLUDED.runs_held, stopped_at = NULL
"""
STOPPED = "UPDATE replicas SET stopped_at = now(), runs_held = 0 WHERE name = $1 AND pid = $2"
LIST = """
SELECT name, hostname, pid, version, started_at, last_heartbeat_at, runs_held, stopped_at,
       EXTRACT(EPOCH FROM now() - last_heartbeat_at) AS seconds_since_heartbeat
FROM replicas WHERE stopped_at IS NULL OR stopped_at > now() - interval '1 day'
ORDER BY name
"""
PRUNE = "DELETE FROM replicas WHERE last_heartbeat_at < now() - interval '7 days'"


async def beat(connection: Queryable, name: str, hostname: str, pid: int, version: str, runs_held: int) -> None:
    await connection.execute(BEAT, name, hostname, pid, version, runs_held)


async def stopped(connection: Queryable, name: str, pid: int) -> None:
    await connection.execute(STOPPED, name, pid)


async def list_replicas(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(LIST)]


async def prune(connection: Queryable) -> None:
    await connection.execute(PRUNE)

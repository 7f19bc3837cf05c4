"""The SQL of `recomamp plan` / `apply` / `export`: the whole fleet read at once, the writes the other stores do
not have (a user's region, an instance edited in place, where a secret came from), and the apply lock."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from recomamp.store.db import Queryable

SELECT_USERS = "SELECT id, email, region FROM users ORDER BY id"

SELECT_INSTANCES = """
SELECT i.id, u.email, i.instance_id, i.advertiser_id, i.marketplace_id, i.region, i.name
FROM amc_instances i JOIN users u ON u.id = i.owner_id
ORDER BY i.id
"""

SELECT_SNOWFLAKE = """
SELECT c.*, u.email FROM snowflake_configurations c JOIN users u ON u.id = c.user_id ORDER BY c.id
"""

# The live schedules: an archived one is history, not part of the fleet.
SELECT_LIVE_SCHEDULES = """
SELECT s.*, u.email AS user_email, i.instance_id AS instance_id
FROM workflow_schedules s JOIN users u ON u.id = s.owner_id JOIN amc_instances i ON i.id = s.instance_id
WHERE s.archived_at IS NULL
ORDER BY s.id
"""

SET_USER_REGION = "UPDATE users SET region = $2, updated_at = now() WHERE id = $1"

UPDATE_INSTANCE = """
UPDATE amc_instances SET advertiser_id = $3, marketplace_id = $4, region = $5, name = $6
WHERE owner_id = $1 AND instance_id = $2
"""

SET_SECRET_REFERENCES = "UPDATE snowflake_configurations SET secret_references = $2 WHERE user_id = $1"

# One apply at a time over all hosts: a transaction-scoped advisory lock, released by COMMIT or ROLLBACK (or
# by the connection dying), so a crashed apply never leaves it held. Two int4 keys: 'rcmp', and 24.
APPLY_LOCK_KEYS = (0x72636D70, 24)
TRY_APPLY_LOCK = "SELECT pg_try_advisory_xact_lock($1, $2)"
# Who holds it: the holder names itself in application_name before it takes the lock.
APPLY_LOCK_HOLDER = """
SELECT a.application_name, a.pid, a.xact_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::bigint::oid AND l.objid = $2::bigint::oid
  AND l.objsubid = 2 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""
NAME_SESSION = "SELECT set_config('application_name', $1, false)"


async def users(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(SELECT_USERS)]


async def instances(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(SELECT_INSTANCES)]


async def snowflake_configs(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(SELECT_SNOWFLAKE)]


async def live_schedules(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(SELECT_LIVE_SCHEDULES)]


async def set_user_region(connection: Queryable, user_id: int, region: str) -> None:
    await connection.execute(SET_USER_REGION, user_id, region)


async def update_instance(
    connection: Queryable,
    user_id: int,
    instance_id: str,
    *,
    advertiser_id: str,
    marketplace_id: str,
    region: str,
    name: str | None,
) -> None:
    await connection.execute(UPDATE_INSTANCE, user_id, instance_id, advertiser_id, marketplace_id, region, name)


async def set_secret_references(connection: Queryable, user_id: int, references: dict[str, dict[str, str]]) -> None:
    await connection.execute(SET_SECRET_REFERENCES, user_id, references)


async def name_session(connection: Queryable, name: str) -> None:
    await connection.execute(NAME_SESSION, name[:63])  # Postgres keeps 63 bytes of application_name


async def try_apply_lock(connection: Queryable) -> bool:
    """Inside a transaction: True when this transaction now holds the apply lock."""
    return bool(await connection.fetchval(TRY_APPLY_LOCK, *APPLY_LOCK_KEYS))


async def apply_lock_holder(connection: Queryable) -> tuple[str, int, datetime | None] | None:
    row = await connection.fetchrow(APPLY_LOCK_HOLDER, *APPLY_LOCK_KEYS)
    if row is None:
        return None
    return (row["application_name"] or "an unnamed session", int(row["pid"]), row["xact_start"])

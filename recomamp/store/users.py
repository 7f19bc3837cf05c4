"""Users and their (encrypted) LWA tokens, and the refresh lease that makes a refresh single-flight."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from recomamp.domain.alerts import reauth_event
from recomamp.store.db import Connection, Queryable
from recomamp.store.outbox import insert_events

SELECT_USER = """
SELECT id, email, refresh_token_encrypted, access_token_encrypted, access_token_expires_at,
       token_refreshed_at, needs_reauth, needs_reauth_reason, needs_reauth_at
FROM users WHERE id = $1
"""

# Who refreshes a user's token: one UPDATE, no transaction held. The lease outlives the longest retry
# sequence; the holder releases it as soon as it is done.
TAKE_REFRESH_LEASE = """
UPDATE users SET refresh_lease_token = $2, refresh_lease_until = now() + make_interval(secs => $3)
WHERE id = $1 AND (refresh_lease_until IS NULL OR refresh_lease_until <= now())
RETURNING id
"""
RENEW_REFRESH_LEASE = """
UPDATE users SET refresh_lease_until = now() + make_interval(secs => $3)
WHERE id = $1 AND refresh_lease_token = $2
RETURNING id
"""
RELEASE_REFRESH_LEASE = """
UPDATE users SET refresh_lease_token = NULL, refresh_lease_until = NULL
WHERE id = $1 AND refresh_lease_token = $2
"""

STORE_REFRESHED_TOKENS = """
UPDATE users
SET access_token_encrypted = $2,
    access_token_expires_at = $3,
    refresh_token_encrypted = COALESCE($4, refresh_token_encrypted),
    token_refreshed_at = now(),
    updated_at = now()
WHERE id = $1
"""

# Only a user not already marked is marked (and alerted): one alert per mark, however many replicas or
# runs see the rejection.
MARK_NEEDS_REAUTH = """
UPDATE users
SET needs_reauth = TRUE, needs_reauth_reason = $2, needs_reauth_at = now(),
    access_token_encrypted = NULL, access_token_expires_at = NULL, updated_at = now()
WHERE id = $1 AND NOT needs_reauth
RETURNING email
"""

# A new refresh token from the user's fresh sign-in: it clears the re-authentication mark.
# Returns when the mark it clears was set (the value before the update), so --rerun-failed knows since when.
SET_REFRESH_TOKEN = """
WITH before AS (SELECT id, needs_reauth_at FROM users WHERE id = $1 FOR UPDATE)
UPDATE users u
SET refresh_token_encrypted = $2, access_token_encrypted = NULL, access_token_expires_at = NULL,
    needs_reauth = FALSE, needs_reauth_reason = NULL, needs_reauth_at = NULL, updated_at = now()
FROM before b
WHERE u.id = b.id
RETURNING b.needs_reauth_at
"""

LIST_USERS = """
SELECT u.id, u.email, u.needs_reauth, u.needs_reauth_reason, u.needs_reauth_at, u.access_token_expires_at,
       u.refresh_token_encrypted IS NOT NULL AS has_refresh_token,
       (SELECT count(*) FROM amc_instances i WHERE i.owner_id = u.id) AS instances,
       (SELECT count(*) FROM workflow_schedules s WHERE s.owner_id = u.id) AS schedules
FROM users u ORDER BY u.id
"""


# Every stored secret, for `recomamp keys rotate`: (table, column).
SECRET_COLUMNS: tuple[tuple[str, str], ...] = (
    ("users", "refresh_token_encrypted"),
    ("users", "access_token_encrypted"),
    ("snowflake_configurations", "password_encrypted"),
    ("snowflake_configurations", "private_key_encrypted"),
    ("snowflake_configurations", "private_key_passphrase_encrypted"),
)


@dataclass(frozen=True)
class UserTokens:
    id: int
    email: str
    refresh_token_encrypted: str | None
    access_token_encrypted: str | None
    access_token_expires_at: datetime | None
    token_refreshed_at: datetime | None
    needs_reauth: bool
    needs_reauth_reason: str | None
    needs_reauth_at: datetime | None


class UnknownUser(LookupError):
    pass


async def fetch_user_tokens(connection: Queryable, user_id: int) -> UserTokens:
    row = await connection.fetchrow(SELECT_USER, user_id)
    if row is None:
        raise UnknownUser(f"no user with id {user_id}")
    return UserTokens(**dict(row))


async def take_refresh_lease(connection: Queryable, user_id: int, lease_seconds: float) -> uuid.UUID | None:
    token = uuid.uuid4()
    taken = await connection.fetchval(TAKE_REFRESH_LEASE, user_id, token, lease_seconds)
    return token if taken is not None else None


async def renew_refresh_lease(connection: Queryable, user_id: int, token: uuid.UUID, lease_seconds: float) -> bool:
    """False when the lease is no longer this token's (it ran out and another replica took it)."""
    return await connection.fetchval(RENEW_REFRESH_LEASE, user_id, token, lease_seconds) is not None


async def release_refresh_lease(connection: Queryable, user_id: int, token: uuid.UUID) -> None:
    await connection.execute(RELEASE_REFRESH_LEASE, user_id, token)


async def store_refreshed_tokens(
    connection: Queryable,
    user_id: int,
    *,
    access_encrypted: str,
    expires_at: datetime,
    refresh_encrypted: str | None,
) -> None:
    await connection.execute(STORE_REFRESHED_TOKENS, user_id, access_encrypted, expires_at, refresh_encrypted)


async def mark_needs_reauth(connection: Connection, user_id: int, reason: str) -> bool:
    """Mark the user and write the alert, in one transaction. False when they were already marked."""
    async with connection.transaction():
        email = await connection.fetchval(MARK_NEEDS_REAUTH, user_id, reason)
        if email is None:
            return False
        await insert_events(connection, [reauth_event(email, reason)])
        return True


async def set_refresh_token(connection: Queryable, user_id: int, refresh_encrypted: str) -> datetime | None:
    """Store a new refresh token and clear the mark. Returns when the cleared mark was set, if any."""
    marked_at: datetime | None = await connection.fetchval(SET_REFRESH_TOKEN, user_id, refresh_encrypted)
    return marked_at


async def list_users(connection: Queryable) -> list[dict[str, Any]]:
    return [dict(row) for row in await connection.fetch(LIST_USERS)]


async def secrets_of(connection: Queryable, table: str, column: str) -> list[tuple[int, str]]:
    if (table, column) not in SECRET_COLUMNS:
        raise ValueError(f"{table}.{column} is not a secret column")
    rows = await connection.fetch(f"SELECT id, {column} AS value FROM {table} WHERE {column} IS NOT NULL ORDER BY id")
    return [(row["id"], row["value"]) for row in rows]


async def replace_secret(connection: Queryable, table: str, column: str, row_id: int, old: str, new: str) -> bool:
    """Swap one ciphertext for another, only if it is still the one that was read (a refresh may have won)."""
    if (table, column) not in SECRET_COLUMNS:
        raise ValueError(f"{table}.{column} is not a secret column")
    status = await connection.execute(
        f"UPDATE {table} SET {column} = $3 WHERE id = $1 AND {column} = $2", row_id, old, new
    )
    return not status.endswith(" 0")


async def region_of(connection: Queryable, user_id: int) -> str | None:
    """The region of the user's AMC instances (the most common one), for their consent page."""
    value = await connection.fetchval(
        "SELECT region FROM amc_instances WHERE owner_id = $1 GROUP BY region ORDER BY count(*) DESC, region LIMIT 1",
        user_id,
    )
    return str(value) if value is not None else None

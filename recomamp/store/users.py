"""Users and their (encrypted) LWA tokens."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from recomamp.store.db import Queryable

SELECT_USER = """
SELECT id, email, refresh_token_encrypted, access_token_encrypted, access_token_expires_at,
       token_refreshed_at, needs_reauth, needs_reauth_reason, needs_reauth_at
FROM users WHERE id = $1
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

MARK_NEEDS_REAUTH = """
UPDATE users
SET needs_reauth = TRUE, needs_reauth_reason = $2, needs_reauth_at = now(),
    access_token_encrypted = NULL, access_token_expires_at = NULL, updated_at = now()
WHERE id = $1
"""

# A new refresh token from the user's fresh sign-in: it clears the re-authentication mark.
SET_REFRESH_TOKEN = """
UPDATE users
SET refresh_token_encrypted = $2, access_token_encrypted = NULL, access_token_expires_at = NULL,
    needs_reauth = FALSE, needs_reauth_reason = NULL, needs_reauth_at = NULL, updated_at = now()
WHERE id = $1
"""

LIST_USERS = """
SELECT u.id, u.email, u.needs_reauth, u.needs_reauth_reason, u.needs_reauth_at, u.access_token_expires_at,
       u.refresh_token_encrypted IS NOT NULL AS has_refresh_token,
       (SELECT count(*) FROM amc_instances i WHERE i.owner_id = u.id) AS instances,
       (SELECT count(*) FROM workflow_schedules s WHERE s.owner_id = u.id) AS schedules
FROM users u ORDER BY u.id
"""


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

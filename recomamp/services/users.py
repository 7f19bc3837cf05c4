"""Users and their Amazon tokens, for the CLI: add, store a refresh token, list, and who a consent is for."""

from __future__ import annotations

from typing import Any

from recomamp.config import Config
from recomamp.crypto import SecretBox
from recomamp.services.tokens import set_refresh_token
from recomamp.store import catalog
from recomamp.store import users as user_store
from recomamp.store.db import Queryable


async def user_id(connection: Queryable, email: str) -> int:
    """The user's id; an unknown email is a LookupError that names it (exit 2)."""
    return await catalog.user_id_for(connection, email)


async def add(connection: Queryable, email: str) -> int:
    """The new user's id."""
    return await catalog.add_user(connection, email)


async def store_refresh_token(connection: Queryable, config: Config, user_id: int, refresh_token: str) -> None:
    """Store a refresh token a person handed in, encrypted with the first token key, and clear the
    re-authentication mark."""
    await set_refresh_token(connection, SecretBox(config.security.token_keys), user_id, refresh_token)


async def list_all(connection: Queryable) -> list[dict[str, Any]]:
    return await user_store.list_users(connection)


async def consent_region(connection: Queryable, email: str, region: str | None) -> str:
    """The region a consent is asked in: the one given, else the user's instances', else North America.
    An unknown email is a LookupError that names it."""
    user_id = await catalog.user_id_for(connection, email)
    return region or await user_store.region_of(connection, user_id) or "na"

"""A user's Snowflake configuration, for the CLI: saved with its secrets encrypted, shown masked, tested."""

from __future__ import annotations

from typing import Any

from recomamp.config import Config
from recomamp.crypto import SecretBox
from recomamp.snowflake.connection import SnowflakeConnectionSpec, spec_from_row
from recomamp.store.db import Queryable
from recomamp.store.snowflake_configs import SnowflakeConfigInput as SnowflakeConfigInput  # what `save` takes
from recomamp.store.snowflake_configs import fetch_row, masked, save_config


async def save(connection: Queryable, config: Config, user_id: int, settings: SnowflakeConfigInput) -> None:
    """Save (or replace) the user's configuration, its secrets encrypted with the first token key."""
    await save_config(connection, user_id, settings, encrypt=SecretBox(config.security.token_keys).encrypt)


async def stored(connection: Queryable, user_id: int) -> dict[str, Any] | None:
    """The stored row (secrets still encrypted), or None when the user has none."""
    return await fetch_row(connection, user_id)


def shown(row: dict[str, Any]) -> dict[str, Any]:
    """The row as `snowflake show` prints it: every secret masked."""
    return masked(row)


def connection_spec(row: dict[str, Any], config: Config) -> SnowflakeConnectionSpec:
    """What `snowflake test` connects with: the secrets decrypted with the configured keys."""
    return spec_from_row(row, SecretBox(config.security.token_keys))

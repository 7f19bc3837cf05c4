"""Per-user Snowflake configurations. Passwords and private keys are encrypted at rest."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from recomamp.store.db import Queryable

UPSERT = """
INSERT INTO snowflake_configurations (
    user_id, account, username, warehouse, database_name, default_schema, role, auth_method,
    password_encrypted, private_key_encrypted, private_key_passphrase_encrypted, host, port, protocol, is_active
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, TRUE)
ON CONFLICT (user_id) DO UPDATE SET
    account = EXCLUDED.account, username = EXCLUDED.username, warehouse = EXCLUDED.warehouse,
    database_name = EXCLUDED.database_name, default_schema = EXCLUDED.default_schema, role = EXCLUDED.role,
    auth_method = EXCLUDED.auth_method, password_encrypted = EXCLUDED.password_encrypted,
    private_key_encrypted = EXCLUDED.private_key_encrypted,
    private_key_passphrase_encrypted = EXCLUDED.private_key_passphrase_encrypted,
    host = EXCLUDED.host, port = EXCLUDED.port, protocol = EXCLUDED.protocol, is_active = TRUE, updated_at = now()
"""

SELECT_FOR_USER = """
SELECT c.*, u.email FROM snowflake_configurations c JOIN users u ON u.id = c.user_id WHERE c.user_id = $1
"""


@dataclass(frozen=True)
class SnowflakeConfigInput:
    account: str
    username: str
    database: str
    default_schema: str = "PUBLIC"
    warehouse: str | None = None
    role: str | None = None
    password: str | None = None
    private_key_pem: str | None = None
    private_key_passphrase: str | None = None
    host: str | None = None
    port: int | None = None
    protocol: str | None = None


async def save_config(
    connection: Queryable, user_id: int, config: SnowflakeConfigInput, *, encrypt: Callable[[str], str]
) -> None:
    """Store a user's configuration; `encrypt` (the token keys' first) turns each secret into ciphertext."""
    if (config.password is None) == (config.private_key_pem is None):
        raise ValueError("give exactly one of --password-file and --private-key-file")

    def encrypted(value: str | None) -> str | None:
        return encrypt(value) if value else None

    await connection.execute(
        UPSERT,
        user_id,
        config.account,
        config.username,
        config.warehouse,
        config.database,
        config.default_schema,
        config.role,
        "password" if config.password else "key_pair",
        encrypted(config.password),
        encrypted(config.private_key_pem),
        encrypted(config.private_key_passphrase),
        config.host,
        config.port,
        config.protocol,
    )


async def fetch_row(connection: Queryable, user_id: int) -> dict[str, Any] | None:
    row = await connection.fetchrow(SELECT_FOR_USER, user_id)
    return dict(row) if row is not None else None


def masked(row: dict[str, Any]) -> dict[str, Any]:
    """The configuration for `recomamp snowflake show`: every secret replaced by whether it is set."""
    shown = {key: value for key, value in row.items() if not key.endswith("_encrypted") and key not in ("id",)}
    shown["password"] = "********" if row.get("password_encrypted") else None
    shown["private_key"] = "******** (PEM)" if row.get("private_key_encrypted") else None
    shown["private_key_passphrase"] = "********" if row.get("private_key_passphrase_encrypted") else None
    return shown

"""A user's Snowflake connection: password or key-pair auth, with an optional host for a proxy or emulator."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives import serialization
from pydantic import SecretStr

from recomamp.config import SnowflakeSettings
from recomamp.crypto import SecretBox
from recomamp.logs import register_secret


class BadPrivateKey(ValueError):
    pass


def private_key_der(pem: str, passphrase: str | None) -> bytes:
    """PEM (PKCS#8, encrypted or not) → DER bytes, which the connector takes for SNOWFLAKE_JWT auth."""
    try:
        key = serialization.load_pem_private_key(
            pem.encode("utf-8"), password=passphrase.encode("utf-8") if passphrase else None
        )
    except TypeError as exc:
        raise BadPrivateKey(
            "the private key is encrypted and no passphrase was given, or a passphrase was given for a key "
            "that is not encrypted"
        ) from exc
    except ValueError as exc:
        raise BadPrivateKey("the private key is not a PEM private key, or the passphrase is wrong") from exc
    return key.private_bytes(
        encoding=serialization.Encoding.DER,
        format=serialization.PrivateFormat.PKCS8,
        encryption_algorithm=serialization.NoEncryption(),
    )


@dataclass(frozen=True)
class SnowflakeConnectionSpec:
    account: str
    user: str
    database: str
    default_schema: str
    warehouse: str | None = None
    role: str | None = None
    password: SecretStr | None = None
    private_key_pem: SecretStr | None = None
    private_key_passphrase: SecretStr | None = None
    host: str | None = None
    port: int | None = None
    protocol: str | None = None

    def __post_init__(self) -> None:
        if (self.password is None) == (self.private_key_pem is None):
            raise ValueError("give exactly one of a password and a private key")

    @property
    def auth_method(self) -> str:
        return "password" if self.password is not None else "key_pair"

    def connect_kwargs(self, settings: SnowflakeSettings, query_tag: str = "recomamp") -> dict[str, Any]:
        """`query_tag`: what Snowflake's query history and cost views attribute this session's statements to."""
        kwargs: dict[str, Any] = {
            "account": self.account,
            "user": self.user,
            "database": self.database,
            "schema": self.default_schema,
            "login_timeout": settings.login_timeout_seconds,
            # The connector's network timeout defaults to none: a hung socket would hang the run.
            "network_timeout": settings.network_timeout_seconds,
            "application": "recomamp",
            # Snowflake cuts off a statement (and a wait for a lock) past these: a hung warehouse or a
            # blocked table never holds a load, its thread and its run's slot for ever.
            "session_parameters": {
                "QUERY_TAG": query_tag,
                "STATEMENT_TIMEOUT_IN_SECONDS": settings.statement_timeout_seconds,
                "LOCK_TIMEOUT": settings.lock_timeout_seconds,
                # The time-series columns are naive UTC; a session in the account's zone would read them shifted.
                "TIMEZONE": "UTC",
                # A COPY whose client died stops 5 minutes later instead of running on into a dead transaction.
                "ABORT_DETACHED_QUERY": True,
            },
            # Explicit transactions only where the loader opens one (BEGIN … COMMIT); every other statement
            # commits by itself, so nothing is left open if a load gives up between statements.
            "autocommit": True,
            "client_session_keep_alive": False,
        }
        if self.warehouse:
            kwargs["warehouse"] = self.warehouse
        if self.role:
            kwargs["role"] = self.role
        if self.password is not None:
            kwargs["password"] = self.password.get_secret_value()
        else:
            assert self.private_key_pem is not None
            passphrase = self.private_key_passphrase.get_secret_value() if self.private_key_passphrase else None
            kwargs["private_key"] = private_key_der(self.private_key_pem.get_secret_value(), passphrase)
            kwargs["authenticator"] = "SNOWFLAKE_JWT"
        if self.host:
            kwargs["host"] = self.host
        if self.port:
            kwargs["port"] = self.port
        if self.protocol:
            kwargs["protocol"] = self.protocol
        return kwargs

    def connect(self, settings: SnowflakeSettings, query_tag: str = "recomamp") -> Any:
        import snowflake.connector

        return snowflake.connector.connect(**self.connect_kwargs(settings, query_tag))


def server_version(spec: SnowflakeConnectionSpec, settings: SnowflakeSettings) -> str:
    """Connect and ask the server its version: `recomamp snowflake test`."""
    connection = spec.connect(settings)
    try:
        cursor = connection.cursor()
        cursor.execute("SELECT CURRENT_VERSION()")
        row = cursor.fetchone()
        return str(row[0]) if row else "unknown"
    finally:
        connection.close()


def spec_from_row(row: dict[str, Any], box: SecretBox) -> SnowflakeConnectionSpec:
    """A stored configuration (secrets encrypted) as the connection it describes."""

    def secret(column: str) -> SecretStr | None:
        value = row.get(column)
        if not value:
            return None
        plain = box.decrypt(value)
        register_secret(plain)  # no log shape catches a password: mask its value
        return SecretStr(plain)

    return SnowflakeConnectionSpec(
        account=row["account"],
        user=row["username"],
        database=row["database_name"],
        default_schema=row["default_schema"],
        warehouse=row["warehouse"],
        role=row["role"],
        password=secret("password_encrypted"),
        private_key_pem=secret("private_key_encrypted"),
        private_key_passphrase=secret("private_key_passphrase_encrypted"),
        host=row["host"],
        port=row["port"],
        protocol=row["protocol"],
    )

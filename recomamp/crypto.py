"""Encryption at rest for LWA tokens and Snowflake secrets: Fernet through MultiFernet.

The first key encrypts; every key decrypts, so a new key can be put first and old rows stay readable
until `recomamp keys rotate` re-encrypts them. recomamp never makes a key on its own.
"""

from __future__ import annotations

from collections.abc import Sequence

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from pydantic import SecretStr


class SecretUnreadable(Exception):
    """A stored secret does not decrypt with any configured key."""


class SecretBox:
    """Decrypting registers nothing for redaction: callers register what no log shape catches."""

    def __init__(self, keys: Sequence[SecretStr]) -> None:
        if not keys:
            raise ValueError("at least one token key is needed")
        self._fernet = MultiFernet([Fernet(key.get_secret_value()) for key in keys])
        self._first = keys[0].get_secret_value().encode("ascii")

    @property
    def first_key(self) -> bytes:
        """The key that encrypts (the newest)."""
        return self._first

    def encrypt(self, plaintext: str) -> str:
        return self._fernet.encrypt(plaintext.encode("utf-8")).decode("ascii")

    def decrypt(self, ciphertext: str) -> str:
        try:
            plaintext = self._fernet.decrypt(ciphertext.encode("ascii")).decode("utf-8")
        except (InvalidToken, UnicodeError) as exc:
            raise SecretUnreadable(
                "a stored secret does not decrypt with any configured token key: "
                "was the key in [security] token_key_file replaced instead of rotated?"
            ) from exc
        return plaintext

    def rotate(self, ciphertext: str) -> str:
        """Re-encrypt with the first (newest) key."""
        try:
            return self._fernet.rotate(ciphertext.encode("ascii")).decode("ascii")
        except (InvalidToken, UnicodeError) as exc:
            raise SecretUnreadable("a stored secret does not decrypt with any configured token key") from exc


def generate_key() -> str:
    return Fernet.generate_key().decode("ascii")

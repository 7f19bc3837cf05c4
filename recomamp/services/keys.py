"""Key rotation: every stored secret re-encrypted with the first (newest) token key.

The order that loses nothing: put the new key first in the key file and keep the old ones below it;
reload every replica (`systemctl reload recomamp`: the daemon encrypts with the new key from then on,
and still decrypts with the old ones); run `recomamp keys rotate`; once it reports nothing left on an
older key, drop the old key and reload again. A secret a refresh rewrote meanwhile is left as it is
(it is already on the new key): each swap is a compare-and-swap on the ciphertext it read.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from recomamp.crypto import SecretBox, SecretUnreadable
from recomamp.store import users as user_store
from recomamp.store.db import Queryable


@dataclass
class RotationReport:
    per_column: dict[str, dict[str, int]] = field(default_factory=dict)
    reencrypted: int = 0
    already_current: int = 0
    raced: int = 0  # rewritten by a refresh while we rotated: already on the new key
    unreadable: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "reencrypted": self.reencrypted,
            "already_current": self.already_current,
            "changed_meanwhile": self.raced,
            "unreadable": self.unreadable,
            "per_column": self.per_column,
        }

    def lines(self) -> list[str]:
        lines = [
            f"{column}: {counts['reencrypted']} re-encrypted, {counts['already_current']} already on the newest key"
            + (f", {counts['unreadable']} UNREADABLE" if counts["unreadable"] else "")
            for column, counts in self.per_column.items()
        ]
        lines.append(
            f"re-encrypted {self.reencrypted} secret(s) with the first key; {self.already_current} were already on it"
            + (f"; {self.raced} were rewritten meanwhile (already on the first key)" if self.raced else "")
        )
        if self.unreadable:
            lines.append(
                f"{self.unreadable} secret(s) decrypt with none of the configured keys: keep every old key until "
                "they are replaced (`recomamp users authorize`, `recomamp snowflake set`)"
            )
        else:
            lines.append("every stored secret now decrypts with the first key: older keys may be removed (then reload)")
        return lines


async def rotate(connection: Queryable, box: SecretBox) -> RotationReport:
    newest = Fernet(box.first_key)
    report = RotationReport()
    for table, column in user_store.SECRET_COLUMNS:
        counts = {"reencrypted": 0, "already_current": 0, "unreadable": 0}
        for row_id, ciphertext in await user_store.secrets_of(connection, table, column):
            try:
                newest.decrypt(ciphertext.encode("ascii"))
                counts["already_current"] += 1
                continue
            except InvalidToken:
                pass
            try:
                rotated = box.rotate(ciphertext)
            except SecretUnreadable:
                counts["unreadable"] += 1
                continue
            if await user_store.replace_secret(connection, table, column, row_id, ciphertext, rotated):
                counts["reencrypted"] += 1
            else:
                report.raced += 1
        report.per_column[f"{table}.{column}"] = counts
        report.reencrypted += counts["reencrypted"]
        report.already_current += counts["already_current"]
        report.unreadable += counts["unreadable"]
    return report

"""Snowflake identifiers: what a user may name a table or schema, and how names are quoted. No I/O."""

from __future__ import annotations

import re

MAX_IDENTIFIER_LENGTH = 255
_UNQUOTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
ALLOWED = (
    "letters, digits, _ and $, starting with a letter or _, at most 255 characters "
    "(no spaces, quotes, dots or semicolons)"
)


class InvalidIdentifier(ValueError):
    pass


def validate_identifier(name: str, field: str) -> str:
    """Return `name` if it is a safe unquoted Snowflake identifier, else raise with what is allowed."""
    if not isinstance(name, str) or not name:
        raise InvalidIdentifier(f"{field}: must not be empty; use {ALLOWED}")
    if len(name) > MAX_IDENTIFIER_LENGTH:
        raise InvalidIdentifier(f"{field}: {len(name)} characters is too long; use {ALLOWED}")
    if not _UNQUOTED.match(name):
        raise InvalidIdentifier(f"{field}: {name!r} is not allowed; use {ALLOWED}")
    return name


def quote(name: str) -> str:
    """Quote a name for SQL. `"` inside is doubled, so nothing can break out of the quotes."""
    return '"' + name.replace('"', '""') + '"'


def qualified(*parts: str) -> str:
    return ".".join(quote(part) for part in parts)


_NOT_IDENTIFIER_CHARS = re.compile(r"[^A-Za-z0-9_$]+")


def column_name(header: str, position: int) -> str:
    """A result column's name in Snowflake: the CSV header, upper-cased, with other characters as _."""
    cleaned = _NOT_IDENTIFIER_CHARS.sub("_", header.strip()).strip("_").upper()
    if not cleaned:
        cleaned = f"COLUMN_{position + 1}"
    if not (cleaned[0].isalpha() or cleaned[0] == "_"):
        cleaned = f"_{cleaned}"
    return cleaned[:MAX_IDENTIFIER_LENGTH]

"""Structured JSON logs on stdout, for journald.

One JSON object per line: a stable snake_case `event`, an ISO UTC `timestamp`, a `level`, and the
context bound through contextvars (`user_email`, `schedule_id`, `run_id`, `attempt`).
Secrets are redacted on the way out, by key name, by shape (LWA tokens, PEM keys, DSN passwords,
bearer headers) and by value (every secret the process has loaded is registered here).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import threading
from collections import OrderedDict
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

REDACTED = "[REDACTED]"

_SECRET_KEY_PARTS = (
    "password",
    "passphrase",
    "secret",
    "token",
    "private_key",
    "authorization",
    "dsn",
    "credential",
    "api_key",
)
# Keys that contain a secret-looking word but hold no secret, and that operators need to read.
_SAFE_KEYS = frozenset(
    {
        "token_expires_in_seconds",
        "token_seconds_left",
        "token_url",
        "next_token",
        "token_status",
        "token_source",
    }
)

_SECRET_SHAPES: tuple[tuple[re.Pattern[str], str], ...] = (
    # LWA access (Atza|) and refresh (Atzr|) tokens.
    (re.compile(r"Atz[ar]\|[^\s\"'&,;}]+"), REDACTED),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----.*?-----END [A-Z ]*PRIVATE KEY-----", re.S), REDACTED),
    (re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._\-|~+/=]+"), r"\1" + REDACTED),
    # postgresql://user:password@host
    (re.compile(r"(?i)([a-z][a-z0-9+.\-]*://[^:/@\s]*:)[^@\s]*@"), r"\1" + REDACTED + "@"),
    # password=..., client_secret=..., refresh_token=... in form bodies and key=value DSNs.
    (
        re.compile(r"(?i)\b(password|passphrase|client_secret|refresh_token|access_token)=([^\s&]+)"),
        r"\1=" + REDACTED,
    ),
)

# Exact values, for secrets no shape catches (a Snowflake password, the LWA client secret, a DSN's
# password). Bounded: the least recently registered fall out first, so months of uptime cannot grow it.
MAX_KNOWN_SECRETS = 256
_known_secrets: OrderedDict[str, None] = OrderedDict()
_known_pattern: re.Pattern[str] | None = None
_known_secrets_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Make `value` redacted wherever it appears in a log line from now on.

    This is process-wide on purpose: a secret read anywhere (a decrypted Snowflake password, the client
    secret) must be masked in every later line, including those of third-party libraries. Values that a
    shape already catches (LWA tokens, PEM keys) are not kept.
    """
    global _known_pattern
    if not value or len(value) < 6 or any(pattern.fullmatch(value) for pattern, _ in _SECRET_SHAPES[:2]):
        return
    with _known_secrets_lock:
        if value in _known_secrets:
            _known_secrets.move_to_end(value)
            return
        _known_secrets[value] = None
        while len(_known_secrets) > MAX_KNOWN_SECRETS:
            _known_secrets.popitem(last=False)
        _known_pattern = None  # rebuilt on the next line that is logged


def known_secret_count() -> int:
    return len(_known_secrets)


def _known_secrets_pattern() -> re.Pattern[str] | None:
    global _known_pattern
    with _known_secrets_lock:
        if _known_pattern is None and _known_secrets:
            # Longest first, so a secret that contains another is replaced whole.
            alternatives = sorted(_known_secrets, key=len, reverse=True)
            _known_pattern = re.compile("|".join(re.escape(secret) for secret in alternatives))
        return _known_pattern


def redact_text(text: str) -> str:
    for pattern, replacement in _SECRET_SHAPES:
        text = pattern.sub(replacement, text)
    known = _known_secrets_pattern()
    if known is not None:
        text = known.sub(REDACTED, text)
    return text


def _is_secret_key(key: str) -> bool:
    lowered = key.lower()
    if lowered in _SAFE_KEYS:
        return False
    return any(part in lowered for part in _SECRET_KEY_PARTS)


def _redact_value(value: Any) -> Any:
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, MutableMapping):
        return {
            key: (
                REDACTED if isinstance(key, str) and _is_secret_key(key) and item is not None else _redact_value(item)
            )
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_redact_value(item) for item in value]
    return value


def redact_processor(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    for key in list(event_dict):
        value = event_dict[key]
        if _is_secret_key(key) and value is not None and not isinstance(value, bool | int | float):
            event_dict[key] = REDACTED
        else:
            event_dict[key] = _redact_value(value)
    return event_dict


_JOURNAL_PRIORITY = {"critical": 2, "error": 3, "warning": 4, "info": 6, "debug": 7}


class _JsonLineRenderer:
    """JSON, prefixed with the syslog priority when journald reads our stdout (JOURNAL_STREAM is set)."""

    def __init__(self, journald: bool) -> None:
        self._json = structlog.processors.JSONRenderer(sort_keys=False)
        self._journald = journald

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> str:
        level = str(event_dict.get("level", "info"))
        line = str(self._json(logger, name, event_dict))
        if self._journald:
            return f"<{_JOURNAL_PRIORITY.get(level, 6)}>{line}"
        return line


def _shared_processors() -> list[Processor]:
    return [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
        # Locals in tracebacks would print tokens and passwords held in frames.
        structlog.processors.ExceptionRenderer(structlog.tracebacks.ExceptionDictTransformer(show_locals=False)),
        structlog.processors.UnicodeDecoder(),
        redact_processor,
    ]


def _name_library_event(_: WrappedLogger, __: str, event_dict: EventDict) -> EventDict:
    """A library's free-text message becomes `message`, under the stable event name `library_log`."""
    if not event_dict.get("_from_structlog", True):
        event_dict["message"] = event_dict.get("event")
        event_dict["event"] = "library_log"
    return event_dict


_QUIET_LIBRARIES = ("snowflake.connector", "botocore", "boto3", "urllib3", "asyncio", "aiohttp.access", "filelock")


def configure_logging(level: str = "info", stream: TextIO | None = None) -> None:
    """Route structlog and the standard library's loggers through one JSON renderer on `stream`."""
    numeric_level = logging.getLevelName(level.upper())
    if not isinstance(numeric_level, int):
        raise ValueError(f"unknown log level {level!r}")
    renderer = _JsonLineRenderer(journald=bool(os.environ.get("JOURNAL_STREAM")))

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *_shared_processors(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
        logger_factory=structlog.stdlib.LoggerFactory(),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[_name_library_event, *_shared_processors()],
        )
    )
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(numeric_level)
    for name in _QUIET_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric_level, logging.WARNING))


def set_level(level: str) -> None:
    """Apply a new level live (SIGHUP)."""
    numeric_level = logging.getLevelName(level.upper())
    if isinstance(numeric_level, int):
        logging.getLogger().setLevel(numeric_level)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    logger: structlog.stdlib.BoundLogger = structlog.stdlib.get_logger(name)
    return logger

"""The run pipeline's one error classifier: every exception a run can meet becomes exactly one decision.

- lease lost (another claim, or the run was deleted) → Lost: stop quietly, record nothing;
- the AMC quota (ours or AMC's refusal) → Wait: no attempt is spent;
- transient (the database, the network, AMC 5xx/429, timeouts, a full spool disk) → Defer, with a message;
- permanent (a revoked user, a rejected query, bad Snowflake settings) → Fail, saying what to fix;
- anything unexpected → Defer with its class and message: never a crashed task.
Pure: it looks at exception types and fields, nothing else.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import aiohttp

from recomamp.amazon.results import SpoolError
from recomamp.amazon.transport import AmcError, QuotaRefused
from recomamp.crypto import SecretUnreadable
from recomamp.domain.retry import TokenError
from recomamp.domain.runs import Decision, Defer, Fail, Lost, Wait
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.store.db import is_connection_error
from recomamp.store.runs import LeaseLost


class QuotaWait(Exception):
    """Our own count of AMC's ad-hoc quota says no slot is free before `until`."""

    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message)
        self.until = until


def classify(exc: BaseException, *, now: datetime | None = None, quota_backoff_seconds: float = 3600.0) -> Decision:
    now = now or datetime.now(UTC)
    if isinstance(exc, LeaseLost):
        return Lost(str(exc))
    if isinstance(exc, QuotaWait):
        return Wait("amc_quota", str(exc), exc.until)
    if isinstance(exc, QuotaRefused):
        wait = exc.retry_after_seconds if exc.retry_after_seconds is not None else quota_backoff_seconds
        return Wait(
            "amc_quota",
            f"AMC refused the execution for its ad-hoc quota ({exc.detail or exc}); nothing was created. The run "
            f"waits and is submitted again after {_when(now + timedelta(seconds=wait))}. Nothing failed.",
            now + timedelta(seconds=wait),
        )
    if isinstance(exc, TokenError):
        if exc.permanent:
            return Fail(exc.kind, exc.message)
        return Defer(exc.kind, exc.message)
    if isinstance(exc, AmcError):
        if exc.transient:
            return Defer("amc_unavailable", f"AMC: {exc}. Temporary.")
        return Fail("amc_rejected", f"AMC: {exc}. Fix the schedule's query, parameters or window.")
    if isinstance(exc, SpoolError):
        return Defer(
            "spool",
            f"The result could not be written: {exc}. Free space there (or set [daemon] spool_dir); the run "
            "is tried again and downloads only what it does not have yet.",
        )
    if isinstance(exc, SnowflakeLoadError):
        return Fail("snowflake", str(exc)) if not exc.transient else Defer("snowflake", str(exc))
    if isinstance(exc, SecretUnreadable):
        return Fail("secret_unreadable", str(exc))
    if is_connection_error(exc):
        return Defer("database", f"The database was unreachable ({type(exc).__name__}: {exc}). Temporary.")
    if isinstance(exc, aiohttp.ClientError):
        return Defer("network", f"A network call failed ({type(exc).__name__}: {exc}). Temporary.")
    return Defer(
        "unexpected",
        f"Unexpected {type(exc).__name__}: {exc}. The run is tried again; if this repeats, it is a bug: report it "
        "with the daemon's log.",
    )


def _when(instant: datetime) -> str:
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")

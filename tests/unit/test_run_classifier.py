"""The run pipeline's error classifier: each exception family becomes exactly one decision."""

from __future__ import annotations

import errno
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from recomamp.amazon.results import SpoolError
from recomamp.amazon.transport import AmcError, QuotaRefused, SubmitUncertain
from recomamp.crypto import SecretUnreadable
from recomamp.daemon.classify import QuotaWait, classify
from recomamp.domain.retry import TokenError
from recomamp.domain.runs import Defer, Fail, Lost, Wait, give_up_message
from recomamp.snowflake.errors import SnowflakeLoadError
from recomamp.store.runs import LeaseLost

NOW = datetime(2026, 11, 29, 12, tzinfo=UTC)


def test_a_lost_lease_stops_quietly() -> None:
    assert isinstance(classify(LeaseLost(7), now=NOW), Lost)


def test_our_quota_count_and_amcs_refusal_both_wait_without_failing() -> None:
    ours = classify(QuotaWait("30 of 30 used", NOW + timedelta(hours=3)), now=NOW)
    assert ours == Wait("amc_quota", "30 of 30 used", NOW + timedelta(hours=3))
    refused = classify(
        QuotaRefused("refused", status=400, detail="quota exceeded", retry_after_seconds=None),
        now=NOW,
        quota_backoff_seconds=600,
    )
    assert isinstance(refused, Wait) and refused.until == NOW + timedelta(seconds=600)
    assert "Nothing failed" in refused.message
    told = classify(QuotaRefused("x", status=429, detail=None, retry_after_seconds=30), now=NOW)
    assert isinstance(told, Wait) and told.until == NOW + timedelta(seconds=30)


def test_token_errors_fail_when_someone_must_act_and_defer_otherwise() -> None:
    assert classify(TokenError("reauth_required", "User needs…", permanent=True), now=NOW) == Fail(
        "reauth_required", "User needs…"
    )
    assert classify(TokenError("server_error", "503 three times", permanent=False), now=NOW) == Defer(
        "server_error", "503 three times"
    )


def test_amc_errors_by_transience() -> None:
    transient = classify(AmcError("HTTP 503", status=503, transient=True), now=NOW)
    assert isinstance(transient, Defer) and transient.kind == "amc_unavailable"
    uncertain = classify(SubmitUncertain("HTTP 504", status=504, transient=True), now=NOW)
    assert isinstance(uncertain, Defer)
    rejected = classify(AmcError("HTTP 400: bad column", status=400, transient=False), now=NOW)
    assert isinstance(rejected, Fail) and rejected.kind == "amc_rejected"
    assert "Fix the schedule's query" in rejected.message


def test_a_full_spool_defers_and_says_where(tmp_path: Path) -> None:
    decision = classify(SpoolError(tmp_path, OSError(errno.ENOSPC, "No space left on device")), now=NOW)
    assert isinstance(decision, Defer) and decision.kind == "spool"
    assert f"disk full at {tmp_path} (" in decision.message and "MB free)" in decision.message


def test_snowflake_errors_by_transience() -> None:
    assert isinstance(classify(SnowflakeLoadError("denied", transient=False, step="apply"), now=NOW), Fail)
    assert isinstance(classify(SnowflakeLoadError("503", transient=True, step="apply"), now=NOW), Defer)


def test_an_unreadable_secret_fails_with_what_to_restore() -> None:
    decision = classify(SecretUnreadable("restore the key"), now=NOW)
    assert decision == Fail("secret_unreadable", "restore the key")


@pytest.mark.parametrize(
    "exc",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("closed"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator command"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.TooManyConnectionsError("too many clients"),
        asyncpg.InterfaceError("connection is closed"),
        ConnectionRefusedError(111, "Connection refused"),
        TimeoutError(),
    ],
)
def test_a_database_that_is_away_defers(exc: BaseException) -> None:
    decision = classify(exc, now=NOW)
    assert isinstance(decision, Defer) and decision.kind == "database"


def test_the_network_defers() -> None:
    decision = classify(aiohttp.ServerDisconnectedError(), now=NOW)
    assert isinstance(decision, Defer) and decision.kind == "network"


@pytest.mark.parametrize("exc", [KeyError("x"), ZeroDivisionError(), asyncpg.exceptions.UniqueViolationError("dup")])
def test_anything_unexpected_defers_with_its_class_never_crashes(exc: BaseException) -> None:
    decision = classify(exc, now=NOW)
    assert isinstance(decision, Defer) and decision.kind == "unexpected"
    assert type(exc).__name__ in decision.message


def test_giving_up_says_what_really_happened() -> None:
    died = give_up_message(
        schedule_id=3, attempts=6, max_attempts=5, interruptions=5, step="uploading", last_error=None
    )
    assert "5 of its claims ended mid-run" in died and "step uploading" in died
    deferred = give_up_message(
        schedule_id=3, attempts=6, max_attempts=5, interruptions=0, step="submitted", last_error="AMC 503"
    )
    assert "mid-run" not in deferred and "5 ended in a temporary failure (the last: AMC 503)" in deferred
    assert "schedules run-now 3 --window-start" in deferred

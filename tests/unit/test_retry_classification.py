"""Every row of the LWA classification table, against aioresponses, with zero waits and counted attempts."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest
import structlog
from pydantic import SecretStr

from recomamp.amazon.lwa import LwaClient, refresh_with_retries
from recomamp.config import RetrySettings
from recomamp.domain.retry import (
    AttemptFailure,
    BackoffPolicy,
    FailureKind,
    TokenError,
    TokenPolicy,
    classify_lwa_response,
    parse_retry_after,
)
from recomamp.logs import configure_logging
from tests.http_mocks import mock_http as aioresponses

TOKEN_URL = "https://lwa.test/auth/o2/token"
GOOD = {"access_token": "Atza|" + "a" * 400, "refresh_token": "Atzr|same", "token_type": "bearer", "expires_in": 3600}


class RecordingSleep:
    """Sleeps for no time, and remembers how long it was asked to."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


@pytest.fixture
def logs(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    stream = io.StringIO()
    configure_logging("debug", stream=stream)
    yield stream
    structlog.contextvars.clear_contextvars()


@pytest.fixture
async def lwa() -> AsyncIterator[LwaClient]:
    async with aiohttp.ClientSession() as http:
        yield LwaClient(
            http,
            token_url=TOKEN_URL,
            client_id="cid",
            client_secret=SecretStr("csecret"),
            timeout_seconds=5,
        )


POLICY = TokenPolicy.from_settings(RetrySettings(), refresh_margin_seconds=300)


async def _refresh(lwa: LwaClient, sleep: RecordingSleep) -> object:
    return await refresh_with_retries(lwa, "Atzr|user-token", email="ada@example.com", policy=POLICY, sleep=sleep)


def _attempt_lines(stream: io.StringIO) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in lines if line["event"] == "token_refresh_attempt_failed"]


@pytest.mark.parametrize(
    ("status", "body", "kind"),
    [
        (400, {"error": "invalid_grant", "error_description": "revoked"}, FailureKind.REAUTH_REQUIRED),
        # invalid_request is ours (a bug or a misconfiguration), never the user's: never a re-authentication.
        (400, {"error": "invalid_request", "error_description": "bad"}, FailureKind.CLIENT_CONFIGURATION),
        (
            400,
            {"error": "invalid_client", "error_description": "OAuth allows a 400 too"},
            FailureKind.CLIENT_CREDENTIALS,
        ),
        (400, {"error": "unsupported_grant_type"}, FailureKind.CLIENT_CONFIGURATION),
        (
            401,
            {"error": "invalid_client", "error_description": "Client authentication failed"},
            FailureKind.CLIENT_CREDENTIALS,
        ),
        (400, {"error": "unauthorized_client"}, FailureKind.CLIENT_CONFIGURATION),
    ],
)
async def test_4xx_is_not_retried(
    lwa: LwaClient, logs: io.StringIO, status: int, body: dict[str, str], kind: FailureKind
) -> None:
    sleep = RecordingSleep()
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=status, payload=body, repeat=True)
        with pytest.raises(TokenError) as excinfo:
            await _refresh(lwa, sleep)
        assert sum(len(calls) for calls in mocked.requests.values()) == 1
    assert excinfo.value.kind == kind.value
    assert excinfo.value.permanent
    assert excinfo.value.attempts == 1
    assert sleep.waits == []
    (line,) = _attempt_lines(logs)
    assert line["attempt"] == 1
    assert line["http_status"] == status
    assert line["error_code"] == body["error"]
    assert line["will_retry"] is False
    assert line["user_email"] == "ada@example.com"


async def test_invalid_grant_says_the_user_must_re_authenticate(lwa: LwaClient, logs: io.StringIO) -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=400, payload={"error": "invalid_grant", "error_description": "revoked"})
        with pytest.raises(TokenError) as excinfo:
            await _refresh(lwa, RecordingSleep())
    assert excinfo.value.message.startswith("User needs to re-authenticate via Amazon OAuth")
    assert "HTTP 400 invalid_grant: revoked" in excinfo.value.message
    assert "`recomamp users authorize ada@example.com --rerun-failed`" in excinfo.value.message


async def test_invalid_client_blames_the_operator_not_the_user(lwa: LwaClient, logs: io.StringIO) -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=401, payload={"error": "invalid_client"})
        with pytest.raises(TokenError) as excinfo:
            await _refresh(lwa, RecordingSleep())
    assert "not the user's fault" in excinfo.value.message
    assert "[amazon] client_id and client_secret" in excinfo.value.message
    assert "re-authenticate" not in excinfo.value.message


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_server_errors_retry_after_5_10_then_give_up(lwa: LwaClient, logs: io.StringIO, status: int) -> None:
    sleep = RecordingSleep()
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=status, body="oops", repeat=True)
        with pytest.raises(TokenError) as excinfo:
            await _refresh(lwa, sleep)
        assert sum(len(calls) for calls in mocked.requests.values()) == 3
    assert sleep.waits == [5.0, 10.0]  # three attempts in all: two waits between them
    assert excinfo.value.attempts == 3
    assert not excinfo.value.permanent
    assert "Temporary" in excinfo.value.message
    assert f"HTTP {status}" in excinfo.value.message
    lines = _attempt_lines(logs)
    assert [line["attempt"] for line in lines] == [1, 2, 3]
    assert [line["will_retry"] for line in lines] == [True, True, False]
    assert [line["wait_seconds"] for line in lines] == [5.0, 10.0, None]


async def test_a_server_error_then_success_heals(lwa: LwaClient, logs: io.StringIO) -> None:
    sleep = RecordingSleep()
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=503)
        mocked.post(TOKEN_URL, status=503)
        mocked.post(TOKEN_URL, status=200, payload=GOOD)
        grant = await _refresh(lwa, sleep)
    assert grant.access_token == GOOD["access_token"]  # type: ignore[attr-defined]
    assert sleep.waits == [5.0, 10.0]


async def test_429_without_retry_after_waits_10_then_20(lwa: LwaClient, logs: io.StringIO) -> None:
    sleep = RecordingSleep()
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=429, repeat=True)
        with pytest.raises(TokenError) as excinfo:
            await _refresh(lwa, sleep)
    assert sleep.waits == [10.0, 20.0]
    assert excinfo.value.kind == "throttled"


async def test_429_with_retry_after_waits_as_told(lwa: LwaClient, logs: io.StringIO) -> None:
    sleep = RecordingSleep()
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=429, headers={"Retry-After": "7"})
        mocked.post(TOKEN_URL, status=200, payload=GOOD)
        await _refresh(lwa, sleep)
    assert sleep.waits == [7.0]


@pytest.mark.parametrize(
    "exception",
    [TimeoutError(), aiohttp.ServerDisconnectedError(), aiohttp.ClientConnectionError("refused")],
)
async def test_timeouts_and_connection_errors_retry_with_backoff(
    lwa: LwaClient, logs: io.StringIO, exception: Exception
) -> None:
    sleep = RecordingSleep()
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, exception=exception, repeat=True)
        with pytest.raises(TokenError) as excinfo:
            await _refresh(lwa, sleep)
        assert sum(len(calls) for calls in mocked.requests.values()) == 3
    assert sleep.waits == [5.0, 10.0]
    assert excinfo.value.kind == "network"
    assert _attempt_lines(logs)[0]["exception_class"] == type(exception).__name__


async def test_a_200_without_a_token_is_not_a_success(lwa: LwaClient, logs: io.StringIO) -> None:
    with aioresponses() as mocked:
        mocked.post(TOKEN_URL, status=200, payload={"hello": "world"})
        with pytest.raises(TokenError) as excinfo:
            await _refresh(lwa, RecordingSleep())
    assert excinfo.value.kind == "bad_response"


def test_backoff_tables_by_kind() -> None:
    policy = POLICY.backoff
    server = AttemptFailure(FailureKind.SERVER_ERROR, http_status=503)
    throttle = AttemptFailure(FailureKind.THROTTLED, http_status=429)
    told = AttemptFailure(FailureKind.THROTTLED, http_status=429, retry_after_seconds=3600)
    assert [policy.wait_after(server, n) for n in (1, 2, 3, 4)] == [5, 10, 20, 20]
    assert [policy.wait_after(throttle, n) for n in (1, 2, 3)] == [10, 20, 40]
    assert policy.wait_after(told, 1) == 300  # capped by retry_after_cap_seconds
    assert BackoffPolicy((), (), (), 0).wait_after(server, 1) == 0


def test_classification_reads_the_error_code_first_then_the_status() -> None:
    # Only invalid_grant marks a user; a refusal we cannot read is the operator's to look at.
    assert classify_lwa_response(400, {"error": "invalid_grant"}, None).kind is FailureKind.REAUTH_REQUIRED
    assert classify_lwa_response(503, {"error": "invalid_grant"}, None).kind is FailureKind.REAUTH_REQUIRED
    assert classify_lwa_response(401, {"error": "invalid_token"}, None).kind is FailureKind.CLIENT_CREDENTIALS
    assert classify_lwa_response(403, None, None).kind is FailureKind.CLIENT_CONFIGURATION
    assert classify_lwa_response(400, {"error": "something_new"}, None).kind is FailureKind.CLIENT_CONFIGURATION
    assert classify_lwa_response(429, {"error": "invalid_client"}, None).kind is FailureKind.CLIENT_CREDENTIALS
    assert classify_lwa_response(507, None, None).kind is FailureKind.SERVER_ERROR
    failure = classify_lwa_response(429, None, "12")
    assert failure.retry_after_seconds == 12
    assert failure.reason == "HTTP 429"


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    assert parse_retry_after("30") == 30
    assert parse_retry_after("garbage") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0  # in the past: go now


@pytest.mark.parametrize("expires_in", [3600, 3600.0, "3600", " 3600 "])
def test_expires_in_is_accepted_as_a_number_or_a_numeric_string(expires_in: object) -> None:
    from recomamp.amazon.lwa import parse_grant

    grant = parse_grant(json.dumps({"access_token": "Atza|x", "expires_in": expires_in, "refresh_token": "Atzr|y"}))
    assert grant.expires_in_seconds == 3600


@pytest.mark.parametrize("expires_in", [None, "soon", "", True, [3600]])
def test_an_unusable_expires_in_is_a_bad_response(expires_in: object) -> None:
    from recomamp.amazon.lwa import LwaAttemptFailed, parse_grant

    with pytest.raises(LwaAttemptFailed) as excinfo:
        parse_grant(json.dumps({"access_token": "Atza|x", "expires_in": expires_in}))
    assert excinfo.value.failure.kind is FailureKind.BAD_RESPONSE

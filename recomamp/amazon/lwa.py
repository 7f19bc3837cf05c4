"""Login with Amazon: one token-endpoint call per method (a refresh, or an authorization-code exchange), and
`refresh_with_retries`, the refresh with classified retries (tenacity; the policy is `domain.retry.TokenPolicy`).
Classification is `domain.retry.classify_lwa_response`'s; single-flight over replicas is `services.tokens`'."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from pydantic import SecretStr
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from recomamp.domain.retry import (
    AttemptFailure,
    FailureKind,
    TokenError,
    TokenPolicy,
    classify_lwa_response,
    classify_network_exception,
    token_failure_message,
)
from recomamp.logs import get_logger

log = get_logger(__name__)

# Network failures that a retry may heal. aiohttp raises ServerDisconnectedError, ClientOSError and
# friends (all ClientError) and asyncio.TimeoutError for a response that hangs past the timeout.
NETWORK_ERRORS: tuple[type[BaseException], ...] = (aiohttp.ClientError, asyncio.TimeoutError, ConnectionError)


class LwaAttemptFailed(Exception):
    def __init__(self, failure: AttemptFailure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@dataclass(frozen=True)
class TokenGrant:
    access_token: str
    refresh_token: str | None  # None when LWA sent none back: keep the stored one
    expires_in_seconds: int


class LwaClient:
    def __init__(
        self,
        http: aiohttp.ClientSession,
        *,
        token_url: str,
        client_id: str,
        client_secret: SecretStr,
        timeout_seconds: float,
    ) -> None:
        self._http = http
        self._token_url = token_url
        self._client_id = client_id
        self._client_secret = client_secret
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)

    @property
    def client_id(self) -> str:
        return self._client_id

    async def refresh(self, refresh_token: str) -> TokenGrant:
        return await self._grant({"grant_type": "refresh_token", "refresh_token": refresh_token})

    async def exchange_code(self, code: str, *, redirect_uri: str, code_verifier: str) -> TokenGrant:
        """The authorization-code grant: a code from the consent redirect becomes a refresh token."""
        return await self._grant(
            {
                "grant_type": "authorization_code",
                "code": code,
                "redirect_uri": redirect_uri,
                "code_verifier": code_verifier,
            }
        )

    async def _grant(self, form: dict[str, str]) -> TokenGrant:
        form = {**form, "client_id": self._client_id, "client_secret": self._client_secret.get_secret_value()}
        try:
            async with self._http.post(self._token_url, data=form, timeout=self._timeout) as response:
                text = await response.text()
                if response.status != 200:
                    raise LwaAttemptFailed(
                        classify_lwa_response(response.status, _json_object(text), response.headers.get("Retry-After"))
                    )
        except NETWORK_ERRORS as exc:
            raise LwaAttemptFailed(classify_network_exception(exc)) from exc
        return parse_grant(text)


def _json_object(text: str) -> dict[str, Any] | None:
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _seconds(value: object) -> int | None:
    """`expires_in` is a number in most of Amazon's examples and a string ("3600") in one: accept both."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return int(value)
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return None


def parse_grant(text: str) -> TokenGrant:
    body = _json_object(text) or {}
    access = body.get("access_token")
    expires_in = _seconds(body.get("expires_in"))
    refresh = body.get("refresh_token")
    if not isinstance(access, str) or not access or expires_in is None:
        raise LwaAttemptFailed(
            AttemptFailure(
                kind=FailureKind.BAD_RESPONSE,
                http_status=200,
                error_description="the answer has no access_token or no expires_in in seconds",
            )
        )
    # Tokens are not registered for redaction one by one: the Atza|/Atzr| shape catches every one of
    # them, and a registry of every token a daemon ever refreshed would grow for months.
    return TokenGrant(
        access_token=access,
        refresh_token=refresh if isinstance(refresh, str) and refresh else None,
        expires_in_seconds=expires_in,
    )


async def refresh_with_retries(
    lwa: LwaClient,
    refresh_token: str,
    *,
    email: str,
    policy: TokenPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    observe: Callable[[str], None] = lambda _: None,
) -> TokenGrant:
    """One refresh with classified retries: 5xx, 429 and network errors are retried, 4xx never.

    Every failed attempt is logged with its number, its cause and whether it will be retried.
    Raises TokenError whose message says whether the failure is temporary or who must act.
    """

    def wait(state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome else None
        if isinstance(exc, LwaAttemptFailed):
            return policy.backoff.wait_after(exc.failure, state.attempt_number)
        return 0.0

    retrying = AsyncRetrying(
        stop=stop_after_attempt(policy.max_attempts),
        retry=retry_if_exception(lambda exc: isinstance(exc, LwaAttemptFailed) and exc.failure.retryable),
        wait=wait,
        sleep=sleep,
        reraise=True,
    )
    attempt_number = 0
    try:
        async for attempt in retrying:
            attempt_number = attempt.retry_state.attempt_number
            with attempt:
                try:
                    grant = await lwa.refresh(refresh_token)
                except LwaAttemptFailed as exc:
                    observe(exc.failure.kind.value)
                    _log_attempt(email, attempt_number, exc.failure, policy)
                    raise
                observe("ok")
                return grant
    except LwaAttemptFailed as exc:
        permanent, message = token_failure_message(exc.failure, attempt_number, email)
        log.error(
            "token_refresh_gave_up",
            user_email=email,
            attempts=attempt_number,
            permanent=permanent,
            failure_kind=exc.failure.kind.value,
            http_status=exc.failure.http_status,
            error_code=exc.failure.error_code,
        )
        raise TokenError(
            exc.failure.kind.value, message, permanent=permanent, attempts=attempt_number, failure=exc.failure
        ) from exc
    raise AssertionError("tenacity ended without a result or an error")  # pragma: no cover


def _log_attempt(email: str, attempt: int, failure: AttemptFailure, policy: TokenPolicy) -> None:
    will_retry = failure.retryable and attempt < policy.max_attempts
    (log.warning if will_retry else log.error)(
        "token_refresh_attempt_failed",
        user_email=email,
        attempt=attempt,
        max_attempts=policy.max_attempts,
        failure_kind=failure.kind.value,
        http_status=failure.http_status,
        error_code=failure.error_code,
        error_description=failure.error_description,
        exception_class=failure.exception_class,
        will_retry=will_retry,
        wait_seconds=policy.backoff.wait_after(failure, attempt) if will_retry else None,
    )

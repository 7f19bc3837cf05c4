"""The token service: a usable LWA access token per user, refreshed with classified retries.

- Before use, the stored token is checked: a refresh token present and decryptable, a known expiry,
  and the seconds left (logged). It is refreshed within a margin of expiry, or after a 401 from AMC.
- Single-flight: concurrent callers in one process share one refresh per user, and a Postgres
  advisory lock keeps two replicas from refreshing one user at once (the loser reads the winner's token).
- A user who needs re-authentication fails fast, with no call to LWA, until a new refresh token is set.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception, stop_after_attempt

from recomamp.amazon.lwa import LwaAttemptFailed, LwaClient, TokenGrant
from recomamp.config import RetrySettings
from recomamp.crypto import SecretBox, SecretUnreadable
from recomamp.domain.retry import AttemptFailure, BackoffPolicy, FailureKind, token_failure_message
from recomamp.logs import get_logger
from recomamp.store.db import Queryable
from recomamp.store.users import (
    MARK_NEEDS_REAUTH,
    SET_REFRESH_TOKEN,
    STORE_REFRESHED_TOKENS,
    UserTokens,
    fetch_user_tokens,
)

log = get_logger(__name__)

REAUTH_MESSAGE = "User needs to re-authenticate via Amazon OAuth"


class TokenError(Exception):
    """No usable access token. `permanent` says whether someone must act; the message says who and what."""

    def __init__(
        self,
        kind: str,
        message: str,
        *,
        permanent: bool,
        attempts: int = 0,
        failure: AttemptFailure | None = None,
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.permanent = permanent
        self.attempts = attempts
        self.failure = failure


@dataclass(frozen=True)
class TokenPolicy:
    max_attempts: int
    backoff: BackoffPolicy
    refresh_margin: timedelta

    @classmethod
    def from_settings(cls, retry: RetrySettings, refresh_margin_seconds: int) -> TokenPolicy:
        return cls(
            max_attempts=retry.lwa_max_attempts,
            backoff=BackoffPolicy(
                server_error_waits=retry.lwa_server_error_waits,
                throttle_waits=retry.lwa_throttle_waits,
                network_waits=retry.lwa_network_waits,
                retry_after_cap_seconds=retry.retry_after_cap_seconds,
            ),
            refresh_margin=timedelta(seconds=refresh_margin_seconds),
        )


def _advisory_key(user_id: int) -> str:
    return f"recomamp.token_refresh.{user_id}"


def _reauth_error(user: UserTokens) -> TokenError:
    since = f" (marked {user.needs_reauth_at:%Y-%m-%d %H:%M} UTC)" if user.needs_reauth_at else ""
    reason = f": {user.needs_reauth_reason}" if user.needs_reauth_reason else ""
    return TokenError(
        FailureKind.REAUTH_REQUIRED.value,
        f"{REAUTH_MESSAGE}{since}{reason}. Amazon was not called. After the user signs in again, store the new "
        f"refresh token with `recomamp users set-token {user.email}`.",
        permanent=True,
    )


class TokenService:
    def __init__(
        self,
        pool: asyncpg.Pool,
        lwa: LwaClient,
        box: SecretBox,
        policy: TokenPolicy,
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._pool = pool
        self._lwa = lwa
        self._box = box
        self._policy = policy
        self._sleep = sleep
        self._now = now
        self._inflight: dict[int, asyncio.Future[str]] = {}

    def reconfigure(self, policy: TokenPolicy) -> None:
        """A reload swaps the policy; a refresh already in flight keeps the one it started with."""
        self._policy = policy

    async def access_token(self, user_id: int, *, stale: str | None = None, announce: bool = True) -> str:
        """A usable access token. Pass `stale`, the token AMC just answered 401 to, to force a refresh.

        `announce` logs the check (status and seconds left) at info; otherwise at debug.
        """
        user = await fetch_user_tokens(self._pool, user_id)
        access = self._usable_access_token(user, stale=stale, log_level="info" if announce else "debug")
        if access is not None:
            return access
        future = self._inflight.get(user_id)
        if future is None:
            future = asyncio.ensure_future(self._refresh_under_lock(user_id, stale))
            self._inflight[user_id] = future
            future.add_done_callback(lambda _: self._inflight.pop(user_id, None))
        # shield: one caller giving up (a cancelled run) must not cancel the refresh the others wait on.
        return await asyncio.shield(future)

    def _usable_access_token(self, user: UserTokens, *, stale: str | None, log_level: str | None) -> str | None:
        """The stored access token if it is good for longer than the margin; raise if the user is unusable."""
        if user.needs_reauth:
            raise _reauth_error(user)
        if not user.refresh_token_encrypted:
            raise TokenError(
                FailureKind.REAUTH_REQUIRED.value,
                f"{REAUTH_MESSAGE}: no refresh token is stored for {user.email}. Store one with "
                f"`recomamp users set-token {user.email}`.",
                permanent=True,
            )
        access: str | None = None
        if user.access_token_encrypted:
            try:
                access = self._box.decrypt(user.access_token_encrypted)
            except SecretUnreadable:
                access = None  # a fresh refresh replaces it; the refresh token is checked there
        seconds_left = (
            (user.access_token_expires_at - self._now()).total_seconds() if user.access_token_expires_at else None
        )
        if access is None or seconds_left is None:
            status = "missing"
        elif access == stale:
            status = "rejected_by_amc"
        elif seconds_left <= 0:
            status = "expired"
        elif seconds_left <= self._policy.refresh_margin.total_seconds():
            status = "expiring"
        else:
            status = "valid"
        if log_level is not None:
            # A token that needs a refresh is always worth an info line; a routine check, only when asked.
            quiet = log_level == "debug" and status == "valid"
            (log.debug if quiet else log.info)(
                "token_checked",
                user_email=user.email,
                token_status=status,
                token_seconds_left=None if seconds_left is None else int(seconds_left),
            )
        return access if status == "valid" else None

    async def _refresh_under_lock(self, user_id: int, stale: str | None) -> str:
        failure: TokenError | None = None
        async with self._pool.acquire() as connection, connection.transaction():
            await connection.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", _advisory_key(user_id))
            # Read again under the lock: another replica may have refreshed while we waited.
            user = await fetch_user_tokens(connection, user_id)
            access = self._usable_access_token(user, stale=stale, log_level=None)
            if access is not None:
                log.info("token_refreshed_elsewhere", user_email=user.email)
                return access
            try:
                refresh_token = self._box.decrypt(user.refresh_token_encrypted or "")
            except SecretUnreadable as exc:
                raise TokenError(
                    "token_unreadable",
                    f"The stored refresh token of {user.email} does not decrypt with the configured token keys. "
                    "Permanent: an operator must restore the key that encrypted it to [security] token_key_file "
                    "(keep old keys below the new one when rotating). The user was not marked.",
                    permanent=True,
                ) from exc
            try:
                grant = await self._refresh_with_retries(refresh_token, user.email)
            except TokenError as exc:
                if exc.kind == FailureKind.REAUTH_REQUIRED.value:
                    detail = exc.failure.reason if exc.failure else "refresh token rejected"
                    if exc.failure and exc.failure.error_description:
                        detail += f": {exc.failure.error_description}"
                    await connection.execute(MARK_NEEDS_REAUTH, user_id, f"{detail}")
                    log.error("user_marked_needs_reauth", user_email=user.email, reason=detail)
                failure = exc
            else:
                await self._store(connection, user_id, grant)
                log.info("token_refreshed", user_email=user.email, token_expires_in_seconds=grant.expires_in_seconds)
                return grant.access_token
        # Raised after the transaction has committed the re-authentication mark.
        raise failure

    async def _store(self, connection: Queryable, user_id: int, grant: TokenGrant) -> None:
        expires_at = self._now() + timedelta(seconds=grant.expires_in_seconds)
        # No refresh token back: keep the stored one. A different one replaces it.
        new_refresh = self._box.encrypt(grant.refresh_token) if grant.refresh_token else None
        await connection.execute(
            STORE_REFRESHED_TOKENS, user_id, self._box.encrypt(grant.access_token), expires_at, new_refresh
        )

    async def _refresh_with_retries(self, refresh_token: str, email: str) -> TokenGrant:
        return await refresh_with_retries(self._lwa, refresh_token, email=email, policy=self._policy, sleep=self._sleep)


async def refresh_with_retries(
    lwa: LwaClient,
    refresh_token: str,
    *,
    email: str,
    policy: TokenPolicy,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
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
                    return await lwa.refresh(refresh_token)
                except LwaAttemptFailed as exc:
                    _log_attempt(email, attempt_number, exc.failure, policy)
                    raise
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


async def set_refresh_token(connection: Queryable, box: SecretBox, user_id: int, refresh_token: str) -> None:
    """Store a new refresh token (from the user's fresh sign-in) and clear the re-authentication mark."""
    await connection.execute(SET_REFRESH_TOKEN, user_id, box.encrypt(refresh_token))

"""The token service: a usable LWA access token per user, refreshed with classified retries.

- Before use, the stored token is checked: a refresh token present and decryptable, a known expiry,
  and the seconds left (logged). It is refreshed within a margin of expiry, or after a 401 from AMC.
- Single-flight over all replicas, with nothing held across the HTTP call: in-process, concurrent
  callers share one refresh per user; across replicas, a short lease on the user row (one UPDATE)
  says who refreshes. The holder calls LWA (with its 5/10/20 s waits) outside any transaction and
  without a pooled connection; the others poll the row, with a deadline, and take the stored token.
  One LWA call per expiry per user, however many replicas and runs ask.
- A user who needs re-authentication fails fast, with no call to LWA, until a new refresh token is set.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from recomamp.amazon.lwa import LwaClient, refresh_with_retries
from recomamp.crypto import SecretBox, SecretUnreadable
from recomamp.domain.retry import FailureKind, TokenError, TokenPolicy
from recomamp.logs import get_logger
from recomamp.store import users as user_store
from recomamp.store.db import Queryable
from recomamp.store.users import UserTokens

log = get_logger(__name__)

REAUTH_MESSAGE = "User needs to re-authenticate via Amazon OAuth"
# The single-flight refresh's lease across replicas, renewed every third of it while its holder lives.
REFRESH_LEASE_SECONDS = 15.0


def _reauth_error(user: UserTokens) -> TokenError:
    since = f" (marked {user.needs_reauth_at:%Y-%m-%d %H:%M} UTC)" if user.needs_reauth_at else ""
    reason = f": {user.needs_reauth_reason}" if user.needs_reauth_reason else ""
    return TokenError(
        FailureKind.REAUTH_REQUIRED.value,
        f"{REAUTH_MESSAGE}{since}{reason}. Amazon was not called. Once the user can sign in, run "
        f"`recomamp users authorize {user.email} --rerun-failed` (or store a refresh token with "
        f"`recomamp users set-token {user.email}`).",
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
        wait_poll_seconds: float = 0.25,
        observe: Callable[[str], None] = lambda _: None,
        refresh_lease_seconds: float = REFRESH_LEASE_SECONDS,
    ) -> None:
        self._pool = pool
        self._refresh_lease_seconds = refresh_lease_seconds
        self._lwa = lwa
        self._box = box
        self._policy = policy
        self._sleep = sleep
        self._now = now
        self._wait_poll_seconds = wait_poll_seconds
        self._inflight: dict[int, asyncio.Future[str]] = {}
        self._observe = observe

    def reconfigure(self, policy: TokenPolicy, box: SecretBox | None = None) -> None:
        """A reload swaps the policy and the keys; a refresh already in flight keeps what it started with."""
        self._policy = policy
        if box is not None:
            self._box = box

    @property
    def lwa(self) -> LwaClient:
        return self._lwa

    async def access_token(self, user_id: int, *, stale: str | None = None, announce: bool = True) -> str:
        """A usable access token. Pass `stale`, the token AMC just answered 401 to, to force a refresh.

        `announce` logs the check (status and seconds left) at info; otherwise at debug.
        """
        token, _ = await self.access_token_until(user_id, stale=stale, announce=announce)
        return token

    async def access_token_until(
        self, user_id: int, *, stale: str | None = None, announce: bool = True
    ) -> tuple[str, datetime]:
        """A usable access token and until when it may be used (its expiry less the refresh margin)."""
        user = await user_store.fetch_user_tokens(self._pool, user_id)
        access = self._usable_access_token(user, stale=stale, log_level="info" if announce else "debug")
        if access is not None and user.access_token_expires_at is not None:
            return access, user.access_token_expires_at - self._policy.refresh_margin
        access = await self._refresh(user_id, stale)
        # Just refreshed (here or by another replica): read its expiry once.
        user = await user_store.fetch_user_tokens(self._pool, user_id)
        until = (user.access_token_expires_at or self._now()) - self._policy.refresh_margin
        return access, until

    async def _refresh(self, user_id: int, stale: str | None) -> str:
        future = self._inflight.get(user_id)
        if future is None:
            future = asyncio.ensure_future(self._refresh_single_flight(user_id, stale))
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
                f"{REAUTH_MESSAGE}: no refresh token is stored for {user.email}. Run "
                f"`recomamp users authorize {user.email}` (or `recomamp users set-token {user.email}`).",
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

    async def _refresh_single_flight(self, user_id: int, stale: str | None) -> str:
        policy = self._policy
        deadline = time.monotonic() + policy.longest_refresh_seconds + 30.0
        waited = False
        poll = self._wait_poll_seconds
        while True:
            hold = self._refresh_lease_seconds
            lease = await user_store.take_refresh_lease(self._pool, user_id, hold)
            if lease is not None:
                renewal = asyncio.create_task(
                    self._keep_refresh_lease(user_id, lease, hold), name=f"token-refresh-lease-{user_id}"
                )
                try:
                    return await self._refresh_holding_lease(user_id, stale, policy)
                finally:
                    renewal.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await renewal
                    try:
                        await user_store.release_refresh_lease(self._pool, user_id, lease)
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                        # It expires on its own; the others then take the stored token or refresh.
                        log.warning("token_refresh_lease_not_released", error=str(exc))
            if not waited:
                log.info("token_refresh_waiting_for_another_replica", user_id=user_id)
                waited = True
            # Another replica (or process) refreshes this user: wait for its result, then use it.
            await self._sleep(poll)
            poll = min(poll * 1.5, 2.0)
            user = await user_store.fetch_user_tokens(self._pool, user_id)
            access = self._usable_access_token(user, stale=stale, log_level=None)
            if access is not None:
                log.info("token_refreshed_elsewhere", user_email=user.email)
                return access
            if time.monotonic() > deadline:
                raise TokenError(
                    "token_refresh_timeout",
                    f"Another replica held the token refresh of {user.email} for longer than "
                    f"{policy.longest_refresh_seconds:.0f} s without storing a token. "
                    "Temporary: the run is tried again.",
                    permanent=False,
                )

    async def _keep_refresh_lease(self, user_id: int, lease: uuid.UUID, hold: float) -> None:
        """Renew the refresh lease while its holder lives: short, so a replica killed mid-refresh holds up its
        user's refresh for `hold` seconds, not for the whole retry sequence (minutes: every attempt timing out,
        every wait at its longest), as a lease taken once for that long did in the kill-storm test."""
        while True:
            await asyncio.sleep(hold / 3)
            try:
                held = await user_store.renew_refresh_lease(self._pool, user_id, lease, hold)
            except Exception as exc:  # a timeout or an outage: best effort, and never the refresh's own error
                # Tried again at the next beat; were it to run out, another replica refreshes too: harmless
                # (LWA hands out another access token, and the refresh token comes back unchanged).
                log.warning("token_refresh_lease_not_renewed", user_id=user_id, exception_class=type(exc).__name__)
                continue
            if not held:
                log.warning(
                    "token_refresh_lease_lost",
                    user_id=user_id,
                    detail="the lease ran out before it was renewed; another replica may refresh this user too",
                )
                return

    async def _refresh_holding_lease(self, user_id: int, stale: str | None, policy: TokenPolicy) -> str:
        # Read again under the lease: another replica may have refreshed just before we took it.
        user = await user_store.fetch_user_tokens(self._pool, user_id)
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
            grant = await refresh_with_retries(
                self._lwa, refresh_token, email=user.email, policy=policy, sleep=self._sleep, observe=self._observe
            )
        except TokenError as exc:
            if exc.kind == FailureKind.REAUTH_REQUIRED.value:
                detail = exc.failure.reason if exc.failure else "refresh token rejected"
                if exc.failure and exc.failure.error_description:
                    detail += f": {exc.failure.error_description}"
                async with self._pool.acquire() as connection:
                    if await user_store.mark_needs_reauth(connection, user_id, detail):
                        log.error("user_marked_needs_reauth", user_email=user.email, reason=detail)
            raise
        box = self._box  # the keys of now: a reload may have put a new key first
        await user_store.store_refreshed_tokens(
            self._pool,
            user_id,
            access_encrypted=box.encrypt(grant.access_token),
            expires_at=self._now() + timedelta(seconds=grant.expires_in_seconds),
            # No refresh token back: keep the stored one. A different one replaces it.
            refresh_encrypted=box.encrypt(grant.refresh_token) if grant.refresh_token else None,
        )
        log.info("token_refreshed", user_email=user.email, token_expires_in_seconds=grant.expires_in_seconds)
        return grant.access_token


async def set_refresh_token(connection: Queryable, box: SecretBox, user_id: int, refresh_token: str) -> datetime | None:
    """Store a new refresh token (from the user's fresh sign-in) and clear the re-authentication mark."""
    return await user_store.set_refresh_token(connection, user_id, box.encrypt(refresh_token))

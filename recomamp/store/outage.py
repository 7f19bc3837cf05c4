"""Database outages: retry with capped backoff, and one log line per change of state.

A database that is away is a state, not an error: the poll loop, the heartbeat and every run's writes
wait for it (with waits growing to [database] outage_max_wait_seconds) and go on where they stopped.
The log says `database_unreachable` once, `database_still_unreachable` every few minutes, and
`database_reachable_again` with how long it was away. `/readyz` reads `healthy`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from recomamp.logs import get_logger
from recomamp.store.db import is_connection_error

log = get_logger(__name__)

T = TypeVar("T")

STILL_AWAY_EVERY_SECONDS = 300.0


class DatabaseHealth:
    """Whether the database answered last time anyone asked; logs transitions only."""

    def __init__(self, *, still_away_every: float = STILL_AWAY_EVERY_SECONDS) -> None:
        self.healthy = True
        self.down_since: float | None = None
        self.last_error: str | None = None
        self._still_away_every = still_away_every
        self._last_reported = 0.0
        self.listeners: list[Callable[[bool], None]] = []

    def ok(self) -> None:
        if not self.healthy:
            away = time.monotonic() - (self.down_since or time.monotonic())
            log.warning("database_reachable_again", away_seconds=round(away, 1))
            self.healthy = True
            self.down_since = None
            for listener in self.listeners:
                listener(True)

    def failed(self, exc: BaseException, what: str) -> None:
        now = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"
        if self.healthy:
            self.healthy = False
            self.down_since = now
            self._last_reported = now
            log.error("database_unreachable", during=what, error=self.last_error, exception_class=type(exc).__name__)
            for listener in self.listeners:
                listener(False)
        elif now - self._last_reported >= self._still_away_every:
            self._last_reported = now
            log.error(
                "database_still_unreachable",
                away_seconds=round(now - (self.down_since or now)),
                during=what,
                error=self.last_error,
            )

    @property
    def away_seconds(self) -> float:
        return 0.0 if self.down_since is None else time.monotonic() - self.down_since


class DatabaseGate:
    """Runs a database call again and again while the database is away, until it answers or `give_up` is set."""

    def __init__(
        self,
        health: DatabaseHealth,
        *,
        max_wait: float,
        first_wait: float = 0.2,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.health = health
        self._max_wait = max_wait
        self._first_wait = first_wait
        self._sleep = sleep

    def reconfigure(self, max_wait: float) -> None:
        self._max_wait = max_wait

    async def call(
        self,
        what: str,
        action: Callable[[], Awaitable[T]],
        *,
        deadline: float | None = None,
    ) -> T:
        """`action()`, retried on connection errors with capped backoff; other errors propagate at once.

        With `deadline` (a time.monotonic() value), the last connection error is raised once it passes.
        """
        waits = [self._first_wait]  # the next wait: first_wait, then doubled up to max_wait (read at each wait)

        def wait(_: RetryCallState) -> float:
            upcoming = waits[0]
            waits[0] = min(upcoming * 2, self._max_wait)
            return upcoming

        def failed(state: RetryCallState) -> None:
            exc = state.outcome.exception() if state.outcome else None
            if exc is not None:
                self.health.failed(exc, what)

        def past_deadline(state: RetryCallState) -> bool:
            return deadline is not None and time.monotonic() + state.upcoming_sleep > deadline

        retrying = AsyncRetrying(
            retry=retry_if_exception(is_connection_error),
            after=failed,
            wait=wait,
            stop=past_deadline,
            sleep=self._sleep,
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                result = await action()
        self.health.ok()
        return result

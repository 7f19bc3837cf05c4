"""The lease keeper: the heartbeat that renews every lease this process holds, on a connection of its own.

It cannot be starved by the pool the runs share, and it renews every lease_seconds / 3 (by default),
retrying fast when a renewal fails. Each held lease knows until when it is confirmed (from the moment
the last successful renewal was *sent*); a run whose lease was not confirmed in time verifies it with
the database before its next side effect. A renewal that finds a lease gone (another replica adopted
the run, or it was cancelled) stops that run's coroutine at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import asyncpg

from recomamp import __version__
from recomamp.logs import get_logger
from recomamp.store import replicas
from recomamp.store.db import is_connection_error, open_connection
from recomamp.store.outage import DatabaseHealth
from recomamp.store.runs import RunLease, release_leases, renew_leases

log = get_logger(__name__)


@dataclass(slots=True)
class _Held:
    lease: RunLease
    confirmed_until: float  # time.monotonic()


class LeaseKeeper:
    def __init__(
        self,
        dsn: str,
        *,
        replica: str,
        lease_seconds: float,
        interval_seconds: float,
        health: DatabaseHealth,
        command_timeout: float,
        connect_timeout: float,
        on_lost: Callable[[int], None],
    ) -> None:
        self._dsn = dsn
        self._replica = replica
        self.lease_seconds = lease_seconds
        self.interval_seconds = interval_seconds
        self._health = health
        self._command_timeout = command_timeout
        self._connect_timeout = connect_timeout
        self._on_lost = on_lost
        self._held: dict[int, _Held] = {}
        self._connection: asyncpg.Connection | None = None
        self._lock = asyncio.Lock()  # one statement at a time on the dedicated connection
        self.last_beat = time.monotonic()

    def reconfigure(self, *, lease_seconds: float, interval_seconds: float) -> None:
        self.lease_seconds = lease_seconds
        self.interval_seconds = interval_seconds

    # --- what is held -----------------------------------------------------------------------------------

    def hold(self, lease: RunLease, claimed_at: float) -> None:
        self._held[lease.run_id] = _Held(lease, claimed_at + self.lease_seconds)

    def drop(self, run_id: int) -> None:
        self._held.pop(run_id, None)

    def held(self) -> list[RunLease]:
        return [held.lease for held in self._held.values()]

    def confirmed(self, run_id: int) -> bool:
        held = self._held.get(run_id)
        return held is not None and time.monotonic() < held.confirmed_until

    def confirm(self, run_id: int, sent_at: float) -> None:
        held = self._held.get(run_id)
        if held is not None:
            held.confirmed_until = max(held.confirmed_until, sent_at + self.lease_seconds)

    # --- the loop -------------------------------------------------------------------------------------------

    async def _conn(self) -> asyncpg.Connection:
        if self._connection is None or self._connection.is_closed():
            self._connection = await open_connection(
                self._dsn, command_timeout=self._command_timeout, connect_timeout=self._connect_timeout
            )
        return self._connection

    async def _drop_connection(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                self._connection.terminate()
        self._connection = None

    async def renew_once(self) -> None:
        """Renew every held lease; stop the runs whose lease is gone. Raises on a connection error."""
        held = list(self._held.values())
        sent_at = time.monotonic()
        async with self._lock:
            connection = await self._conn()
            renewed = await renew_leases(connection, [h.lease for h in held], self.lease_seconds)
            await replicas.beat(connection, self._replica, socket.gethostname(), os.getpid(), __version__, len(held))
        self.last_beat = time.monotonic()
        for item in held:
            if item.lease.run_id in renewed:
                item.confirmed_until = max(item.confirmed_until, sent_at + self.lease_seconds)
            elif self._held.get(item.lease.run_id) is item:
                log.warning(
                    "run_lease_lost",
                    run_id=item.lease.run_id,
                    detail="another replica adopted it, or it was cancelled; stopping ours",
                )
                self.drop(item.lease.run_id)
                self._on_lost(item.lease.run_id)

    async def run(self, stop: asyncio.Event) -> None:
        """Renew until `stop` is set. A failed renewal is retried after a short wait, not a whole interval."""
        retry = 0.25
        while not stop.is_set():
            try:
                await self.renew_once()
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self._health.failed(exc, "heartbeat")
                await self._drop_connection()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), retry)
                retry = min(retry * 2, max(self.interval_seconds / 2, 0.25))
                continue
            self._health.ok()
            retry = 0.25
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.interval_seconds)

    async def release(self, leases: list[RunLease]) -> None:
        """Give leases back (drain): the runs go back to pending, at their step."""
        async with self._lock:
            connection = await self._conn()
            await release_leases(connection, leases)
        for lease in leases:
            self.drop(lease.run_id)

    async def close(self) -> None:
        if self._connection is not None:
            with contextlib.suppress(Exception):
                async with self._lock:
                    await replicas.stopped(self._connection, self._replica, os.getpid())
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._connection.close(), 5)
        self._connection = None

"""The daemon's side tasks: housekeeping, the control socket (`recomamp reload`), /metrics and its gauges.

Each is a named, supervised task: if one dies, the daemon exits non-zero and systemd restarts it. What can be
checked at start is: /metrics and the control socket are bound (`open_listeners`) before READY=1.
Each takes what it uses (a pool, a config getter, the metrics, the database's health, a `reload` callable),
never the daemon itself: this module knows nothing of daemon.process.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from recomamp.config import Config
from recomamp.daemon.control import ReloadCallable, bind_control, close_control, serve_control
from recomamp.logs import get_logger
from recomamp.notify.sender import BATCH, run_sender, send_due
from recomamp.observe.http import MetricsServer
from recomamp.observe.metrics import Metrics
from recomamp.services.coverage import refresh_freshness
from recomamp.services.status import read_status
from recomamp.store import outbox, quota, replicas
from recomamp.store import runs as run_store
from recomamp.store.db import is_connection_error
from recomamp.store.outage import DatabaseHealth

log = get_logger(__name__)

HOUSEKEEPING_EVERY_SECONDS = 300.0


@dataclass
class Listeners:
    """What the daemon binds before READY=1: an address or socket it cannot have stops the start with one line
    naming the key, instead of a side task dying after READY (a restart loop under systemd)."""

    metrics: MetricsServer | None = None
    control: asyncio.Server | None = None
    control_path: str = ""

    async def close(self) -> None:
        if self.control is not None:
            await close_control(self.control, self.control_path)
            self.control = None
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None


Check = Callable[[], tuple[bool, str]]  # (passes, why): what /healthz and /readyz answer


async def open_listeners(
    config: Config, *, metrics: Metrics, alive: Check, ready: Check, replica: str, reload: ReloadCallable
) -> Listeners:
    """Bind /metrics and the control socket. ListenError or ControlSocketError when one cannot be had."""
    listeners = Listeners()
    try:
        if config.metrics.listen:
            listeners.metrics = await start_metrics(config.metrics.listen, metrics, alive=alive, ready=ready)
        listeners.control = await bind_control(config.daemon.control_socket, replica=replica, reload=reload)
        listeners.control_path = config.daemon.control_socket
    except BaseException:
        await listeners.close()
        raise
    return listeners


def sidecar_tasks(
    listeners: Listeners,
    *,
    pool: asyncpg.Pool,
    config: Callable[[], Config],
    metrics: Metrics,
    health: DatabaseHealth,
) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    """The side tasks by name, each over the daemon's own pool (`pool`: never queued behind runs) and the config
    of now (`config()`: a reload swaps it)."""
    return {
        "housekeeping": lambda: housekeeping(pool, config, metrics, health),
        "control": lambda: serve_control(listeners.control),
        "gauges": lambda: refresh_gauges(pool, config, metrics, health),
        "notifier": lambda: send_notifications(pool, config, metrics, health),
    }


async def start_metrics(listen: str, metrics: Metrics, *, alive: Check, ready: Check) -> MetricsServer:
    """/metrics, /healthz, /readyz on [metrics] listen, from before READY until the daemon stops (a reload keeps
    the address). /readyz says 503 while the daemon waits for the database."""
    server = MetricsServer(metrics, alive=alive, ready=ready)
    await server.start(listen)
    return server


async def send_notifications(
    pool: asyncpg.Pool, config: Callable[[], Config], metrics: Metrics, health: DatabaseHealth
) -> None:
    """Alerts from the outbox to the [[notify.webhook]] targets (a reload applies new targets at once)."""
    await run_sender(
        pool,
        config,
        observe=metrics.webhook_delivery,
        on_database_error=lambda exc: health.failed(exc, "notifications"),
    )


async def send_notifications_once(pool: asyncpg.Pool, config: Config, metrics: Metrics) -> None:
    """One try at every due alert (`run --once`); what fails stays in the outbox for the next run."""
    if not config.notify.webhook:
        return
    try:
        async with aiohttp.ClientSession() as session, pool.acquire() as connection:
            while await send_due(connection, session, config, observe=metrics.webhook_delivery) >= BATCH:
                pass
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        log.error("notifications_not_sent", error=str(exc), detail="they stay in the outbox for the next run")


async def refresh_gauges(
    pool: asyncpg.Pool, config_of_now: Callable[[], Config], metrics: Metrics, health: DatabaseHealth
) -> None:
    """The gauges that come from the database (re-authentication, paused schedules, quota, lag, last success,
    freshness)."""
    failing = False
    while True:
        config = config_of_now()
        try:
            snapshot = await read_status(pool, quota_window_seconds=config.amc.quota_window_seconds)
            metrics.set_database_gauges(snapshot, config.amc.adhoc_executions_per_day)
            # Freshness too: its gauges, and a lateness episode's start or end as an alert (once per episode).
            async with pool.acquire() as connection:
                fleet = await refresh_freshness(connection, datetime.now(UTC))
            metrics.set_freshness_gauges(fleet)
            if failing:
                log.info("metrics_gauges_refreshed_again")
            failing = False
        except Exception as exc:
            if is_connection_error(exc):
                health.failed(exc, "metrics gauges")
            elif not failing:
                # Gauges are for people watching; a bug here must not stop runs (or restart-loop the unit).
                # Logged once per change of state; the gauges keep their last values meanwhile.
                log.error("metrics_gauges_failed", exc_info=exc, detail="the gauges keep their last values")
                failing = True
        await asyncio.sleep(config.metrics.refresh_seconds)


async def housekeeping(
    pool: asyncpg.Pool, config_of_now: Callable[[], Config], metrics: Metrics, health: DatabaseHealth
) -> None:
    """Prune what would otherwise grow for months: quota rows, delivered alerts, dead replicas, kept results."""
    while True:
        config = config_of_now()
        try:
            await quota.prune(pool, config.amc.quota_window_seconds)
            await outbox.prune(pool, keep_days=14)
            await replicas.prune(pool)
            await prune_kept_results(pool, config, metrics)
        except Exception as exc:
            if not is_connection_error(exc):
                raise
            health.failed(exc, "housekeeping")
        await asyncio.sleep(HOUSEKEEPING_EVERY_SECONDS)


async def prune_kept_results(pool: asyncpg.Pool, config: Config, metrics: Metrics) -> None:
    """Delete loaded results past [daemon] keep_results_days; report the space kept and warn above the cap."""
    expired = await run_store.expired_kept_results(pool)
    for run_id, path in expired:
        await asyncio.to_thread(shutil.rmtree, Path(path), True)
        await run_store.set_results_kept(pool, run_id, path=None, size=None, kept_until=None)
    size = await asyncio.to_thread(directory_size, config.daemon.spool_dir)
    metrics.kept_results.set(size)
    limit = config.daemon.kept_results_max_mb * (1 << 20)
    if size > limit:
        log.error(
            "kept_results_over_limit",
            kept_mb=size // (1 << 20),
            limit_mb=config.daemon.kept_results_max_mb,
            detail="results not yet loaded are never dropped: load them (`recomamp runs retry-upload`) or raise "
            "[daemon] kept_results_max_mb",
        )


def directory_size(root: Path) -> int:
    total = 0
    if not root.exists():
        return 0
    for path in root.rglob("*"):
        try:
            if path.is_file():
                total += path.stat().st_size
        except OSError:
            continue
    return total

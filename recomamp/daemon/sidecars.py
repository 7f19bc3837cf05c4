"""The daemon's side tasks: housekeeping, the control socket (`recomamp reload`), /metrics and its gauges.

Each is a named, supervised task: if one dies, the daemon exits non-zero and systemd restarts it. What can be
checked at start is: /metrics and the control socket are bound (`open_listeners`) before READY=1.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from recomamp.logs import get_logger
from recomamp.observe.http import MetricsServer
from recomamp.store import outbox, quota, replicas
from recomamp.store import runs as run_store

if TYPE_CHECKING:
    from recomamp.daemon.process import Daemon

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
        from recomamp.daemon.control import close_control

        if self.control is not None:
            await close_control(self.control, self.control_path)
            self.control = None
        if self.metrics is not None:
            await self.metrics.stop()
            self.metrics = None


async def open_listeners(daemon: Daemon) -> Listeners:
    """Bind /metrics and the control socket. ListenError or ControlSocketError when one cannot be had."""
    from recomamp.daemon.control import bind_control

    listeners = Listeners()
    try:
        if daemon.config.metrics.listen:
            listeners.metrics = await start_metrics(daemon)
        listeners.control = await bind_control(daemon)
        listeners.control_path = daemon.config.daemon.control_socket
    except BaseException:
        await listeners.close()
        raise
    return listeners


def sidecar_tasks(daemon: Daemon, listeners: Listeners) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
    from recomamp.daemon.control import serve_control

    return {
        "housekeeping": lambda: housekeeping(daemon),
        "control": lambda: serve_control(listeners.control),
        "gauges": lambda: refresh_gauges(daemon),
        "notifier": lambda: send_notifications(daemon),
    }


async def start_metrics(daemon: Daemon) -> MetricsServer:
    """/metrics, /healthz, /readyz on [metrics] listen, from before READY until the daemon stops (a reload keeps
    the address). /readyz says 503 while the daemon waits for the database."""

    def alive() -> tuple[bool, str]:
        dead = [name for name, task in daemon._tasks.items() if task.done()]
        return (not dead, "every task is alive" if not dead else f"tasks ended: {', '.join(dead)}")

    def ready() -> tuple[bool, str]:
        if not daemon.ready:
            return False, "starting: waiting for the database or for pending migrations"
        if not daemon.health.healthy:
            return False, f"the database has been unreachable for {daemon.health.away_seconds:.0f} s"
        return True, "the database answers and the schema is current"

    server = MetricsServer(daemon.metrics, alive=alive, ready=ready)
    await server.start(daemon.config.metrics.listen)
    return server


async def send_notifications(daemon: Daemon) -> None:
    """Alerts from the outbox to the [[notify.webhook]] targets (a reload applies new targets at once)."""
    from recomamp.notify.sender import run_sender

    await run_sender(
        daemon._services.control_pool,
        lambda: daemon.config,
        observe=daemon.metrics.webhook_delivery,
        on_database_error=lambda exc: daemon.health.failed(exc, "notifications"),
    )


async def send_notifications_once(daemon: Daemon) -> None:
    """One try at every due alert (`run --once`); what fails stays in the outbox for the next run."""
    import aiohttp

    from recomamp.notify.sender import BATCH, send_due
    from recomamp.store.db import is_connection_error

    config = daemon.config
    if not config.notify.webhook:
        return
    try:
        async with aiohttp.ClientSession() as session, daemon._services.control_pool.acquire() as connection:
            while await send_due(connection, session, config, observe=daemon.metrics.webhook_delivery) >= BATCH:
                pass
    except Exception as exc:
        if not is_connection_error(exc):
            raise
        log.error("notifications_not_sent", error=str(exc), detail="they stay in the outbox for the next run")


async def refresh_gauges(daemon: Daemon) -> None:
    """The gauges that come from the database (re-authentication, paused schedules, quota, lag, last success,
    freshness)."""
    from recomamp.services.coverage import refresh_freshness
    from recomamp.services.status import read_status
    from recomamp.store.db import is_connection_error

    failing = False
    while True:
        config = daemon.config
        try:
            snapshot = await read_status(
                daemon._services.control_pool, quota_window_seconds=config.amc.quota_window_seconds
            )
            daemon.metrics.set_database_gauges(snapshot, config.amc.adhoc_executions_per_day)
            # Freshness too: its gauges, and a lateness episode's start or end as an alert (once per episode).
            async with daemon._services.control_pool.acquire() as connection:
                fleet = await refresh_freshness(connection, datetime.now(UTC))
            daemon.metrics.set_freshness_gauges(fleet)
            if failing:
                log.info("metrics_gauges_refreshed_again")
            failing = False
        except Exception as exc:
            if is_connection_error(exc):
                daemon.health.failed(exc, "metrics gauges")
            elif not failing:
                # Gauges are for people watching; a bug here must not stop runs (or restart-loop the unit).
                # Logged once per change of state; the gauges keep their last values meanwhile.
                log.error("metrics_gauges_failed", exc_info=exc, detail="the gauges keep their last values")
                failing = True
        await asyncio.sleep(config.metrics.refresh_seconds)


async def housekeeping(daemon: Daemon) -> None:
    """Prune what would otherwise grow for months: quota rows, delivered alerts, dead replicas, kept results."""
    while True:
        config = daemon.config
        services = daemon._services
        try:
            await quota.prune(services.control_pool, config.amc.quota_window_seconds)
            await outbox.prune(services.control_pool, keep_days=14)
            await replicas.prune(services.control_pool)
            await prune_kept_results(daemon)
        except Exception as exc:
            from recomamp.store.db import is_connection_error

            if not is_connection_error(exc):
                raise
            daemon.health.failed(exc, "housekeeping")
        await asyncio.sleep(HOUSEKEEPING_EVERY_SECONDS)


async def prune_kept_results(daemon: Daemon) -> None:
    """Delete loaded results past [daemon] keep_results_days; report the space kept and warn above the cap."""
    config = daemon.config
    services = daemon._services
    expired = await run_store.expired_kept_results(services.control_pool)
    for run_id, path in expired:
        await asyncio.to_thread(shutil.rmtree, Path(path), True)
        await run_store.set_results_kept(services.control_pool, run_id, path=None, size=None, kept_until=None)
    size = await asyncio.to_thread(directory_size, config.daemon.spool_dir)
    daemon.metrics.kept_results.set(size)
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

"""The daemon: supervised background tasks around the run pipeline.

Named tasks, each watched by the supervisor; if one dies, the daemon logs why and exits non-zero so
that systemd restarts it:
- poller: turns due schedules into runs. It sleeps until the earliest next_run_at (or the poll
  interval, whichever comes first), and NOTIFY (schedule created, edited, resumed or run now) wakes it;
- dispatcher: leases runnable runs within the shared limits and starts one coroutine per run, never
  one for a run this process already runs;
- lease keeper: renews the leases of runs in flight on a connection of its own (store.heartbeat);
- listener: LISTENs for the wake-ups;
- watchdog: feeds systemd's watchdog while the event loop turns and every task is alive. A database
  outage is not a hang: the tasks wait for the database and the watchdog goes on;
- notifier, gauges, control, housekeeping: alerts, the database gauges, `recomamp reload`, pruning.

Start: the spool is checked for writing, and /metrics (and health) and the control socket are bound, first;
a directory, address or socket that cannot be had ends the start (exit 78) with one line naming its key,
before READY=1 (and before waiting for the database). The
database is awaited with capped backoff (STATUS says since when and what is tried); READY is sent once it
answers and the schema is current. The daemon never exits because the database is away.
SIGTERM/SIGINT: stop claiming; let runs finish for up to the drain timeout while the heartbeat keeps
their leases; release the leases of the rest; stop the heartbeat; log one summary line. A second
signal exits at once. SIGHUP (or `recomamp reload`): validate and swap the config.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import asyncpg

from recomamp.config import Config, ConfigError, load_config
from recomamp.daemon.control import ControlSocketError
from recomamp.daemon.pipeline import RunPipeline
from recomamp.daemon.reload import ReloadVerdict, merge
from recomamp.daemon.sidecars import Listeners, open_listeners, send_notifications_once, sidecar_tasks
from recomamp.domain.runs import RunOutcome, Tally
from recomamp.logs import get_logger, set_level
from recomamp.observe.http import ListenError
from recomamp.observe.metrics import Metrics
from recomamp.services.adapters import Services
from recomamp.store import migrations
from recomamp.store.db import connect, describe_dsn, is_connection_error
from recomamp.store.outage import DatabaseHealth
from recomamp.store.runs import LeaseOnCreate, RunLease, claim_runs
from recomamp.store.schedules import (
    _BEFORE_ALL,
    WAKEUP_CHANNEL,
    ClaimOutcome,
    SchedulePlan,
    apply_plans,
    fetch_due,
    next_due_at,
    plan_schedules,
)
from recomamp.systemd import Notifier, watchdog_interval_seconds

log = get_logger(__name__)


class Pipeline(Protocol):
    async def execute(self, lease: RunLease) -> RunOutcome: ...


class PipelineFactory(Protocol):
    """Builds the per-run pipeline. The benchmarks hand in one that does nothing."""

    def __call__(self, services: Services, owner: str, config: Callable[[], Config], *, once: bool) -> Pipeline: ...


class ServicesOpener(Protocol):
    """Opens the adapters once the database answers (`recomamp.wiring.open_services`, handed in by the
    composition root: the daemon opens nothing of its own)."""

    def __call__(
        self,
        config: Config,
        *,
        replica: str,
        health: DatabaseHealth | None = None,
        on_lease_lost: Callable[[int], None] = ...,
        metrics: Metrics | None = None,
    ) -> AbstractAsyncContextManager[Services]: ...


class DaemonError(Exception):
    """The daemon cannot start: the message says what to fix."""

    exit_code = 1


# EX_CONFIG (sysexits.h). The units say RestartPreventExitStatus=78: a port or socket that cannot be had is not
# had on the next try either, so `systemctl start` fails once, visibly, instead of restarting in a loop.
EXIT_START_CHECK_FAILED = 78


class StartCheckFailed(DaemonError):
    """Something the config names (the spool, the metrics address, the control socket) cannot be had at start."""

    exit_code = EXIT_START_CHECK_FAILED


def spool_problem(spool_dir: Path) -> str | None:
    """Whether results can be written where they are kept: found at start, not by every run's download."""
    try:
        spool_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        # A unique name: replicas in one process (tests, an embedded fleet) check one spool at the same time,
        # and a name from the pid alone let one's unlink remove the file another was about to remove.
        with tempfile.NamedTemporaryFile(dir=spool_dir, prefix=".write-check-"):
            pass
    except OSError as exc:
        return (
            f"[daemon] spool_dir {spool_dir} cannot be written ({exc.strerror or exc}): set a directory the daemon "
            "may write, or leave it out for the default (under systemd, its StateDirectory=)"
        )
    return None


@dataclass(slots=True)
class _InFlight:
    task: asyncio.Task[RunOutcome]
    lease: RunLease


class Daemon:
    def __init__(
        self,
        config: Config,
        *,
        open_services: ServicesOpener,
        config_path: Path | None = None,
        once: bool = False,
        notifier: Notifier | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        pipeline_factory: PipelineFactory | None = None,
    ) -> None:
        self._config = config
        self._open_services = open_services
        self._config_path = config_path
        self._once = once
        self._notifier = notifier or Notifier()
        self._clock = clock
        self._pipeline_factory: PipelineFactory = pipeline_factory or RunPipeline
        self._owner = config.daemon.replica_name
        self._runs: dict[int, _InFlight] = {}
        self._tally = Tally()
        self._stopping = asyncio.Event()
        self._heartbeat_stop = asyncio.Event()
        self._wake_poller = asyncio.Event()
        self._wake_dispatcher = asyncio.Event()
        self._signals = 0
        self.health = DatabaseHealth()
        self.metrics = Metrics()
        # Read at each scrape: it says what the last database call found, not what it was 5 s ago.
        self.metrics.database_up.set_function(lambda: 1.0 if self.health.healthy else 0.0)
        self.ready = False
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._reload_lock = asyncio.Lock()
        self._created_leased: list[RunLease] = []  # --once: runs the pass created leased, started after it
        self._created_at: list[float] = []
        self._listeners: Listeners | None = None  # bound before READY; not under --once

    @property
    def replica_name(self) -> str:
        return self._owner

    @property
    def config(self) -> Config:
        return self._config

    @property
    def tally(self) -> Tally:
        return self._tally

    @property
    def runs_in_flight(self) -> list[int]:
        return list(self._runs)

    @property
    def tasks_alive(self) -> bool:
        return all(not task.done() for task in self._tasks.values())

    def liveness(self) -> tuple[bool, str]:
        """What /healthz answers: every supervised task is alive."""
        dead = [name for name, task in self._tasks.items() if task.done()]
        return (not dead, "every task is alive" if not dead else f"tasks ended: {', '.join(dead)}")

    def readiness(self) -> tuple[bool, str]:
        """What /readyz answers: 503 while the daemon waits for the database or for pending migrations."""
        if not self.ready:
            return False, "starting: waiting for the database or for pending migrations"
        if not self.health.healthy:
            return False, f"the database has been unreachable for {self.health.away_seconds:.0f} s"
        return True, "the database answers and the schema is current"

    # --- start-up ------------------------------------------------------------------------------------

    async def run(self) -> int:
        self._install_signals()
        # What can be checked at start is checked before READY=1 (and before waiting for the database): a taken
        # port or control socket is one line and a failed start, not a task that dies after READY.
        problem = await asyncio.to_thread(spool_problem, self._config.daemon.spool_dir)
        if problem is not None:
            raise StartCheckFailed(problem)
        self._listeners = None if self._once else await self._open_listeners()
        try:
            if not await self._await_database():
                return 0  # asked to stop while waiting
            async with self._open_services(
                self._config,
                replica=self._owner,
                health=self.health,
                on_lease_lost=self._lease_lost,
                metrics=self.metrics,
            ) as services:
                self._services = services
                self._pipeline = self._pipeline_factory(services, self._owner, lambda: self._config, once=self._once)
                return await (self._run_once() if self._once else self._serve())
        finally:
            if self._listeners is not None:
                await self._listeners.close()

    async def _open_listeners(self) -> Listeners:
        try:
            return await open_listeners(
                self._config,
                metrics=self.metrics,
                alive=self.liveness,
                ready=self.readiness,
                replica=self._owner,
                reload=self.reload,
            )
        except (ListenError, ControlSocketError) as exc:
            raise StartCheckFailed(str(exc)) from exc

    async def _await_database(self) -> bool:
        """Wait, with capped backoff, until the database answers and its schema is current."""
        config = self._config
        where = describe_dsn(config.database.dsn.get_secret_value())
        since = datetime.now(UTC)
        wait = 0.5
        attempt = 0
        reported_pending: list[int] | None = None
        watchdog = watchdog_interval_seconds()
        last_feed = 0.0
        while not self._stopping.is_set():
            attempt += 1
            try:
                async with connect(
                    config.database.dsn.get_secret_value(),
                    command_timeout=config.database.command_timeout_seconds,
                    connect_timeout=config.database.connect_timeout_seconds,
                ) as connection:
                    pending = await migrations.pending_versions(connection)
                if not pending:
                    self.health.ok()
                    return True
                if pending != reported_pending:
                    log.error(
                        "schema_behind",
                        pending_migrations=pending,
                        detail="waiting: run `recomamp migrate up`; the daemon starts once the schema is current",
                    )
                    reported_pending = pending
                self._notifier.status(f"waiting for migrations {pending}: run `recomamp migrate up`")
                wait = min(max(wait, 5.0), config.database.outage_max_wait_seconds)
            except migrations.MigrationError as exc:
                raise DaemonError(str(exc)) from exc
            except Exception as exc:
                if not is_connection_error(exc) and not isinstance(exc, asyncpg.InvalidCatalogNameError):
                    raise DaemonError(
                        f"the database in [database] dsn ({where}) refused the connection: {type(exc).__name__}: {exc}"
                    ) from exc
                self.health.failed(exc, "start-up")
                self._notifier.status(
                    f"waiting for the database at {where} since {since:%H:%M:%S} UTC (attempt {attempt}): "
                    f"{type(exc).__name__}"
                )
            # The watchdog is fed while we wait: an outage at start is not a hang.
            if watchdog and time.monotonic() - last_feed >= watchdog:
                self._notifier.watchdog()
                last_feed = time.monotonic()
            await self._wait(self._stopping, min(wait, watchdog or wait))
            wait = min(wait * 2, config.database.outage_max_wait_seconds)
        return False

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, self._on_stop_signal, signum)
        if not self._once:
            loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(self.reload()))

    def _on_stop_signal(self, signum: int) -> None:
        self._signals += 1
        if self._signals > 1:
            log.warning("second_signal_exit_now", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("stop_requested", signal=signal.Signals(signum).name)
        self.request_stop()

    def request_stop(self) -> None:
        """Stop claiming, drain, and return from run(): what SIGTERM does."""
        self._stopping.set()
        self._wake_poller.set()
        self._wake_dispatcher.set()

    # --- runs ----------------------------------------------------------------------------------------

    def _start_run(self, lease: RunLease, claimed_at: float) -> None:
        if lease.run_id in self._runs:
            # The claim query excludes our own runs, so this is a bug if it happens; never run a run twice.
            log.error("run_already_in_flight", run_id=lease.run_id)
            return
        self._services.leases.hold(lease, claimed_at)
        task = asyncio.create_task(self._pipeline.execute(lease), name=f"run-{lease.run_id}")
        self._runs[lease.run_id] = _InFlight(task, lease)

        def done(finished: asyncio.Task[RunOutcome]) -> None:
            current = self._runs.get(lease.run_id)
            if current is not None and current.task is finished:
                del self._runs[lease.run_id]
                self._services.leases.drop(lease.run_id)
            if not finished.cancelled():
                error = finished.exception()
                if error is not None:
                    # The pipeline classifies every exception; one escaping it is a bug.
                    log.error("run_crashed", run_id=lease.run_id, exc_info=error)
                    self._tally.other += 1
                else:
                    self._tally.add(finished.result())
            self._wake_dispatcher.set()
            self._notifier.status(f"{len(self._runs)} runs in flight")

        task.add_done_callback(done)

    def _lease_lost(self, run_id: int) -> None:
        current = self._runs.get(run_id)
        if current is not None and not current.task.done():
            current.task.cancel()

    async def _claim_runs(self) -> int:
        config = self._config
        room = config.daemon.max_concurrent_runs - len(self._runs)
        if room <= 0:
            return 0
        claimed_at = time.monotonic()
        async with self._services.control_pool.acquire() as connection:
            leases = await claim_runs(
                connection,
                owner=self._owner,
                lease_seconds=config.daemon.lease_seconds,
                max_global=config.daemon.max_concurrent_runs,
                max_per_instance=config.daemon.max_runs_per_instance,
                limit=room,
                exclude=list(self._runs),
            )
        for lease in leases:
            self._start_run(lease, claimed_at)
        if leases:
            self._notifier.status(f"{len(self._runs)} runs in flight")
        return len(leases)

    async def _apply(self, plans: list[SchedulePlan]) -> ClaimOutcome:
        config = self._config
        room = config.daemon.max_concurrent_runs - len(self._runs)
        lease = LeaseOnCreate(
            owner=self._owner,
            lease_seconds=config.daemon.lease_seconds,
            room=room if not self._stopping.is_set() else 0,
            max_global=config.daemon.max_concurrent_runs,
            max_per_instance=config.daemon.max_runs_per_instance,
        )
        claimed_at = time.monotonic()
        async with self._services.control_pool.acquire() as connection:
            outcome = await apply_plans(connection, plans, lease)
        # Runs created leased to us start without a claim in between: at once in the daemon; after the
        # whole pass under --once (they would compete with the pass for the loop and the database).
        if self._once:
            self._created_leased.extend(outcome.leases)
            self._created_at.extend([claimed_at] * len(outcome.leases))
        else:
            for run_lease in outcome.leases:
                self._start_run(run_lease, claimed_at)
        if outcome.runs_created and not self._once:
            # The dispatcher claims this batch while the next one is planned. (--once claims after the pass:
            # its runs would compete with the pass for the loop and the database.)
            self._wake_dispatcher.set()
        return outcome

    async def _claim_due(self) -> int:
        """Turn every due schedule into runs: fetch, plan in a thread (never on the loop), apply. Batches are
        disjoint (keyset order), and the next one is fetched and planned while the last one is applied."""
        now = self._clock()
        batch = self._config.daemon.claim_batch_size
        created = skipped = schedules = 0
        after = _BEFORE_ALL
        applying: asyncio.Task[ClaimOutcome] | None = None
        while True:
            due = await fetch_due(self._services.control_pool, now, batch, after=after)
            plans = await asyncio.to_thread(plan_schedules, due, now) if due else []
            if applying is not None:
                outcome = await applying
                created += outcome.runs_created
                skipped += outcome.fires_skipped
                schedules += outcome.schedules
                applying = None
            if not due:
                break
            after = (due[-1].next_run_at, due[-1].id)
            applying = asyncio.create_task(self._apply(plans), name="apply-due")
            if len(due) < batch:
                outcome = await applying
                created += outcome.runs_created
                skipped += outcome.fires_skipped
                schedules += outcome.schedules
                break
        if created or skipped:
            log.info("due_schedules_claimed", schedules=schedules, runs_created=created, fires_skipped=skipped)
        return created

    # --- --once --------------------------------------------------------------------------------------

    async def _run_once(self) -> int:
        heartbeat = asyncio.create_task(self._services.leases.run(self._heartbeat_stop), name="heartbeat")
        self._tasks = {"heartbeat": heartbeat}
        await self._services.gate.call("claim due schedules", self._claim_due)
        for lease, claimed_at in zip(self._created_leased, self._created_at, strict=True):
            self._start_run(lease, claimed_at)
        self._created_leased.clear()
        self._created_at.clear()
        self._notifier.ready("running due schedules once")
        self.ready = True
        while not self._stopping.is_set():
            claimed = await self._services.gate.call("claim runs", self._claim_runs)
            if not claimed and not self._runs:
                break
            self._wake_dispatcher.clear()
            if self._runs:
                await self._wait(self._wake_dispatcher, self._config.daemon.poll_interval_seconds)
        await self._drain()
        # --once has no notifier task: this pass's alerts go out now
        await send_notifications_once(self._services.control_pool, self._config, self.metrics)
        return 0 if self._tally.failed == 0 and self._tally.other == 0 else 1

    # --- the long-running daemon ---------------------------------------------------------------------

    def _extra_tasks(self) -> dict[str, Callable[[], Coroutine[Any, Any, None]]]:
        """Side tasks wired by other modules (alerts, metrics, control socket, housekeeping)."""
        assert self._listeners is not None
        return sidecar_tasks(
            self._listeners,
            pool=self._services.control_pool,
            config=lambda: self._config,
            metrics=self.metrics,
            health=self.health,
        )

    async def _serve(self) -> int:
        self._tasks = {
            "poller": asyncio.create_task(self._loop("poll", self._poll_once, self._wake_poller), name="poller"),
            "dispatcher": asyncio.create_task(
                self._loop("dispatch", self._dispatch_once, self._wake_dispatcher), name="dispatcher"
            ),
            "heartbeat": asyncio.create_task(self._services.leases.run(self._heartbeat_stop), name="heartbeat"),
            "listener": asyncio.create_task(self._listen(), name="listener"),
            "watchdog": asyncio.create_task(self._watchdog(), name="watchdog"),
        }
        for name, factory in self._extra_tasks().items():
            self._tasks[name] = asyncio.create_task(factory(), name=name)
        stop = asyncio.create_task(self._stopping.wait(), name="stop-signal")
        self.ready = True
        self._notifier.ready(f"replica {self._owner}")
        log.info("daemon_ready", replica=self._owner, max_concurrent_runs=self._config.daemon.max_concurrent_runs)
        done, _ = await asyncio.wait({*self._tasks.values(), stop}, return_when=asyncio.FIRST_COMPLETED)
        exit_code = 0
        for task in done:
            if task is stop:
                continue
            error = task.exception() if not task.cancelled() else None
            if error is None and self._stopping.is_set():
                continue  # it saw the stop request first and returned: a clean exit
            # A background task ended on its own: that is a bug. Exit non-zero so systemd restarts us.
            log.error(
                "background_task_died", task=task.get_name(), exc_info=error, detail="exiting so systemd restarts"
            )
            exit_code = 1
        self._stopping.set()
        self._wake_poller.set()
        self._wake_dispatcher.set()
        stop.cancel()
        # Stop claiming first; the heartbeat keeps the leases of runs still in flight while they drain.
        for name in ("poller", "dispatcher"):
            self._tasks[name].cancel()
        await asyncio.gather(self._tasks["poller"], self._tasks["dispatcher"], stop, return_exceptions=True)
        await self._drain()
        others = [t for name, t in self._tasks.items() if name not in ("poller", "dispatcher", "heartbeat")]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        return exit_code

    async def _wait(self, event: asyncio.Event, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, seconds))

    async def _loop(self, name: str, step: Callable[[], Awaitable[float | None]], wake: asyncio.Event) -> None:
        """Run `step` until stopped; sleep what it asks (or the poll interval), or until woken."""
        while not self._stopping.is_set():
            wake.clear()
            sleep: float | None = None
            try:
                sleep = await self._services.gate.call(name, step)
            except Exception as exc:
                # Not a connection error (those are waited out by the gate): log it and go on.
                log.error(f"{name}_failed", error=str(exc), exception_class=type(exc).__name__, exc_info=exc)
            interval = self._config.daemon.poll_interval_seconds
            await self._wait(wake, interval if sleep is None else min(sleep, interval))

    async def _poll_once(self) -> float | None:
        if await self._claim_due():
            self._wake_dispatcher.set()
        upcoming = await next_due_at(self._services.control_pool)
        if upcoming is None:
            return None
        # Sleep until the earliest schedule falls due, to the instant, and claim it then.
        return max(0.0, (upcoming - self._clock()).total_seconds())

    async def _dispatch_once(self) -> float | None:
        await self._claim_runs()
        return None

    async def _watchdog(self) -> None:
        """WATCHDOG=1 while the loop turns and every supervised task is alive (a database outage included)."""
        interval = watchdog_interval_seconds()
        every = min(interval, 5.0) if interval else 5.0
        while True:
            if self.tasks_alive:
                self._notifier.watchdog()
                if not self.health.healthy:
                    self._notifier.status(
                        f"database unreachable for {self.health.away_seconds:.0f} s; {len(self._runs)} runs held, "
                        "waiting for it"
                    )
            await asyncio.sleep(every)

    async def _listen(self) -> None:
        """LISTEN for wake-ups (schedule changes, run-now). Reconnects on its own when the connection drops."""
        wait = 0.5
        while True:
            config = self._config
            try:
                connection = await asyncpg.connect(
                    config.database.dsn.get_secret_value(), timeout=config.database.connect_timeout_seconds
                )
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                self.health.failed(exc, "listener")
                await asyncio.sleep(wait)
                wait = min(wait * 2, config.database.outage_max_wait_seconds)
                continue
            wait = 0.5
            closed = asyncio.Event()
            connection.add_termination_listener(lambda _, event=closed: event.set())
            try:
                await connection.add_listener(WAKEUP_CHANNEL, self._on_notify)
                # A wake-up may have been missed while the listener was away.
                self._on_notify()
                await closed.wait()
                log.warning("listener_connection_lost", detail="reconnecting")
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(connection.close(), 5)

    def _on_notify(self, *_: object) -> None:
        self._wake_poller.set()
        self._wake_dispatcher.set()

    # --- shutdown ------------------------------------------------------------------------------------

    async def _drain(self) -> None:
        """Runs finish for up to the drain timeout (the heartbeat keeps their leases meanwhile); the rest are
        stopped and their leases released, then the heartbeat stops."""
        self._notifier.stopping()
        in_flight = [item.task for item in self._runs.values()]
        timeout = self._config.daemon.drain_timeout_seconds
        if in_flight and self._stopping.is_set():
            log.info("draining", runs_in_flight=len(in_flight), drain_timeout_seconds=timeout)
            await asyncio.wait(in_flight, timeout=timeout)
        elif in_flight:
            await asyncio.wait(in_flight)  # --once, finishing what it started
        unfinished = {run_id: item for run_id, item in self._runs.items() if not item.task.done()}
        for item in unfinished.values():
            item.task.cancel()
        await asyncio.gather(*(item.task for item in unfinished.values()), return_exceptions=True)
        leftover = [item.lease for item in unfinished.values()]
        if leftover:
            # Their state is persisted step by step: the next claim, here or elsewhere, continues them.
            try:
                await self._services.gate.call(
                    "release leases",
                    lambda: self._services.leases.release(leftover),
                    deadline=time.monotonic() + 10,
                )
            except Exception as exc:
                if not is_connection_error(exc):
                    raise
                log.warning("leases_not_released", runs=len(leftover), detail="they expire and are adopted then")
        self._heartbeat_stop.set()
        heartbeat = self._tasks.get("heartbeat")
        if heartbeat is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(heartbeat, 10)
        left = await self._services.sink.close(wait_seconds=max(0.0, timeout))
        tally = self._tally
        log.info(
            "shutdown_complete",
            summary=", ".join(
                [f"{tally.succeeded} runs succeeded", f"{tally.failed} failed", f"{tally.deferred} deferred"]
                + ([f"{tally.waiting} waiting for AMC's quota"] if tally.waiting else [])
                + ([f"{tally.cancelled} cancelled"] if tally.cancelled else [])
                + [f"{len(leftover)} released for the next start"]
            ),
            succeeded=tally.succeeded,
            failed=tally.failed,
            deferred=tally.deferred,
            waiting=tally.waiting,
            cancelled=tally.cancelled,
            released=len(leftover),
            snowflake_loads_abandoned=left,
        )

    # --- reload --------------------------------------------------------------------------------------

    async def reload(self) -> ReloadVerdict:
        """SIGHUP or `recomamp reload`: validate and swap. A broken config is refused; the old one stays."""
        if self._config_path is None:
            log.warning("config_reload_skipped", reason="the daemon was started without a config file")
            return ReloadVerdict(False, ("the daemon was started without a config file",))
        async with self._reload_lock:
            self._notifier.reloading()
            try:
                try:
                    new = await asyncio.to_thread(load_config, self._config_path)
                except ConfigError as exc:
                    log.error("config_reload_failed", problems=exc.problems, detail="keeping the running config")
                    return ReloadVerdict(False, tuple(exc.problems))
                # Keys that need a restart keep their running values: nothing is half-applied.
                effective, applied, needs_restart = merge(self._config, new)
                self._config = effective
                if hasattr(self, "_services"):
                    self._services.reconfigure(effective)
                set_level(effective.logging.level)
                log.info("config_reloaded", changed_keys=applied, needs_restart=needs_restart)
                self._wake_poller.set()
                self._wake_dispatcher.set()
                return ReloadVerdict(True, (), tuple(applied), tuple(needs_restart))
            finally:
                self._notifier.ready()
